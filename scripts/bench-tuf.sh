#!/usr/bin/env bash
# Benchmark: ota-tuf's client vs python-tuf's ngclient on the same 10,000-target repository (built with
# python-tuf, served by nginx on 127.0.0.1). Measures a cold refresh (empty metadata dir: root probe,
# timestamp, snapshot, targets) and a no-change refresh (everything trusted already): CPU time (user+sys)
# and peak RSS of each client process. Prints a markdown table.
#   usage: [RUNS=9] scripts/bench-tuf.sh [N_TARGETS]   (default 10000; needs nginx, .venv with python-tuf)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
PY="${OTA_PYTHON_TUF:-$PWD/.venv/bin/python}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
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

# Each case runs RUNS times, a prepare step before each (the cold case wipes the metadata directory).
# CPU: user+sys from the rusage wait4 returns for the client process, in microseconds (/usr/bin/time
# prints only 10 ms steps). Peak RSS: from /usr/bin/time -f %M in separate runs, because a child forked
# from Python inherits Python's RSS high-water mark until it execs. Reported: median and lowest CPU,
# median peak RSS.
RUNS="${RUNS:-9}"
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "needs /usr/bin/time (apt-get install time)"; exit 1; }
cat >"$WORK/measure.py" <<'PYEOF'
import os, statistics, subprocess, sys
runs, prep, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def run(argv):
    subprocess.run(prep, shell=True, check=True, stdout=subprocess.DEVNULL)
    with open(os.devnull, "wb") as null:
        child = subprocess.Popen(argv, stdout=null)
        _, status, ru = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"{argv[0]} failed: wait status {status}")
    return ru.ru_utime + ru.ru_stime
cpu = [run(cmd) for _ in range(runs)]
rss = []
for _ in range(runs):
    run(["/usr/bin/time", "-f", "%M", "-o", os.environ["RSS_FILE"], *cmd])
    with open(os.environ["RSS_FILE"]) as f:
        rss.append(int(f.read().split()[-1]))  # KiB
print(f"{statistics.median(cpu):.4f} {min(cpu):.4f} {statistics.median(rss):.0f}")
PYEOF
measure() { RSS_FILE="$WORK/rss.txt" "$PY" "$WORK/measure.py" "$RUNS" "$@"; }
RS_PREP_COLD="rm -rf '$WORK/m-rs' && '$CLIENT' --metadata-dir '$WORK/m-rs' init '$WORK/repo/initial_root.json'"
RS=("$CLIENT" --metadata-url "$URL/metadata" --metadata-dir "$WORK/m-rs" refresh)
PY_CMD=("$PY" "$WORK/ngclient.py" "$WORK/m-py" "$URL" "$WORK/repo/initial_root.json")
RS_COLD="$(measure "$RS_PREP_COLD" "${RS[@]}")"
RS_WARM="$(measure true "${RS[@]}")"
PY_COLD="$(measure "rm -rf '$WORK/m-py'" "${PY_CMD[@]}")"
PY_WARM="$(measure true "${PY_CMD[@]}")"

SIZE=$(stat -c %s "$WORK/repo/repo/metadata/targets.json")
echo "$N targets, targets.json $SIZE bytes; $RUNS runs per case; $(nproc) CPUs; load:$(uptime | sed 's/.*load average://')"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); CPU = user+sys from wait4 rusage (median, lowest); RSS = /usr/bin/time %M (median)"
echo
echo "| refresh | ota-tuf CPU s (median / min) | ngclient CPU s (median / min) | CPU ratio (medians) | ota-tuf peak RSS MiB | ngclient peak RSS MiB | RSS ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|"
row() {
  read -r rc rmin rm <<<"$2"; read -r pc pmin pm <<<"$3"
  awk -v n="$1" -v rc="$rc" -v rmin="$rmin" -v rm="$rm" -v pc="$pc" -v pmin="$pmin" -v pm="$pm" 'BEGIN{
    printf "| %s | %.4f / %.4f | %.3f / %.3f | %.1fx | %.1f | %.1f | %.1fx |\n", n, rc, rmin, pc, pmin, (rc>0?pc/rc:0), rm/1024, pm/1024, pm/rm }'
}
row cold "$RS_COLD" "$PY_COLD"
row no-change "$RS_WARM" "$PY_WARM"
