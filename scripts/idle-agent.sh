#!/bin/bash
# idle-agent.sh AGENT (needs debug repo-tool and `cargo build -p ota-slot --example sim_device`): a simulated device provisioned against an empty repository served on 127.0.0.1, the daemon
# `run` after its first poll: prints VmRSS/VmHWM (KiB) and threads.
set -euo pipefail
AGENT=$1 T=${CARGO_TARGET_DIR:-target}/debug W=$(mktemp -d /var/tmp/ri-idle.XXXXXX)
trap 'kill $HTTP ${D:-} 2>/dev/null; rm -rf "$W"' EXIT
. "$(dirname "$0")/idle-agent-lib.sh"
idle_repo
idle_device dev
"$AGENT" --config $d/agent.toml run 2>$W/err & D=$!
idle_memory $D $W/err
