#!/usr/bin/env bash
# Benchmark (issue 15, the dashboard): `GET /v1/history` (the fleet over time, 60 buckets) over REPORTS
# stored reports (default 1,000,000) from DEVICES devices (default 10,000), SQLite and PostgreSQL side by
# side. The reports are written by SQL straight into a database `collector` created and migrated (no
# signatures: the history reads only the report rows), over four releases and four waves; then
# `collector serve` answers `GET /v1/history` RUNS times (default 3) with curl: the first computes it, the
# next ones (within the reuse time, see collector/src/dashboard.rs) are served from the computed one.
# Prints the wall time and the CPU the store spent (the collector, plus PostgreSQL's processes).
# PostgreSQL: Debian's server, started here from a fresh initdb on 127.0.0.1 (as in bench-collector.sh).
#   usage: scripts/bench-history.sh   (env: REPORTS, DEVICES, RUNS, PROFILE, BACKENDS; needs sqlite3,
#   curl, postgresql)
set -euo pipefail
cd "$(dirname "$0")/.."
REPORTS="${REPORTS:-1000000}" DEVICES="${DEVICES:-10000}" RUNS="${RUNS:-3}" PROFILE="${PROFILE:-dev}"
BACKENDS="${BACKENDS:-sqlite postgres}"
for tool in sqlite3 curl psql; do
  command -v "$tool" >/dev/null || { echo "bench-history: needs $tool" >&2; exit 2; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q --profile "$PROFILE" -p collector --bin collector
COLLECTOR="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/collector"
. scripts/bench-pg-lib.sh

# The fill, the same SQL for both stores.
per_release=$((REPORTS / DEVICES / 4 + 1))
cat >"$WORK/fill.sql" <<SQL
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $DEVICES - 1)
INSERT INTO devices (device_id, key_algorithm, public_key, enrolled_at, hardware, channel)
SELECT 'dev-' || i, 'ed25519', 'key-' || i, 0, 'board-a', 'stable' FROM n;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $REPORTS - 1)
INSERT INTO reports (device_id, sequence, received_at, hardware, channel, from_version, to_version, target,
    outcome, reason, started_at, finished_at, bytes_downloaded, install_method, wave, envelope)
SELECT 'dev-' || (i % $DEVICES), i / $DEVICES + 1, 1765098000000 + i * 600, 'board-a', 'stable', '1.0.0',
    '1.' || (i / $DEVICES / $per_release + 1) || '.0', 't',
    CASE WHEN i % 7 = 0 THEN 'rolled_back' WHEN i % 13 = 0 THEN 'failed' ELSE 'committed' END,
    CASE WHEN i % 7 = 0 THEN 'boot check failed' ELSE '' END, 0, 0, 0, 'delta', (i % $DEVICES) * 4 / $DEVICES, '{}'
FROM n;
INSERT INTO release_status (device_id, hardware, channel, to_version, wave, sequence, outcome, reason, updated_at)
SELECT device_id, hardware, channel, to_version, wave, sequence, outcome, reason, received_at FROM (
    SELECT r.*, ROW_NUMBER() OVER (PARTITION BY device_id, hardware, channel, to_version
                                   ORDER BY sequence DESC) AS newest FROM reports r) latest
WHERE newest = 1;
INSERT INTO release_counts (hardware, channel, to_version, outcome, devices)
SELECT hardware, channel, to_version, outcome, COUNT(*) FROM release_status GROUP BY 1, 2, 3, 4;
SQL

tck="$(getconf CLK_TCK)"
# CPU seconds so far of the collector and, for PostgreSQL, the server and its backends.
cpu() {
  local pids=("$SERVER")
  [ "$1" = postgres ] && pids+=("$PG_PID" $(pgrep -P "$PG_PID" || true))
  for p in "${pids[@]}"; do cat "/proc/$p/stat" 2>/dev/null || true; done |
    awk -v tck="$tck" '{sum += $14 + $15} END {printf "%.2f", sum / tck}'
}

echo "| store | GET /v1/history over | run | wall s | CPU s |"
echo "|---|---|---:|---:|---:|"
for backend in $BACKENDS; do
  if [ "$backend" = sqlite ]; then
    db="$WORK/fleet.db"
    "$COLLECTOR" summary --db "$db" >/dev/null   # creates and migrates it
    sqlite3 -bail "$db" <"$WORK/fill.sql"
  else
    [ -n "$PG_PID" ] || start_postgres
    psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE fleet" >/dev/null
    db="postgres://postgres@127.0.0.1:$PG_PORT/fleet"
    "$COLLECTOR" summary --db "$db" >/dev/null
    psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d fleet -f "$WORK/fill.sql" -c "VACUUM ANALYZE" >/dev/null
  fi
  : >"$WORK/out"
  "$COLLECTOR" serve --db "$db" --listen 127.0.0.1:0 >"$WORK/out" &
  SERVER=$!
  until grep -q '^listening on ' "$WORK/out"; do sleep 0.1; done
  addr="$(sed -n 's/^listening on //p' "$WORK/out")"
  for run in $(seq "$RUNS"); do
    before="$(cpu "$backend")"
    t="$(curl -sf -o /dev/null -w '%{time_total}' "http://$addr/v1/history")"
    used="$(awk -v a="$before" -v b="$(cpu "$backend")" 'BEGIN {printf "%.2f", b - a}')"
    echo "| $backend | $REPORTS reports, $DEVICES devices | $run | $t | $used |"
  done
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
done
