#!/bin/bash
# idle-agent-queue.sh AGENT (needs debug repo-tool, `cargo build -p ota-slot --example sim_device` and
# `cargo build -p device-agent --example fill_report_queue`): the idle daemon of idle-agent.sh, side by side
# without reporting and with a full report queue (max_reports reports with the longest reason, the collector
# down: every pass fails and the queue stays full). Prints VmRSS/VmHWM (KiB) and threads of each.
set -euo pipefail
AGENT=$1 T=${CARGO_TARGET_DIR:-target}/debug W=$(mktemp -d /var/tmp/ri-idleq.XXXXXX)
trap 'kill $HTTP ${D:-} 2>/dev/null; rm -rf "$W"' EXIT
$T/repo-tool keys generate --dir $W/keys root targets snapshot timestamp >/dev/null
k=$W/keys; mkdir -p $W/srv/r
$T/repo-tool init --repo $W/srv/r --no-qr --keys-dir $k --root-key $k/root.pub.json --targets-key $k/targets.pub.json \
  --snapshot-key $k/snapshot.pub.json --timestamp-key $k/timestamp.pub.json >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port) DOWN=$(free_port)
(cd $W/srv && exec python3 -m http.server -b 127.0.0.1 $PORT >/dev/null 2>&1) & HTTP=$!
sleep 1
root=$W/srv/r/metadata/1.root.json
idle() { # idle NAME [REPORT_TOML]: provisions a fresh device, runs the daemon, prints its memory once idle
  local d=$W/$1 cap=$((4*1024*1024)); $T/examples/sim_device $d $cap
  cat >$d/agent.toml <<TOML
state_dir = "$d/state"
hardware_id = "gw"
channel = "stable"
[repository]
metadata_url = "http://127.0.0.1:$PORT/r/metadata"
targets_url = "http://127.0.0.1:$PORT/r/targets"
[slots.a]
path = "$d/slot-a.img"
capacity = $cap
[slots.b]
path = "$d/slot-b.img"
capacity = $cap
[boot]
backend = "sim"
env = "$d/bootenv"
[poll]
interval_secs = 86400
jitter_percent = 0
max_backoff_secs = 86400
${2:-}
TOML
  "$AGENT" --config $d/agent.toml provision --root $root --fingerprint $(sha256sum $root | cut -d' ' -f1) \
    --running-version 1.0.0 --running-length 4096 >/dev/null
  local fill=""
  [ -n "${2:-}" ] && fill=$($T/examples/fill_report_queue $d/agent.toml)
  "$AGENT" --config $d/agent.toml run 2>$W/err.$1 & D=$!
  local want="next poll"; [ -n "${2:-}" ] && want="next report delivery attempt"
  for i in $(seq 100); do grep -q "$want" $W/err.$1 && break; sleep 0.2; done
  grep -q "$want" $W/err.$1 || { cat $W/err.$1; exit 1; }
  sleep 1
  echo "$1: $fill $(grep -E "^(VmRSS|VmHWM|Threads)" /proc/$D/status | tr -s ' \t' ' ' | paste -sd' ')"
  "$AGENT" --config $d/agent.toml status | grep '^reports' || true
  kill $D; wait $D 2>/dev/null || true; D=
}
idle no-reports
idle full-queue "[report]
collector_url = \"http://127.0.0.1:$DOWN\"
retry_secs = 3600
retry_max_secs = 3600"
