#!/usr/bin/env bash
# Benchmark (issue 18): succinct hash-bin delegations. repo-tool builds a repository whose top-level
# targets delegates to BINS hash bins, bulk-adds N small targets (one `add --dir`), then adds one more
# (only its bin, snapshot and timestamp are re-signed: the script lists the new metadata files). nginx
# serves it; ota-tuf's client and python-tuf's ngclient each refresh and fetch one target, cold (empty
# metadata and target directories) and with nothing changed (everything trusted and present).
# Prints a markdown table: wall, user and sys seconds and peak RSS per case (client rows: median of RUNS).
#   usage: [RUNS=5] [BENCH_PROFILE=release|dev] scripts/bench-hash-bins.sh [N_TARGETS] [BINS]
#          (default 100000 1024, release; needs nginx, /usr/bin/time and python-tuf in $OTA_PYTHON_TUF)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
BINS="${2:-1024}"
RUNS="${RUNS:-5}"
PY="${OTA_PYTHON_TUF:-$PWD/.venv/bin/python}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "needs /usr/bin/time (apt-get install time)"; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PROFILE="${BENCH_PROFILE:-release}"
cargo build -q --profile "$PROFILE" -p repo-tool -p ota-tuf --bin repo-tool --bin ota-tuf-client
OUT_DIR="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
TOOL="$OUT_DIR/repo-tool"
CLIENT="$OUT_DIR/ota-tuf-client"
HEAD="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

WORK="$(mktemp -d)"
trap 'kill "$(cat "$WORK/nginx.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"
ROWS=()
# One timed run: "<case>" command...; appends a table row.
timed() {
  local what="$1"; shift
  "$TIME" -f "%e %U %S %M" -o t.txt "$@" >/dev/null
  read -r e u s m <t.txt
  ROWS+=("| $what | $e | $u | $s | $(echo "scale=1; $m / 1024" | bc) |")
}

"$TOOL" keys generate --dir keys root targets snapshot timestamp bins >/dev/null
"$TOOL" init --repo repo --no-qr --keys-dir keys --root-key keys/root.pub.json \
  --targets-key keys/targets.pub.json --snapshot-key keys/snapshot.pub.json \
  --timestamp-key keys/timestamp.pub.json >/dev/null
timed "delegate --hash-bins $BINS" "$TOOL" delegate --repo repo --role bin --hash-bins "$BINS" \
  --role-key keys/bins.pub.json --keys-dir keys
"$PY" - "$N" <<'PYEOF'
import os, sys
os.makedirs("imgs")
for i in range(int(sys.argv[1])):
    with open(f"imgs/fw-1.{i // 1000}.{i % 1000}.bin", "w") as f:
        f.write(f"target {i}\n")
PYEOF
timed "bulk add of $N targets into $BINS bins" "$TOOL" add --repo repo --dir imgs --hardware gw-a \
  --channel stable --keys-dir keys
ls repo/metadata >before.txt
echo "one more image" >one.bin
timed "single add into that repository" "$TOOL" add --repo repo --image one.bin --version 2.0.0 \
  --hardware gw-a --channel stable --keys-dir keys
NEW="$(ls repo/metadata | grep -vxF -f before.txt | tr '\n' ' ')"
timed "verify of that repository" "$TOOL" verify --repo repo

PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mkdir -p ng
cat >ng/nginx.conf <<CONF
daemon on; master_process off; worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/ng/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/ng/b; proxy_temp_path $WORK/ng/p; fastcgi_temp_path $WORK/ng/f;
  uwsgi_temp_path $WORK/ng/u; scgi_temp_path $WORK/ng/s; default_type application/octet-stream; sendfile on;
  server { listen 127.0.0.1:$PORT; root $WORK/repo; location / { } } }
CONF
"$NGINX" -p "$WORK/ng" -c "$WORK/ng/nginx.conf" -e "$WORK/ng/error.log"
sleep 0.5
URL="http://127.0.0.1:$PORT"
TARGET="gw-a/stable/fw-1.0.7.bin"
cat >ngclient.py <<'PYEOF'
import os, shutil, sys
from tuf.ngclient import Updater
meta, dl, url, root, name = sys.argv[1:6]
if not os.path.exists(os.path.join(meta, "root.json")):
    os.makedirs(meta, exist_ok=True)
    shutil.copyfile(root, os.path.join(meta, "root.json"))
os.makedirs(dl, exist_ok=True)
u = Updater(meta, url + "/metadata/", dl, url + "/targets/", bootstrap=None)
u.refresh()
info = u.get_targetinfo(name)
if info is None:
    sys.exit(f"{name} not found")
if u.find_cached_target(info) is None:
    u.download_target(info)
PYEOF
# Median of RUNS timed runs of a client; a prepare command before each.
client_case() {
  local what="$1" prep="$2"; shift 2
  rm -f runs.txt
  for _ in $(seq "$RUNS"); do
    sh -c "$prep"
    "$TIME" -f "%e %U %S %M" -a -o runs.txt "$@" >/dev/null 2>err.txt || { cat err.txt; exit 1; }
  done
  ROWS+=("$("$PY" - "$what" <<'PYEOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open("runs.txt") if l.strip() and l[0].isdigit()]
e, u, s, m = (statistics.median(c) for c in zip(*rows))
print(f"| {sys.argv[1]} | {e:.3f} | {u:.3f} | {s:.3f} | {m / 1024:.1f} |")
PYEOF
)")
}
RS=("$CLIENT" --metadata-url "$URL/metadata" --metadata-dir m-rs --target-name "$TARGET" --target-dir dl-rs
  --target-base-url "$URL/targets" download)
PYC=("$PY" ngclient.py m-py dl-py "$URL" repo/metadata/1.root.json "$TARGET")
client_case "ota-tuf: cold refresh + fetch of one target" \
  "rm -rf m-rs dl-rs && mkdir dl-rs && '$CLIENT' --metadata-dir m-rs init repo/metadata/1.root.json" "${RS[@]}"
client_case "ota-tuf: no-change refresh of that target" true "${RS[@]}"
client_case "ngclient: cold refresh + fetch of one target" "rm -rf m-py dl-py" "${PYC[@]}"
client_case "ngclient: no-change refresh of that target" true "${PYC[@]}"

SNAP="$(ls -S repo/metadata/*.snapshot.json | head -1)"
echo "$N targets in $BINS hash bins; largest snapshot $(stat -c %s "$SNAP") bytes; $(du -sb repo/metadata | cut -f1) bytes of metadata"
echo "commit $HEAD, $PROFILE build; $(nproc) CPUs; load:$(uptime | sed 's/.*load average://'); client rows: median of $RUNS runs"
echo "files the single add wrote: $NEW(and replaced timestamp.json)"
echo
echo "| case | wall s | user s | sys s | max RSS MiB |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
