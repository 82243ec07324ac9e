# Sourced by idle-agent.sh and idle-agent-queue.sh (which set AGENT, T and W, and trap EXIT to kill $HTTP):
# an empty repository served on 127.0.0.1 and simulated devices provisioned against it.

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

# idle_device NAME [EXTRA_TOML]: a simulated device in d=$W/NAME with its agent.toml (polling daily, plus
# EXTRA_TOML), provisioned against the repository of idle_repo.
idle_device() {
  d=$W/$1; local cap=$((4*1024*1024)); $T/examples/sim_device $d $cap
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
}
