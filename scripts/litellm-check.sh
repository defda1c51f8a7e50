#!/usr/bin/env bash
# A real LiteLLM proxy (PyPI `litellm[proxy]`) as BluesMinds' upstream, in front of
# bluesminds-mock: chat, streamed chat without and with the usage chunk, the health probe,
# Anthropic's Messages (LiteLLM's anthropic provider passing through, and its translation of
# Messages to an OpenAI upstream) and the Responses API, plain and streamed, with the usage
# rows they leave.
# Outside CI (it installs from PyPI). LiteLLM runs without its database (its Prisma engines
# download at start and fail offline): a master key and a config file only.
#
#   just litellm-check        (or: bash scripts/litellm-check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${LITELLM_VENV:-$root/.venv-litellm}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 120); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.5; done; fail "$1 never answered"; }

if [ ! -x "$venv/bin/litellm" ]; then
  echo "installing litellm[proxy] into $venv (a few minutes the first time)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'litellm[proxy]'
fi
"$venv/bin/pip" show litellm | grep -E '^Version' | sed 's/^/litellm /'

cargo build -q --locked -p bluesminds -p bluesminds-mock
mock_port=$(free_port); llm_port=$(free_port); gw_port=$(free_port)

target/debug/bluesminds-mock --addr "127.0.0.1:$mock_port" > "$work/mock.log" 2>&1 & pids+=($!)
cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: gpt-4
    litellm_params:
      model: openai/gpt-4
      api_base: http://127.0.0.1:$mock_port/v1
      api_key: sk-mock
  - model_name: claude-sonnet-4
    litellm_params:
      model: anthropic/claude-sonnet-4
      api_base: http://127.0.0.1:$mock_port
      api_key: sk-ant-mock
general_settings:
  master_key: sk-litellm-master
YAML
LITELLM_LOCAL_MODEL_COST_MAP=True "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$llm_port" > "$work/litellm.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$llm_port/health/liveliness"
pass "LiteLLM answers /health/liveliness"

(cd "$work" && LITELLM_SERVER_1_URL="http://127.0.0.1:$llm_port" LITELLM_SERVER_1_API_KEY=sk-litellm-master \
  LITELLM_SERVER_1_MODELS=gpt-4,claude-sonnet-4 BLUESMINDS_BIND="127.0.0.1:$gw_port" BLUESMINDS_AUTH__BCRYPT_COST=4 \
  "$root/target/debug/bluesminds" > gw.log 2> gw.err) & pids+=($!)
gw="http://127.0.0.1:$gw_port"
wait_http "$gw/healthz"

creds='{"email":"litellm-check@example.com","password":"long enough pw"}'
curl -fs "$gw/api/auth/signup" -H 'content-type: application/json' -d "$creds" > /dev/null
curl -fs -c "$work/cookies" "$gw/api/auth/login" -H 'content-type: application/json' -d "$creds" > /dev/null
key=$(curl -fs -b "$work/cookies" "$gw/api/keys" -H 'content-type: application/json' -d '{"name":"litellm-check"}' \
  | python3 -c 'import sys, json; print(json.load(sys.stdin)["key"])')
chat() { curl -fsN "$gw/api/v1/chat/completions" -H "Authorization: Bearer $key" -H 'content-type: application/json' -d "$1"; }

out=$(chat '{"model":"gpt-4","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}')
echo "$out" | python3 -c 'import sys, json; r = json.load(sys.stdin); assert r["choices"][0]["message"]["content"] == "Hello from the", r; assert r["usage"]["completion_tokens"] == 3, r' \
  || fail "chat through LiteLLM: $out"
pass "chat through BluesMinds -> LiteLLM -> mock"

out=$(chat '{"model":"gpt-4","max_tokens":3,"stream":true,"messages":[{"role":"user","content":"hi"}]}')
text=$(echo "$out" | python3 -c '
import sys, json
text = ""
for line in sys.stdin:
    line = line.strip()
    if line.startswith("data: ") and line != "data: [DONE]":
        chunk = json.loads(line[6:])
        assert "usage" not in chunk, "a usage chunk the client did not ask for: %s" % chunk
        for c in chunk.get("choices", []):
            text += (c.get("delta") or {}).get("content") or ""
print(text)') || fail "streamed chat carried a usage chunk: $out"
[ "$text" = "Hello from the" ] || fail "streamed text was '$text'"
echo "$out" | grep -q 'data: \[DONE\]' || fail "no [DONE]: $out"
pass "streamed chat: content relayed, [DONE] kept, usage chunk removed"

out=$(chat '{"model":"gpt-4","max_tokens":3,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}')
echo "$out" | grep -q '"completion_tokens":3' || fail "no usage chunk when asked for: $out"
pass "streamed chat with include_usage: the usage chunk arrives"

post() { curl -fsN "$gw$1" -H "x-api-key: $key" -H "Authorization: Bearer $key" -H 'content-type: application/json' -d "$2"; }
# What an SSE body says: each event's name and data, as JSON lines.
events() { python3 -c '
import sys, json
for block in sys.stdin.read().split("\n\n"):
    name = next((l[7:] for l in block.splitlines() if l.startswith("event: ")), None)
    data = next((l[6:] for l in block.splitlines() if l.startswith("data: ")), None)
    if data and data != "[DONE]":
        print(json.dumps({"event": name, "data": json.loads(data)}))'; }

for model in claude-sonnet-4 gpt-4; do
  out=$(post /v1/messages "{\"model\":\"$model\",\"max_tokens\":3,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}")
  # LiteLLM's translation to an OpenAI upstream (through its Responses API) drops max_tokens:
  # the mock then answers its default 16 words. The text must be the words the usage counts.
  echo "$out" | python3 -c '
import sys, json
r = json.load(sys.stdin)
words = ["Hello", "from", "the", "BluesMinds", "mock", "upstream,", "have", "fun."]
n = r["usage"]["output_tokens"]
assert r["type"] == "message" and n in (3, 16), r
assert r["content"][0]["text"] == " ".join(words[i % 8] for i in range(n)), r' \
    || fail "messages ($model) through LiteLLM: $out"
  out=$(post /v1/messages "{\"model\":\"$model\",\"max_tokens\":3,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}")
  echo "$out" | events | python3 -c '
import sys, json
evs = [json.loads(l) for l in sys.stdin]
names = [e["data"]["type"] for e in evs]
assert names[0] == "message_start" and names[-1] == "message_stop", names
text = "".join(e["data"]["delta"].get("text", "") for e in evs if e["data"]["type"] == "content_block_delta")
assert text.startswith("Hello from the"), text' || fail "streamed messages ($model) through LiteLLM: $out"
done
pass "Anthropic Messages through BluesMinds -> LiteLLM (anthropic provider, and translated to an OpenAI upstream), plain and streamed"

out=$(post /api/v1/responses '{"model":"gpt-4","input":"hi","max_output_tokens":3}')
# LiteLLM (1.108) does not pass max_output_tokens on to an OpenAI upstream: the mock answers
# its default 16 words. The text must be the words the usage counts.
echo "$out" | python3 -c '
import sys, json
r = json.load(sys.stdin)
words = ["Hello", "from", "the", "BluesMinds", "mock", "upstream,", "have", "fun."]
n = r["usage"]["output_tokens"]
t = "".join(c.get("text", "") for o in r["output"] for c in o.get("content") or [])
assert n in (3, 16) and t == " ".join(words[i % 8] for i in range(n)), r' \
  || fail "responses through LiteLLM: $out"
out=$(post /api/v1/responses '{"model":"gpt-4","input":"hi","max_output_tokens":3,"stream":true}')
echo "$out" | events | python3 -c '
import sys, json
evs = [json.loads(l)["data"] for l in sys.stdin]
assert evs[-1]["type"] == "response.completed", [e["type"] for e in evs]
assert evs[-1]["response"]["usage"]["output_tokens"] in (3, 16), evs[-1]
text = "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")
assert text.startswith("Hello from the"), text' || fail "streamed responses through LiteLLM: $out"
pass "the Responses API through BluesMinds -> LiteLLM, plain and streamed"

# The writer batches rows off the request path: wait (at most 10 s) for all six.
for _ in $(seq 1 100); do
  rows=$(curl -fs -b "$work/cookies" "$gw/api/usage/logs?limit=100")
  n=$(echo "$rows" | python3 -c 'import sys, json; print(sum(r["endpoint"] in ("messages", "responses") for r in json.load(sys.stdin)["data"]))')
  [ "$n" -ge 6 ] && break
  sleep 0.1
done
echo "$rows" | python3 -c '
import sys, json
rows = [r for r in json.load(sys.stdin)["data"] if r["endpoint"] in ("messages", "responses")]
assert len(rows) == 6, rows
for r in rows:
    assert r["status_code"] == 200 and not r["usage_estimated"] and r["completion_tokens"] in (3, 16), r' \
  || fail "usage rows of messages and responses: $rows"
pass "messages and responses rows carry the usage LiteLLM reported (not estimated)"

echo "all LiteLLM checks passed"
