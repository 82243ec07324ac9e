#!/bin/bash
# idle-agent-queue.sh AGENT (needs debug repo-tool, `cargo build -p ota-slot --example sim_device` and
# `cargo build -p device-agent --example fill_report_queue`): the idle daemon of idle-agent.sh, side by side
# without reporting and with a full report queue (max_reports reports with the longest reason, the collector
# down: every pass fails and the queue stays full). Prints VmRSS/VmHWM (KiB) and threads of each.
set -euo pipefail
AGENT=$1 T=${CARGO_TARGET_DIR:-target}/debug W=$(mktemp -d /var/tmp/ri-idleq.XXXXXX)
trap 'kill $HTTP ${D:-} 2>/dev/null; rm -rf "$W"' EXIT
. "$(dirname "$0")/idle-agent-lib.sh"
idle_repo
DOWN=$(free_port)
idle() { # idle NAME [REPORT_TOML]: provisions a fresh device, runs the daemon, prints its memory once idle
  idle_device "$1" "${2:-}"
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
