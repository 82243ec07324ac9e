#!/usr/bin/env bash
# Benchmark (issue 15, the dashboard): `GET /v1/history` (the fleet over time, 60 buckets) over REPORTS
# stored reports (default 1,000,000) from DEVICES devices (default 10,000) on one SQLite database. The
# reports are written by SQL straight into a database `collector` created (no signatures: the history
# reads only the report rows), over four releases and four waves, then `collector serve` answers
# `GET /v1/history` RUNS times (default 3) with curl: the first computes it, the next ones (within the
# reuse time, see collector/src/dashboard.rs) are served from the computed one. Needs sqlite3 and curl.
#   usage: scripts/bench-history.sh   (env: REPORTS, DEVICES, RUNS, PROFILE)
set -euo pipefail
cd "$(dirname "$0")/.."
REPORTS="${REPORTS:-1000000}" DEVICES="${DEVICES:-10000}" RUNS="${RUNS:-3}" PROFILE="${PROFILE:-dev}"
for tool in sqlite3 curl; do
  command -v "$tool" >/dev/null || { echo "bench-history: needs $tool" >&2; exit 2; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q --profile "$PROFILE" -p collector --bin collector
COLLECTOR="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/collector"
WORK="$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-history.XXXXXX")"
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

DB="$WORK/fleet.db"
"$COLLECTOR" summary --db "$DB" >/dev/null   # creates and migrates it
per_release=$((REPORTS / DEVICES / 4 + 1))
sqlite3 "$DB" <<SQL
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $DEVICES - 1)
INSERT INTO devices (device_id, key_algorithm, public_key, enrolled_at, hardware, channel)
SELECT 'dev-' || i, 'ed25519', printf('%064d', i), 0, 'board-a', 'stable' FROM n;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $REPORTS - 1)
INSERT INTO reports (device_id, sequence, received_at, hardware, channel, from_version, to_version, target,
    outcome, reason, started_at, finished_at, bytes_downloaded, install_method, wave, envelope)
SELECT 'dev-' || (i % $DEVICES), i / $DEVICES + 1, 1765098000000 + i * 600, 'board-a', 'stable', '1.0.0',
    '1.' || (i / $DEVICES / $per_release + 1) || '.0', 't',
    CASE WHEN i % 7 = 0 THEN 'rolled_back' WHEN i % 13 = 0 THEN 'failed' ELSE 'committed' END,
    CASE WHEN i % 7 = 0 THEN 'boot check failed' ELSE '' END, 0, 0, 0, 'delta', (i % $DEVICES) * 4 / $DEVICES, '{}'
FROM n;
INSERT INTO release_status (device_id, hardware, channel, to_version, wave, sequence, outcome, reason, updated_at)
SELECT device_id, hardware, channel, to_version, wave, MAX(sequence), outcome, reason, MAX(received_at)
FROM reports GROUP BY device_id, hardware, channel, to_version;
INSERT INTO release_counts (hardware, channel, to_version, outcome, devices)
SELECT hardware, channel, to_version, outcome, COUNT(*) FROM release_status GROUP BY 1, 2, 3, 4;
SQL

"$COLLECTOR" serve --db "$DB" --listen 127.0.0.1:0 > "$WORK/out" &
SERVER=$!
until grep -q 'listening on' "$WORK/out" 2>/dev/null; do sleep 0.1; done
addr="$(sed -n 's/^listening on //p' "$WORK/out")"
stored="$(sqlite3 "$DB" 'SELECT COUNT(*) FROM reports')"
tck="$(getconf CLK_TCK)"
cpu() { awk -v tck="$tck" '{printf "%.2f", ($14 + $15) / tck}' "/proc/$SERVER/stat"; }
echo "| GET /v1/history, $stored reports, $DEVICES devices | run | wall s | collector CPU s |"
echo "|---|---|---|---|"
for run in $(seq "$RUNS"); do
  before="$(cpu)"
  t="$(curl -sf -o /dev/null -w '%{time_total}' "http://$addr/v1/history")"
  echo "| | $run | $t | $(awk -v a="$before" -v b="$(cpu)" 'BEGIN {printf "%.2f", b - a}') |"
done
