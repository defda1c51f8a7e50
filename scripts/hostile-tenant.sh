#!/usr/bin/env bash
# Plays a hostile free-tier tenant's three attacks (docs/SECURITY.md) against one build and
# prints what each did: metering switched off by `"stream_options": null`, a NUL in `model`
# against everyone's usage rows, and deeply nested bodies against the servers' circuits; then a
# 300 KB request header. Needs Postgres on 127.0.0.1:5432 (user postgres, password postgres),
# curl, psql and python3; uses ports 19100-19103 and creates (drops first) database DBNAME.
#
#   bash scripts/hostile-tenant.sh target/debug/bluesminds target/debug/bluesminds-mock hostile
#
# The tests in bins/bluesminds/tests/isolation.rs prove the same rules in CI; this script is
# for checking a build by hand, e.g. an older one, to see the faults it had.
set -uo pipefail
BIN=$1; MOCK=$2; DB=$3
PG=postgres://postgres:postgres@127.0.0.1:5432
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" ; psql "$PG/postgres" -qc "CREATE DATABASE $DB"
DIR=$(mktemp -d); cd "$DIR"
pids=()
for p in 19101 19102 19103; do "$MOCK" --addr 127.0.0.1:$p >/dev/null 2>&1 & pids+=($!); done
S=0123456789abcdef0123456789abcdef
env DATABASE_URL=$PG/$DB JWT_SECRET=$S API_KEY_SECRET=$S BLUESMINDS_BIND=127.0.0.1:19100 BLUESMINDS_AUTH__BCRYPT_COST=4 \
  LITELLM_SERVER_1_URL=http://127.0.0.1:19101 LITELLM_SERVER_1_MODELS=gpt-4 \
  LITELLM_SERVER_2_URL=http://127.0.0.1:19102 LITELLM_SERVER_2_MODELS=gpt-4 \
  LITELLM_SERVER_3_URL=http://127.0.0.1:19103 LITELLM_SERVER_3_MODELS=gpt-4 \
  "$BIN" serve > gw.log 2>&1 & pids+=($!)
trap 'kill ${pids[@]} 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:19100/healthz >/dev/null && break; sleep 0.2; done
G=http://127.0.0.1:19100
key_for() { # email
  curl -s $G/api/auth/signup -H 'content-type: application/json' -d "{\"email\":\"$1\",\"password\":\"password123\",\"full_name\":\"x\"}" >/dev/null
  local c; c=$(curl -s -i $G/api/auth/login -H 'content-type: application/json' -d "{\"email\":\"$1\",\"password\":\"password123\"}" | grep -i set-cookie | sed 's/.*: //; s/;.*//')
  curl -s $G/api/keys -H "cookie: $c" -H 'content-type: application/json' -d '{"name":"k"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["key"])'
}
A=$(key_for attacker@example.com); B=$(key_for victim@example.com); C=$(key_for deep@example.com)
post() { curl -s -o /dev/null -w '%{http_code}' $G/v1/chat/completions -H "authorization: Bearer $1" -H 'content-type: application/json' --data-binary "$2"; }
q() { psql "$PG/$DB" -Atc "$1"; }
echo "== fault 1: free key (1,000 tokens a day), 8 streams of 8,000 tokens of tool calls, stream_options null last"
codes=""; for i in $(seq 8); do codes+="$(post "$A" '{"model":"gpt-4","stream":true,"messages":[{"role":"user","content":"hi"}],"mock":{"shape":"tool_calls","tokens":8000},"stream_options":null}') "; done
echo "statuses: $codes"
sleep 1
echo "tokens recorded for the attacker (prompt, completion): $(q "select sum(prompt_tokens), sum(completion_tokens) from usage_logs u join users s on s.id = u.user_id where s.email = 'attacker@example.com'")"
echo "== fault 2: NUL in model, while the victim sends 3 requests"
for i in 1 2 3; do echo -n "attacker $(post "$A" '{"model":"gpt-4\u0000","messages":[]}') / victim $(post "$B" '{"model":"gpt-4","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}') ; "; done; echo
sleep 3
echo "victim rows written: $(q "select count(*) from usage_logs u join users s on s.id = u.user_id where s.email = 'victim@example.com'") of 3; all rows: $(q 'select count(*) from usage_logs')"
echo "== fault 3: three bodies nested 1,200 deep, then the victim"
deep=$(python3 -c 'print("{\"model\":\"gpt-4\",\"messages\":[],\"x\":" + "["*1200 + "1" + "]"*1200 + "}")')
for i in 1 2 3; do echo -n "attacker $(post "$C" "$deep") "; done
echo; echo "victim: $(post "$B" '{"model":"gpt-4","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}')"
echo "== headers: 300 KB of one header"
printf 'x-big: %s' "$(head -c 300000 /dev/zero | tr '\0' a)" > big.hdr
echo "status: $(curl -s -o /dev/null -w '%{http_code}' $G/healthz -H @big.hdr)"
