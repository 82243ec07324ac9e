#!/usr/bin/env bash
# Benchmark: fleet drills of 1,000, 10,000 and 100,000 devices (issues 6 and 24), one table: wall time,
# user and sys CPU, peak RSS, the requests per second the loopback mirror served, and the reports the
# collector ingested per second (a column left for the collector in the drill's loop: "-" until the
# report has `collector.reports_per_second`).
# Goals on the 2-core reference machine: 10,000 devices under 60 s and 1 GiB; 100,000 under 10 minutes
# and 4 GiB.
#   bash scripts/bench-drill.sh [DEVICES...]      (default: 1000 10000 100000; IMAGE_KIB=64)
set -euo pipefail
cd "$(dirname "$0")/.."
image_kib="${IMAGE_KIB:-64}"
sizes=("$@")
[ "${#sizes[@]}" -gt 0 ] || sizes=(1000 10000 100000)
[ -x /usr/bin/time ] || { echo "bench-drill: /usr/bin/time is missing (apt-get install time)" >&2; exit 2; }

cargo build --release -q -p ota-fleet --bin ota-drill
bin="${CARGO_TARGET_DIR:-target}/release/ota-drill"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

rows=()
for devices in "${sizes[@]}"; do
  load="$(cut -d' ' -f1 /proc/loadavg)"
  set +e
  /usr/bin/time -f '%e %U %S %M' -o "$out/time" "$bin" --devices "$devices" --image-kib "$image_kib" \
    --quiet --out "$out/report-$devices" >"$out/stdout" 2>"$out/stderr"
  status=$?
  set -e
  if [ "$status" -ne 0 ]; then
    cat "$out/stdout" "$out/stderr" >&2
    echo "bench-drill: ota-drill --devices $devices exited with $status" >&2
    exit "$status"
  fi
  read -r wall user sys rss_kib <"$out/time"
  read -r reqs rps ingest < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
c = r.get("collector") or {}
ips = c.get("reports_per_second")
print(r["mirror"]["requests"], "%.0f" % r["requests_per_second"], "-" if ips is None else "%.0f" % ips)
' "$out/report-$devices/report.json")
  echo "bench-drill: $devices devices: ${wall} s wall (load average before: $load)" >&2
  rows+=("| $devices | ${image_kib} KiB | ${wall} s | ${user} s | ${sys} s | $((rss_kib / 1024)) MiB | $reqs | $rps | $ingest | $load |")
done

echo "| devices | image | wall | user CPU | sys CPU | peak RSS | requests | requests/s (mirror) | reports/s (collector) | load before |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
