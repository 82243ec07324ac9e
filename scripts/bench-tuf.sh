#!/usr/bin/env bash
# Benchmark: ota-tuf's client vs python-tuf's ngclient on the same 10,000-target repository (built with
# python-tuf, served by nginx on 127.0.0.1). Measures a cold refresh (empty metadata dir: root probe,
# timestamp, snapshot, targets) and a no-change refresh (everything trusted already), CPU time (user+sys)
# and peak RSS with /usr/bin/time -v. Prints a markdown table.
#   usage: scripts/bench-tuf.sh [N_TARGETS]   (default 10000; needs nginx, .venv with python-tuf)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
PY="${OTA_PYTHON_TUF:-$PWD/.venv/bin/python}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "needs /usr/bin/time (apt-get install time)"; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q --release -p ota-tuf --bin ota-tuf-client
CLIENT="$CARGO_TARGET_DIR/release/ota-tuf-client"

WORK="$(mktemp -d)"
trap 'kill "$(cat "$WORK/nginx.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$PY" testdata/python-tuf/make_repo.py bench "$WORK/repo" "$N" >/dev/null
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mkdir -p "$WORK/ng"
cat >"$WORK/ng/nginx.conf" <<CONF
daemon on; master_process off; worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/ng/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/ng/b; proxy_temp_path $WORK/ng/p; fastcgi_temp_path $WORK/ng/f;
  uwsgi_temp_path $WORK/ng/u; scgi_temp_path $WORK/ng/s; default_type application/octet-stream; sendfile on;
  server { listen 127.0.0.1:$PORT; root $WORK/repo/repo; location / { } } }
CONF
"$NGINX" -p "$WORK/ng" -c "$WORK/ng/nginx.conf" -e "$WORK/ng/error.log"
sleep 0.5
URL="http://127.0.0.1:$PORT"

cat >"$WORK/ngclient.py" <<'PYEOF'
import shutil, sys, os
from tuf.ngclient import Updater
meta_dir, url, root = sys.argv[1], sys.argv[2], sys.argv[3]
if not os.path.exists(os.path.join(meta_dir, "root.json")):
    os.makedirs(meta_dir, exist_ok=True)
    shutil.copyfile(root, os.path.join(meta_dir, "root.json"))
Updater(meta_dir, url + "/metadata/", bootstrap=None).refresh()
PYEOF

# measure NAME CMD...: prints "cpu_seconds peak_kib"
measure() {
  "$TIME" -v -o "$WORK/time.txt" "$@" >/dev/null
  awk -F': ' '/User time/{u=$2} /System time/{s=$2} /Maximum resident/{m=$2} END{printf "%.3f %d\n", u+s, m}' "$WORK/time.txt"
}
best_of() { # run 5 times, keep the lowest CPU (and its RSS)
  local best=""
  for _ in 1 2 3 4 5; do
    "$@" # prepare step (cold: wipe) is inside the command
    r="$(measure "${CMD[@]}")"
    if [ -z "$best" ] || awk -v a="$r" -v b="$best" 'BEGIN{split(a,x," ");split(b,y," ");exit !(x[1]<y[1])}'; then best="$r"; fi
  done
  echo "$best"
}
rs_cold_prep() { rm -rf "$WORK/m-rs"; mkdir -p "$WORK/m-rs"; "$CLIENT" --metadata-dir "$WORK/m-rs" init "$WORK/repo/initial_root.json"; }
py_cold_prep() { rm -rf "$WORK/m-py"; }
noop() { :; }

CMD=("$CLIENT" --metadata-url "$URL/metadata" --metadata-dir "$WORK/m-rs" refresh)
RS_COLD="$(best_of rs_cold_prep)"; RS_WARM="$(best_of noop)"
CMD=("$PY" "$WORK/ngclient.py" "$WORK/m-py" "$URL" "$WORK/repo/initial_root.json")
PY_COLD="$(best_of py_cold_prep)"; PY_WARM="$(best_of noop)"

SNAP=$(stat -c %s "$WORK/repo/repo/metadata/targets.json")
echo "10,000-target repository: $N targets, targets.json $SNAP bytes; best of 5 runs; $(nproc) CPUs"
echo
echo "| refresh | ota-tuf CPU s | ngclient CPU s | CPU ratio | ota-tuf peak RSS MiB | ngclient peak RSS MiB | RSS ratio |"
echo "|---|---|---|---|---|---|---|"
row() {
  read -r rc rm <<<"$2"; read -r pc pm <<<"$3"
  awk -v n="$1" -v rc="$rc" -v rm="$rm" -v pc="$pc" -v pm="$pm" 'BEGIN{
    printf "| %s | %.3f | %.3f | %.1fx | %.1f | %.1f | %.1fx |\n", n, rc, pc, (rc>0?pc/rc:0), rm/1024, pm/1024, pm/rm }'
}
row cold "$RS_COLD" "$PY_COLD"
row no-change "$RS_WARM" "$PY_WARM"
