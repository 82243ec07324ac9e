#!/usr/bin/env bash
# Benchmark: a 1,000-device fleet drill (issue 6). Prints wall time, peak RSS and the requests per second
# the loopback mirror served, as a table. Goal on the 2-core reference machine: under 60 s, under 1 GiB.
#   bash scripts/bench-drill.sh [DEVICES] [IMAGE_KIB]
set -euo pipefail
cd "$(dirname "$0")/.."
devices="${1:-1000}"
image_kib="${2:-64}"
[ -x /usr/bin/time ] || { echo "bench-drill: /usr/bin/time is missing (apt-get install time)" >&2; exit 2; }

cargo build --release -q -p ota-fleet --bin ota-drill
bin="${CARGO_TARGET_DIR:-target}/release/ota-drill"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

set +e
/usr/bin/time -v "$bin" --devices "$devices" --image-kib "$image_kib" --quiet --out "$out/report" \
  >"$out/stdout" 2>"$out/time"
status=$?
set -e
cat "$out/stdout"
if [ "$status" -ne 0 ]; then
  cat "$out/time" >&2
  echo "bench-drill: ota-drill exited with $status" >&2
  exit "$status"
fi

wall="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$out/time")"
rss_kib="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/time")"
rps="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.0f" % r["requests_per_second"])' "$out/report/report.json")"
reqs="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["mirror"]["requests"])' "$out/report/report.json")"
echo
echo "| devices | image | wall time | peak RSS | requests | requests/s (mirror) |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
echo "| $devices | ${image_kib} KiB | $wall | $((rss_kib / 1024)) MiB | $reqs | $rps |"
