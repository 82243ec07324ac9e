#!/usr/bin/env bash
# Benchmark (issue 15): the collector's ingest and summary against SQLite.
#   1. ingest: DEVICES devices (default 1000) enrolled, each sending PER_DEVICE signed reports (default 10)
#      in order, all devices at once, each over its own connection, to a `collector serve` on 127.0.0.1;
#      every report is verified (DSSE, ed25519) and stored in its own transaction. Prints reports/s.
#   2. summary: FILL_DEVICES x FILL_PER_DEVICE reports (defaults 10000 x 5, four releases) stored straight
#      through the Store trait, then `Store::summary` timed in-process (RUNS runs), the `collector summary
#      --json` process, and `GET /v1/summary` with curl.
# Built with the dev profile (dependencies at opt-level 2, the workspace's crates at 1) unless
# PROFILE=release. Prints a markdown table.
#   usage: scripts/bench-collector.sh   (env: DEVICES, PER_DEVICE, FILL_DEVICES, FILL_PER_DEVICE, RUNS,
#   PROFILE; needs curl, /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${DEVICES:-1000}" PER_DEVICE="${PER_DEVICE:-10}"
FILL_DEVICES="${FILL_DEVICES:-10000}" FILL_PER_DEVICE="${FILL_PER_DEVICE:-5}" RUNS="${RUNS:-5}"
PROFILE="${PROFILE:-dev}"
for tool in curl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-collector: needs $tool" >&2; exit 2; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q --profile "$PROFILE" -p collector --bins --examples
DIR="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
COLLECTOR="$DIR/collector" LOAD="$DIR/examples/bench_collector"

WORK="$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-collector.XXXXXX")"
SERVER=""
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# Starts `collector serve` on DB in the background; sets SERVER (pid) and URL.
start_server() {
  "$COLLECTOR" serve --db "$1" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVER=$!
  for _ in $(seq 100); do
    grep -q '^listening on ' "$WORK/serve.out" && break
    sleep 0.1
  done
  URL="http://$(sed -n 's/^listening on //p' "$WORK/serve.out")"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
start_server "$WORK/ingest.db"
ingest="$("$LOAD" ingest "$WORK/ingest.db" "$URL" "$DEVICES" "$PER_DEVICE")"
# The server's CPU time (user + sys, clock ticks) for the whole run: CPU per report, whatever the load.
ticks="$(awk '{print $14 + $15}' "/proc/$SERVER/stat")"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
server_us="$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$((DEVICES * PER_DEVICE))" \
  'BEGIN {printf "%.0f", t / hz * 1e6 / n}')"
rate="$(awk '{print $6}' <<<"$ingest")" secs="$(awk '{print $4}' <<<"$ingest")"

fill="$(/usr/bin/time -f 'cpu %U %S' -o "$WORK/fill.time" "$LOAD" fill "$WORK/summary.db" "$FILL_DEVICES" "$FILL_PER_DEVICE")"
stored=$((FILL_DEVICES * FILL_PER_DEVICE))
fill_us="$(awk -v n="$stored" '{printf "%.0f", ($2 + $3) * 1e6 / n}' "$WORK/fill.time")"
inproc="$("$LOAD" summary "$WORK/summary.db" "$RUNS" | awk '{print $2}' | sort -n | tr '\n' ' ')"
/usr/bin/time -f '%e' -o "$WORK/cli.time" "$COLLECTOR" summary --db "$WORK/summary.db" --json >/dev/null
start_server "$WORK/summary.db"
api="$(for _ in $(seq "$RUNS"); do curl -s -o /dev/null -w '%{time_total}\n' "$URL/v1/summary"; done | sort -n | tr '\n' ' ')"

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| case | scale | result |"
echo "|---|---|---|"
echo "| ingest: verified and stored | $DEVICES devices x $PER_DEVICE reports, concurrent | $rate reports/s ($secs s); server CPU $server_us us/report |"
echo "| fill through Store::insert_report (no HTTP, no signature check) | $stored reports | $(awk '{print $6}' <<<"$fill") reports/s; CPU $fill_us us/report |"
echo "| Store::summary, in-process ($RUNS runs, ms, sorted) | $stored reports | $inproc |"
echo "| \`collector summary --json\` process, wall s | $stored reports | $(cat "$WORK/cli.time") |"
echo "| GET /v1/summary with curl ($RUNS runs, s, sorted) | $stored reports | $api |"
