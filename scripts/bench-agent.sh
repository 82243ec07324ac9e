#!/usr/bin/env bash
# Benchmark (issue 4): device-agent installing one image through nginx into a simulated device (file slots,
# simulated bootloader), against `curl -o FILE URL && sha256sum FILE` on the same served file, plus the
# idle daemon's memory. Prints a markdown table: case | wall s | user s | sys s | peak RSS MiB.
#   1. agent `install` of a SIZE_MIB image (default 1024): TUF refresh, stream into slot B with sha256 on
#      the fly, fdatasync, read slot B back and check its sha256, trial boot, simulated reboot (exit 75)
#   2. baselines on the same served file: `curl -o FILE URL && sha256sum FILE` (the issue's baseline; no
#      fsync), the same with `sync -d FILE` (fdatasync of that file, as the agent does) before the hash, and
#      both again with `openssl dgst -sha256` (SHA-NI like the agent's sha2; coreutils 9.1 sha256sum is ~5x
#      slower), so the agent is also compared with the fastest hash
#   3. the same agent install of a SMALL_MIB image (default 256): peak RSS must not grow with the size
#   4. idle daemon: `run` on the up-to-date (committed) device after its first poll: VmRSS and VmHWM
# Each timed case runs RUNS times (default 3), interleaved, and the fastest wall time is shown; caches are
# warm on both sides (nginx serves from the page cache), and `sync` runs between cases, untimed.
#   usage: scripts/bench-agent.sh [SIZE_MIB] [SMALL_MIB]   (needs nginx, curl, openssl, /usr/bin/time,
#   python3, bc; RUNS=n to change the runs; BENCH_DIR=dir for the slots and images, default /var/tmp)
# PARTS=rss: only the agent's memory: peak RSS of RUNS installs of SMALL_MIB (no baselines, no SIZE_MIB
# image), then the idle daemon after committing that install. AGENT=path measures a binary built
# elsewhere (the device profile: `cargo build -p device-agent --profile device --no-default-features`);
# REPO_TOOL and SIM_DEVICE likewise (they only set the bench up; any profile). Unset: release builds.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${1:-1024}"
SMALL_MIB="${2:-256}"
RUNS="${RUNS:-3}"
PARTS="${PARTS:-all}"
[ "$PARTS" = rss ] && SIZE_MIB="$SMALL_MIB"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
TIME=/usr/bin/time
for tool in "$TIME" "$NGINX" curl openssl python3 sha256sum bc; do
  command -v "$tool" >/dev/null || { echo "bench-agent: needs $tool" >&2; exit 2; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
REL="$CARGO_TARGET_DIR/release"
if [ -z "${AGENT:-}" ] || [ -z "${REPO_TOOL:-}" ] || [ -z "${SIM_DEVICE:-}" ]; then
  cargo build -q --release -p repo-tool -p device-agent
  cargo build -q --release -p ota-slot --example sim_device
fi
AGENT="${AGENT:-$REL/device-agent}" REPO_TOOL="${REPO_TOOL:-$REL/repo-tool}"
SIM_DEVICE="${SIM_DEVICE:-$REL/examples/sim_device}"
HW=gw-bench CHANNEL=stable
# Devices and the idle measurement come from the idle scripts' library (the same agent.toml).
. scripts/idle-agent-lib.sh

# Slots and images are large: keep them on disk (not a tmpfs /tmp).
WORK="$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-agent.XXXXXX")"
DAEMON=""
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null
  kill "$(cat "$WORK/ng/nginx.pid" 2>/dev/null)" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# One repository per image size (init + add of a random image, version 2.0.0), served by one nginx.
"$REPO_TOOL" keys generate --dir "$WORK/keys" root targets snapshot timestamp >/dev/null
make_repo() { # MIB: repository $WORK/srv/rMIB with one image; prints nothing
  local mib=$1 repo="$WORK/srv/r$1" k="$WORK/keys"
  mkdir -p "$repo"
  "$REPO_TOOL" init --repo "$repo" --no-qr --keys-dir "$k" --root-key "$k/root.pub.json" \
    --targets-key "$k/targets.pub.json" --snapshot-key "$k/snapshot.pub.json" \
    --timestamp-key "$k/timestamp.pub.json" >/dev/null 2>"$WORK/repo-tool.err" || {
    cat "$WORK/repo-tool.err" >&2
    exit 1
  }
  head -c $((mib * 1024 * 1024)) /dev/urandom >"$WORK/fw-$mib.img"
  "$REPO_TOOL" add --repo "$repo" --image "$WORK/fw-$mib.img" --version 2.0.0 --hardware "$HW" \
    --channel "$CHANNEL" --deltas 0 --waves now --keys-dir "$k" >/dev/null 2>"$WORK/repo-tool.err" || {
    cat "$WORK/repo-tool.err" >&2
    exit 1
  }
  rm "$WORK/fw-$mib.img"
}
make_repo "$SIZE_MIB"
[ "$SMALL_MIB" = "$SIZE_MIB" ] || make_repo "$SMALL_MIB"

PORT="$(free_port)"
mkdir -p "$WORK/ng"
cat >"$WORK/ng/nginx.conf" <<CONF
daemon on; master_process off; worker_processes 1; pid $WORK/ng/nginx.pid; error_log $WORK/ng/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/ng/b; proxy_temp_path $WORK/ng/p; fastcgi_temp_path $WORK/ng/f;
  uwsgi_temp_path $WORK/ng/u; scgi_temp_path $WORK/ng/s; default_type application/octet-stream; sendfile on;
  server { listen 127.0.0.1:$PORT; root $WORK/srv; location / { } } }
CONF
"$NGINX" -p "$WORK/ng" -c "$WORK/ng/nginx.conf" -e "$WORK/ng/error.log"
sleep 0.5
URL="http://127.0.0.1:$PORT"

# The served image file of repository rMIB (the only large file under its targets/).
image_url() { # MIB
  local f
  f="$(find "$WORK/srv/r$1/targets" -type f -size +1M | head -n1)"
  [ -n "$f" ] || { echo "bench-agent: no image in $WORK/srv/r$1/targets" >&2; exit 1; }
  echo "$URL/${f#"$WORK/srv/"}"
}

# A fresh simulated device for repository rMIB: slots of MIB each, booted from A, which holds
# "1.0.0" (one empty erase unit: the install is all about slot B), provisioned against the repository.
new_device() { # DIR MIB
  W="$(dirname "$1")" DEV_CAP=$(($2 * 1024 * 1024)) DEV_URL="$URL/r$2" DEV_HW="$HW" \
    root="$WORK/srv/r$2/metadata/1.root.json" idle_device "$(basename "$1")"
}

# timed NAME EXPECTED_STATUS CMD...: runs CMD under /usr/bin/time, appends "NAME wall user sys rss_kib".
timed() {
  local name=$1 want=$2 status=0
  shift 2
  "$TIME" -f "%e %U %S %M" -o "$WORK/time.out" "$@" >"$WORK/cmd.out" 2>"$WORK/cmd.err" || status=$?
  if [ "$status" -ne "$want" ]; then
    echo "bench-agent: $name exited $status (expected $want)" >&2
    cat "$WORK/cmd.err" >&2
    exit 1
  fi
  echo "$name|$(tail -n1 "$WORK/time.out")" >>"$WORK/results"
}

# The install must end verified: slot B holds 2.0.0 with the signed sha256, the trial of B is pending.
check_installed() { # DIR
  "$AGENT" --config "$1/agent.toml" status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
b = s["slot_b"] or {}
ok = s["state_name"] == "trial boot" and b.get("version") == "2.0.0" and s["booted"] == "b"
if not ok:
    sys.exit("bench-agent: install did not end verified: %s" % json.dumps(s))
print(b["sha256"])'
}

agent_install() { # MIB LABEL
  local d="$WORK/dev"
  new_device "$d" "$1"
  sync
  timed "$2" 75 "$AGENT" --config "$d/agent.toml" install
  check_installed "$d" >/dev/null
}

curl_case() { # MIB LABEL SYNC(0|1) HASH(sha256sum|openssl)
  local url out="$WORK/curl.img" sync_cmd=true hash_cmd=sha256sum
  url="$(image_url "$1")"
  [ "$3" = 1 ] && sync_cmd="sync -d"
  [ "$4" = openssl ] && hash_cmd="openssl dgst -sha256"
  rm -f "$out"
  sync
  timed "$2" 0 sh -c "curl -sS -o \"\$1\" \"\$2\" && $sync_cmd \"\$1\" && $hash_cmd \"\$1\"" sh "$out" "$url"
  rm -f "$out"
}

: >"$WORK/results"
A_BIG="agent install, $SIZE_MIB MiB"
C_BIG="curl -o + sha256sum, $SIZE_MIB MiB"
S_BIG="curl -o + sync -d + sha256sum, $SIZE_MIB MiB"
CO_BIG="curl -o + openssl sha256, $SIZE_MIB MiB"
SO_BIG="curl -o + sync -d + openssl sha256, $SIZE_MIB MiB"
A_SMALL="agent install, $SMALL_MIB MiB"
C_SMALL="curl -o + sha256sum, $SMALL_MIB MiB"
for _ in $(seq "$RUNS"); do
  if [ "$PARTS" = rss ]; then
    agent_install "$SMALL_MIB" "$A_SMALL"
    continue
  fi
  curl_case "$SIZE_MIB" "$C_BIG" 0 sha256sum
  agent_install "$SIZE_MIB" "$A_BIG"
  curl_case "$SIZE_MIB" "$S_BIG" 1 sha256sum
  curl_case "$SIZE_MIB" "$CO_BIG" 0 openssl
  curl_case "$SIZE_MIB" "$SO_BIG" 1 openssl
  curl_case "$SMALL_MIB" "$C_SMALL" 0 sha256sum
  agent_install "$SMALL_MIB" "$A_SMALL"
done

# The last big install: reboot into the trial, commit (no health checks configured), then the daemon idles.
D="$WORK/dev"
new_device "$D" "$SIZE_MIB"
"$AGENT" --config "$D/agent.toml" install >/dev/null 2>&1 || [ $? -eq 75 ]
INSTALLED_SHA="$(check_installed "$D")"
for _ in 1 2 3; do
  "$AGENT" --config "$D/agent.toml" run --once >/dev/null 2>&1 && break || [ $? -eq 75 ]
done
python3 - "$D" "$AGENT" "$INSTALLED_SHA" <<'PY'
import json, subprocess, sys
d, agent, sha = sys.argv[1:4]
s = json.loads(subprocess.check_output([agent, "--config", d + "/agent.toml", "status", "--json"]))
if not (s["state_name"] == "committed" and s["running_version"] == "2.0.0" and s["slot_b"]["sha256"] == sha):
    sys.exit("bench-agent: the device did not commit 2.0.0: %s" % json.dumps(s))
PY
: >"$WORK/daemon.err" # exists before the polling below looks at it (the background start may lag)
OTA_AGENT_LOG=info "$AGENT" --config "$D/agent.toml" run >"$WORK/daemon.out" 2>"$WORK/daemon.err" &
DAEMON=$!
IDLE="$(idle_memory "$DAEMON" "$WORK/daemon.err")" || exit 1
read -r _ IDLE_HWM _ _ IDLE_RSS _ _ IDLE_THREADS <<<"$IDLE"
grep -q "up to date" "$WORK/daemon.out" || { echo "bench-agent: daemon did not find the device up to date" >&2; exit 1; }
kill "$DAEMON"
wait "$DAEMON" 2>/dev/null || true
DAEMON=""

# Fastest run (by wall time) of each case.
best() { # NAME -> "wall user sys rss_kib"
  awk -F'|' -v n="$1" '$1==n{print $2}' "$WORK/results" | sort -n -k1,1 | head -n1
}
# Highest peak RSS over the runs of a case (memory must hold in every run, not only the fastest).
max_rss() { awk -F'|' -v n="$1" '$1==n{split($2,f," "); if (f[4]>m) m=f[4]} END{print m}' "$WORK/results"; }

echo
echo "device-agent $(git describe --always --dirty 2>/dev/null || echo "${BENCH_REV:-?}"), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), fastest of $RUNS runs (peak RSS: the highest of them), $(df -PT "$WORK" | awk 'NR==2{print $2}') on $(df -P "$WORK" | awk 'NR==2{print $1}')"
echo
printf '| %-46s | %7s | %7s | %7s | %12s |\n' case "wall s" "user s" "sys s" "peak RSS MiB"
printf '|%s|%s|%s|%s|%s|\n' "------------------------------------------------" "--------:" "--------:" "--------:" "-------------:"
CASES=("$A_BIG" "$C_BIG" "$S_BIG" "$CO_BIG" "$SO_BIG" "$A_SMALL" "$C_SMALL")
[ "$PARTS" = rss ] && CASES=("$A_SMALL")
for name in "${CASES[@]}"; do
  read -r wall user sys _ <<<"$(best "$name")"
  printf '| %-46s | %7.2f | %7.2f | %7.2f | %12.1f |\n' "$name" "$wall" "$user" "$sys" "$(echo "$(max_rss "$name") / 1024" | bc -l)"
done
printf '| %-46s | %7s | %7s | %7s | %12s |\n' "agent daemon idle after one poll (VmRSS)" - - - \
  "$(printf '%.1f' "$(echo "$IDLE_RSS / 1024" | bc -l)")"
echo
# Wall ratio of the fastest runs, and CPU (user + sys) ratio of the least-CPU runs (steadier under load).
ratio() { echo "$(best "$1" | cut -d' ' -f1) / $(best "$2" | cut -d' ' -f1)" | bc -l; }
cpu() { awk -F'|' -v n="$1" '$1==n{split($2,f," "); c=f[2]+f[3]; if (m=="" || c<m) m=c} END{print m}' "$WORK/results"; }
cpu_ratio() { echo "$(cpu "$1") / $(cpu "$2")" | bc -l; }
if [ "$PARTS" != rss ]; then
echo "agent install of $SIZE_MIB MiB against each baseline (wall of the fastest runs; CPU user+sys of the leanest):"
for name in "$C_BIG" "$S_BIG" "$CO_BIG" "$SO_BIG"; do
  printf '  vs %-44s wall %.2fx  CPU %.2fx\n' "${name%, *}:" "$(ratio "$A_BIG" "$name")" "$(cpu_ratio "$A_BIG" "$name")"
done
fi
printf 'agent install of %s MiB: peak RSS %.1f MiB (the highest of %s runs)\n' "$SMALL_MIB" \
  "$(echo "$(max_rss "$A_SMALL") / 1024" | bc -l)" "$RUNS"
printf 'idle daemon: VmRSS %.1f MiB, VmHWM %.1f MiB, %s threads\n' "$(echo "$IDLE_RSS / 1024" | bc -l)" \
  "$(echo "$IDLE_HWM / 1024" | bc -l)" "$IDLE_THREADS"
echo "all runs (wall user sys rss_kib):"
sed 's/^/  /' "$WORK/results"
