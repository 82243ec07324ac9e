#!/bin/bash
# idle-agent.sh AGENT (needs debug repo-tool and `cargo build -p ota-slot --example sim_device`): a simulated device provisioned against an empty repository served on 127.0.0.1, the daemon
# `run` after its first poll: prints VmRSS/VmHWM (KiB) and threads.
set -euo pipefail
AGENT=$1 T=${CARGO_TARGET_DIR:-target}/debug W=$(mktemp -d /var/tmp/ri-idle.XXXXXX)
trap 'kill $HTTP ${D:-} 2>/dev/null; rm -rf "$W"' EXIT
$T/repo-tool keys generate --dir $W/keys root targets snapshot timestamp >/dev/null
k=$W/keys; mkdir -p $W/srv/r
$T/repo-tool init --repo $W/srv/r --no-qr --keys-dir $k --root-key $k/root.pub.json --targets-key $k/targets.pub.json \
  --snapshot-key $k/snapshot.pub.json --timestamp-key $k/timestamp.pub.json >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd $W/srv && exec python3 -m http.server -b 127.0.0.1 $PORT >/dev/null 2>&1) & HTTP=$!
sleep 1
d=$W/dev cap=$((4*1024*1024)); $T/examples/sim_device $d $cap
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
TOML
root=$W/srv/r/metadata/1.root.json
"$AGENT" --config $d/agent.toml provision --root $root --fingerprint $(sha256sum $root | cut -d' ' -f1) \
  --running-version 1.0.0 --running-length 4096 >/dev/null
"$AGENT" --config $d/agent.toml run 2>$W/err & D=$!
for i in $(seq 50); do grep -q "next poll" $W/err && break; sleep 0.2; done
grep -q "next poll" $W/err || { cat $W/err; exit 1; }
sleep 1
grep -E "^(VmRSS|VmHWM|Threads)" /proc/$D/status | tr -s ' \t' ' ' | paste -sd' '
