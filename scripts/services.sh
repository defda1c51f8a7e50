# Shared by .ci/run and scripts/bench.sh (sourced, not run): make sure PostgreSQL and Redis
# answer on 127.0.0.1, starting them, or installing them from Debian's packages, as needed.
# Expects TEST_DATABASE_URL and TEST_REDIS_URL to be set by the caller.

log() { printf '\n== %s\n' "$*"; }
die() { printf '\n!! %s\n' "$*" >&2; exit 1; }

apt_install() {
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  wait_for postgres pg_isready -h 127.0.0.1 -p 5432 || die "PostgreSQL is not accepting connections on 127.0.0.1:5432"
  # Debian's default asks for a password on 127.0.0.1; trust auth ignores it. Either way works.
  if ! psql "postgres://postgres:postgres@127.0.0.1:5432/postgres" -Atc 'select 1' >/dev/null 2>&1; then
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
  if [ "$(psql "postgres://postgres:postgres@127.0.0.1:5432/postgres" -Atc "select 1 from pg_database where datname = 'test'")" != "1" ]; then
    psql "postgres://postgres:postgres@127.0.0.1:5432/postgres" -qc 'CREATE DATABASE test'
  fi
  psql "$TEST_DATABASE_URL" -Atc 'select 1' >/dev/null || die "cannot connect to $TEST_DATABASE_URL"
  echo "PostgreSQL ready at $TEST_DATABASE_URL"
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  fi
  wait_for redis sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG' || die "Redis is not answering on 127.0.0.1:6379"
  echo "Redis ready at $TEST_REDIS_URL"
}


# A three-master Redis Cluster on loopback ports 30001-30003 (bus ports 40001-40003), no
# replicas, no persistence, for the cluster suites; TEST_REDIS_CLUSTER_URL names it. Reuses a
# cluster that is already up and healthy.
REDIS_CLUSTER_PORTS=(30001 30002 30003)
ensure_redis_cluster() {
  local dir=${TMPDIR:-/tmp}/bluesminds-redis-cluster port
  if redis-cli -p "${REDIS_CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
    echo "Redis Cluster ready at $TEST_REDIS_CLUSTER_URL"
    return 0
  fi
  log "starting a three-master Redis Cluster on ports ${REDIS_CLUSTER_PORTS[*]}"
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$dir" && mkdir -p "$dir"
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" \
      --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 2000 \
      --save "" --appendonly no --logfile "$dir/$port.log" >/dev/null
  done
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    wait_for "redis $port" sh -c "redis-cli -p $port ping | grep -q PONG" || die "Redis Cluster node $port did not start (see $dir/$port.log)"
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${REDIS_CLUSTER_PORTS[@]}") --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
    || die "could not create the Redis Cluster (see $dir/create.log)"
  wait_for "cluster state" sh -c "redis-cli -p ${REDIS_CLUSTER_PORTS[0]} cluster info | grep -q cluster_state:ok" \
    || die "the Redis Cluster did not reach cluster_state:ok"
  echo "Redis Cluster ready at $TEST_REDIS_CLUSTER_URL"
}

# HAProxy (Debian's package) for the rolling-restart test (bins/bluesminds/tests/rolling.rs).
ensure_haproxy() {
  if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    apt_install --no-install-recommends haproxy
  fi
  echo "HAProxy: $( (command -v haproxy || echo /usr/sbin/haproxy) )"
}
