#!/usr/bin/env bash
# Load against the running release binary: one-event seal-event posts to one trip (the
# hardest case: every write contends for the same trip) and trip status reads, on SQLite
# and on PostgreSQL. Needs wrk (apt-get install wrk). Traffic stays on 127.0.0.1.
# Usage: bench/http-load.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-8}
port=18090
work=$(mktemp -d)
cargo build --release --quiet
bin=target/release/ects-gateway

run() { # database-url label
  "$bin" serve --listen 127.0.0.1:$port --database-url "$1" --log warn >"$work/serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do curl -sf localhost:$port/healthz >/dev/null && break; sleep 0.1; done
  # Every caller authenticates: an admin token made for the run, on the same database.
  local token trip
  token=$("$bin" token create --role admin --name "bench-$$-$RANDOM" --expires 1d \
    --database-url "$1" | tail -n1)
  export ECTS_TOKEN=$token
  trip=$(curl -s -H "Authorization: Bearer $token" -X POST localhost:$port/v1/messages/ects-json \
    --data-binary @tests/fixtures/ects-json/declaration-gt-sv.json |
    sed 's/.*"trips":\["\([^"]*\)".*/\1/')
  echo "== $2: POST /v1/seal-events, one event a request, all to one trip"
  wrk -t1 -c"$connections" -d"${seconds}s" -s bench/seal-events.lua --latency "http://127.0.0.1:$port" |
    grep -E "Requests/sec|50%|99%|Non-2xx"
  echo "== $2: GET /v1/trips/{id}"
  wrk -t1 -c"$connections" -d"${seconds}s" -H "Authorization: Bearer $token" --latency \
    "http://127.0.0.1:$port/v1/trips/$trip" |
    grep -E "Requests/sec|50%|99%|Non-2xx"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run "sqlite://$work/bench.db" sqlite
if [ -n "${BENCH_DATABASE_URL:-}" ]; then
  run "$BENCH_DATABASE_URL" postgres
fi
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
