# Sourced by idle-agent.sh, idle-agent-queue.sh and bench-agent.sh: a repository served on 127.0.0.1,
# simulated devices provisioned against it, and the idle daemon's memory. idle-agent*.sh set AGENT, T and
# W, and trap EXIT to kill $HTTP; bench-agent.sh sets AGENT, SIM_DEVICE, W and the DEV_* knobs below.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# idle_repo: keys and an empty repository in $W, served by python3's http.server on $PORT (pid $HTTP);
# sets root, its first root metadata.
idle_repo() {
  $T/repo-tool keys generate --dir $W/keys root targets snapshot timestamp >/dev/null
  local k=$W/keys; mkdir -p $W/srv/r
  $T/repo-tool init --repo $W/srv/r --no-qr --keys-dir $k --root-key $k/root.pub.json --targets-key $k/targets.pub.json \
    --snapshot-key $k/snapshot.pub.json --timestamp-key $k/timestamp.pub.json >/dev/null
  PORT=$(free_port)
  (cd $W/srv && exec python3 -m http.server -b 127.0.0.1 $PORT >/dev/null 2>&1) & HTTP=$!
  sleep 1
  root=$W/srv/r/metadata/1.root.json
}

# idle_device NAME [EXTRA_TOML]: a fresh simulated device in d=$W/NAME (removed first) with its agent.toml
# (polling daily, plus EXTRA_TOML), provisioned against $root. Knobs (defaults: idle_repo's repository):
# DEV_CAP slot bytes (4 MiB), DEV_URL the repository's base URL (http://127.0.0.1:$PORT/r), DEV_HW (gw).
idle_device() {
  d=$W/$1; local cap=${DEV_CAP:-$((4*1024*1024))} url=${DEV_URL:-http://127.0.0.1:$PORT/r}
  rm -rf $d; ${SIM_DEVICE:-$T/examples/sim_device} $d $cap
  cat >$d/agent.toml <<TOML
state_dir = "$d/state"
hardware_id = "${DEV_HW:-gw}"
channel = "stable"
[repository]
metadata_url = "$url/metadata"
targets_url = "$url/targets"
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
}

# idle_memory PID ERR_FILE: waits (20 s at most) until the daemon PID logs "next poll" in ERR_FILE, then
# one second more; prints "VmHWM: N kB VmRSS: N kB Threads: N" of the daemon (/proc order).
idle_memory() {
  for _ in $(seq 100); do grep -q "next poll" $2 && break; sleep 0.2; done
  grep -q "next poll" $2 || { echo "the daemon never idled:" >&2; cat $2 >&2; return 1; }
  sleep 1
  grep -E "^(VmRSS|VmHWM|Threads)" /proc/$1/status | tr -s ' \t' ' ' | paste -sd' '
}
