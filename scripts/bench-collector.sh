#!/usr/bin/env bash
# Benchmark (issue 15): the collector's ingest and summary, SQLite and PostgreSQL side by side.
#   1. ingest: DEVICES devices (default 1000) enrolled, each sending PER_DEVICE signed reports (default 10)
#      in order, all devices at once, each over its own connection, to a `collector serve` on 127.0.0.1;
#      every report is verified (DSSE, ed25519) and stored (group commit: several reports per
#      transaction, each under its own savepoint). Prints reports/s and the CPU per report of the
#      server side (the collector, plus PostgreSQL's processes for PostgreSQL) and of the load
#      generator (every request signed and built before the clock starts, sent over plain TCP).
#   2. summary: FILL_DEVICES x FILL_PER_DEVICE reports (defaults 10000 x 5, four releases) stored straight
#      through the Store trait from FILL_THREADS threads (default 16), then `Store::summary` timed
#      in-process (RUNS runs), the `collector summary --json` process, and `GET /v1/summary` with curl.
#      PAD_COPIES=K (default 0) first adds K copies of every stored report by SQL (the example's `pad`:
#      higher sequence numbers, same devices, releases and outcomes; PostgreSQL then VACUUM ANALYZE, as
#      autovacuum would), to reach 1,000,000 reports without a long fill: 10000 x 5 x (1 + 19).
# PostgreSQL: Debian's server (package postgresql), started here from a fresh initdb on 127.0.0.1 at a free
# port (as the postgres user when run as root), default settings (fsync and synchronous_commit on), and
# stopped at the end. BACKENDS="sqlite postgres" by default.
# Built with the dev profile (dependencies at opt-level 2, the workspace's crates at 1) unless
# PROFILE=release. Prints a markdown table.
#   usage: scripts/bench-collector.sh   (env: DEVICES, PER_DEVICE, FILL_DEVICES, FILL_PER_DEVICE,
#   FILL_THREADS, RUNS, PROFILE, BACKENDS; COLLECTOR=PATH serves from another `collector` binary, for
#   a before/after with the same load generator; needs curl, /usr/bin/time, postgresql)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${DEVICES:-1000}" PER_DEVICE="${PER_DEVICE:-10}"
FILL_DEVICES="${FILL_DEVICES:-10000}" FILL_PER_DEVICE="${FILL_PER_DEVICE:-5}" RUNS="${RUNS:-5}"
PAD_COPIES="${PAD_COPIES:-0}"
PROFILE="${PROFILE:-dev}" BACKENDS="${BACKENDS:-sqlite postgres}"
for tool in curl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-collector: needs $tool" >&2; exit 2; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q --profile "$PROFILE" -p collector --bins --examples
DIR="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
COLLECTOR="${COLLECTOR:-$DIR/collector}" LOAD="$DIR/examples/bench_collector"

. scripts/bench-pg-lib.sh

# A fresh store location for backend $1, named $2.
store_for() {
  if [ "$1" = sqlite ]; then
    echo "$WORK/$2.db"
  else
    psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE $2" >/dev/null
    echo "postgres://postgres@127.0.0.1:$PG_PORT/$2"
  fi
}

# Starts `collector serve` on store $1 in the background; sets SERVER (pid) and URL.
start_server() {
  : >"$WORK/serve.out"
  "$COLLECTOR" serve --db "$1" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVER=$!
  for _ in $(seq 100); do
    grep -q '^listening on ' "$WORK/serve.out" && break
    sleep 0.1
  done
  URL="http://$(sed -n 's/^listening on //p' "$WORK/serve.out")"
}

# CPU clock ticks (user + sys) used so far by process $1 and its children, waited-for ones included.
tree_ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")))
  done
  echo "$total"
}

declare -A RESULT
# Runs both parts against backend $1; fills RESULT[$1,*].
bench_backend() {
  local b="$1" db ingest ticks pg_before=0 pg_after=0 stored fill
  db="$(store_for "$b" ingest)"
  start_server "$db"
  [ "$b" = postgres ] && pg_before="$(tree_ticks "$PG_PID")"
  ingest="$("$LOAD" ingest "$db" "$URL" "$DEVICES" "$PER_DEVICE")"
  ticks="$(awk '{print $14 + $15}' "/proc/$SERVER/stat")"
  [ "$b" = postgres ] && pg_after="$(tree_ticks "$PG_PID")"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
  RESULT[$b,ingest]="$(awk '{printf "%s reports/s (%s s)", $6, $4}' <<<"$ingest")"
  RESULT[$b,cpu]="$(awk -v c="$ticks" -v p="$((pg_after - pg_before))" -v hz="$(getconf CLK_TCK)" \
    -v n="$((DEVICES * PER_DEVICE))" 'BEGIN {printf "%.0f (collector %.0f)", (c + p) / hz * 1e6 / n, c / hz * 1e6 / n}')"
  RESULT[$b,client]="$(awk -v hz="$(getconf CLK_TCK)" -v n="$((DEVICES * PER_DEVICE))" \
    '{printf "%.0f", $8 / hz * 1e6 / n}' <<<"$ingest")"

  db="$(store_for "$b" summary)"
  stored=$((FILL_DEVICES * FILL_PER_DEVICE))
  fill="$("$LOAD" fill "$db" "$FILL_DEVICES" "$FILL_PER_DEVICE")"
  RESULT[$b,fill]="$(awk '{printf "%s reports/s (%s s)", $6, $4}' <<<"$fill")"
  if [ "$PAD_COPIES" -gt 0 ]; then
    RESULT[$b,pad]="$("$LOAD" pad "$db" "$PAD_COPIES" | awk '{print $5}') s"
  fi
  RESULT[$b,inproc]="$("$LOAD" summary "$db" "$RUNS" | awk '{print $2}' | sort -n | tr '\n' ' ')"
  /usr/bin/time -f '%e' -o "$WORK/cli.time" "$COLLECTOR" summary --db "$db" --json >/dev/null
  RESULT[$b,cli]="$(cat "$WORK/cli.time")"
  start_server "$db"
  RESULT[$b,api]="$(for _ in $(seq "$RUNS"); do
    curl -s -o /dev/null -w '%{time_total}\n' "$URL/v1/summary"; done | sort -n | tr '\n' ' ')"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
[[ " $BACKENDS " == *" postgres "* ]] && start_postgres -c max_connections=100 ${PG_OPTS:-}
for b in $BACKENDS; do bench_backend "$b"; done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
row() { # label, scale, key
  local line="| $1 | $2 |"
  for b in $BACKENDS; do line="$line ${RESULT[$b,$3]} |"; done
  echo "$line"
}
header="| case | scale |" rule="|---|---|"
for b in $BACKENDS; do header="$header $b |" rule="$rule---|"; done
fill=$((FILL_DEVICES * FILL_PER_DEVICE)) stored=$((FILL_DEVICES * FILL_PER_DEVICE * (1 + PAD_COPIES)))
echo "$header"; echo "$rule"
row "ingest: verified and stored" "$DEVICES devices x $PER_DEVICE reports, concurrent" ingest
row "ingest: server-side CPU, us/report" "same" cpu
row "ingest: load generator's CPU while the clock ran, us/report" "same" client
row "fill through Store::insert_report ($((${FILL_THREADS:-16})) threads; no HTTP, no signature check)" "$fill reports" fill
[ "$PAD_COPIES" -gt 0 ] && row "pad: $PAD_COPIES copies of each report added by SQL" "$fill -> $stored reports" pad
row "Store::summary, in-process ($RUNS runs, ms, sorted)" "$stored reports" inproc
row "\`collector summary --json\` process, wall s" "$stored reports" cli
row "GET /v1/summary with curl ($RUNS runs, s, sorted)" "$stored reports" api
