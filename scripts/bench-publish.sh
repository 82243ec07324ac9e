#!/usr/bin/env bash
# Benchmark (issue 19): publishing a repository to an S3 server. repo-tool builds a repository of N
# releases (one bulk `add --dir` of N images of SIZE bytes), publishes it to moto's S3 server on
# 127.0.0.1 (`repo-tool publish --to s3://bench --endpoint ...`), adds one release and publishes again
# (only the new objects go), publishes once more with nothing new, then adds and publishes one image of
# BIG_MIB MiB (streamed in parts: the peak RSS shows it is never read whole).
# Prints a markdown table: objects sent, bytes sent, wall, user and sys seconds, peak RSS.
#   usage: [BENCH_PROFILE=dev|release] [JOBS=4] [BIG_MIB=128] scripts/bench-publish.sh [N_RELEASES] [SIZE]
#          (default 1000 16384, dev; needs moto[server] in $OTA_PYTHON_TUF's venv and /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000}"
SIZE="${2:-16384}"
JOBS="${JOBS:-4}"
BIG_MIB="${BIG_MIB:-128}"
PY="${OTA_PYTHON_TUF:-$PWD/.venv/bin/python}"
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "needs /usr/bin/time (apt-get install time)"; exit 1; }
"$PY" -c 'import moto.server' 2>/dev/null || { echo "needs moto[server] in $PY's venv (bash scripts/test.sh installs it)"; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PROFILE="${BENCH_PROFILE:-dev}"
cargo build -q --profile "$PROFILE" -p repo-tool --bin repo-tool
TOOL="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/repo-tool"
HEAD="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

WORK="$(mktemp -d)"
MOTO_PID=""
trap '[ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
cd "$WORK"
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$PY" -m moto.server -H 127.0.0.1 -p "$PORT" >moto.log 2>&1 &
MOTO_PID=$!
"$PY" - "$PORT" <<'PYEOF'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/bench"
for _ in range(300):
    try:
        req = urllib.request.Request(url, method="PUT", headers={"x-amz-acl": "public-read"})
        urllib.request.urlopen(req).read()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("moto did not start")
PYEOF
printf '[default]\naws_access_key_id = bench\naws_secret_access_key = bench\n' >credentials
chmod 600 credentials

"$TOOL" keys generate --dir keys root targets snapshot timestamp >/dev/null
"$TOOL" init --repo repo --no-qr --keys-dir keys --root-key keys/root.pub.json \
  --targets-key keys/targets.pub.json --snapshot-key keys/snapshot.pub.json \
  --timestamp-key keys/timestamp.pub.json >/dev/null
"$PY" - "$N" "$SIZE" <<'PYEOF'
import os, sys
os.makedirs("imgs")
n, size = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    with open(f"imgs/fw-1.{i // 1000}.{i % 1000}.bin", "wb") as f:
        f.write(os.urandom(size))
PYEOF
"$TOOL" add --repo repo --dir imgs --hardware gw-a --channel stable --keys-dir keys >/dev/null

ROWS=()
# One timed publish: "<case>"; appends a table row from its --json report.
publish() {
  "$TIME" -f "%e %U %S %M" -o t.txt "$TOOL" publish --repo repo --to s3://bench \
    --endpoint "http://127.0.0.1:$PORT" --region us-east-1 --credentials credentials --jobs "$JOBS" --json >r.json
  read -r e u s m <t.txt
  read -r objects bytes < <("$PY" -c 'import json; r = json.load(open("r.json")); print(r["objects_sent"], r["bytes_sent"])')
  ROWS+=("| $1 | $objects | $bytes | $e | $u | $s | $(echo "scale=1; $m / 1024" | bc) |")
}
publish "first publish of $N releases"
head -c "$SIZE" /dev/urandom >fw-2.0.0.bin
"$TOOL" add --repo repo --image fw-2.0.0.bin --version 2.0.0 --hardware gw-a --channel stable --keys-dir keys >/dev/null
publish "incremental publish after one add"
publish "publish with nothing new"
head -c "$((BIG_MIB << 20))" /dev/urandom >fw-3.0.0.bin
"$TOOL" add --repo repo --image fw-3.0.0.bin --version 3.0.0 --hardware gw-a --channel stable --deltas 0 \
  --keys-dir keys >/dev/null
publish "incremental publish of one $BIG_MIB MiB image (multipart, 8 MiB parts)"

echo "publish to moto $("$PY" -c 'import moto; print(moto.__version__)') on 127.0.0.1, $N releases of $SIZE bytes, --jobs $JOBS, $PROFILE build of $HEAD, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo
echo "| case | objects sent | bytes sent | wall s | user s | sys s | max RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
