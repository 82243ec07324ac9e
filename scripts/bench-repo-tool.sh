#!/usr/bin/env bash
# Benchmarks repo-tool (issue 2) and prints a table:
#   1. one bulk `add --dir` of N small targets (default 10,000 x 512 B) into a fresh repository
#   2. one `add` of a single image into that N-target repository (median of 5)
#   3. one `add` of a 1 GiB image (memory must not grow with image size: max RSS)
#   4. `verify` of the N-target repository
# and, when strace is installed, the system calls per target of a 1,000-target bulk add (a figure that,
# unlike time, does not depend on machine load).
# Usage: bash scripts/bench-repo-tool.sh [N] [IMAGE_MIB]
# Wall time depends on machine load; user+sys CPU time is printed too. Sys time also depends on the
# file system's recent history: ext4 without a journal (this machine's root file system) checks, for
# every inode it allocates, that the free inode it found was not freed recently (`recently_deleted`:
# in the last 60 s, 300 s while its inode table block is dirty) and otherwise scans on to the next
# free one, from the group's start each time. Right after many files were deleted (a previous run's
# temp dir, a `cargo clean`, other builds) each of the 10,000 new target files skips thousands of them:
# `perf record` puts 75 % of the bulk add's samples in `recently_deleted` and `find_inode_bit`, and sys
# time goes from ~0.6 s to ~5 s. Journaled ext4 (mkfs's default) skips that check. Wait a few minutes
# between runs and note the load.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
BIG_MIB=${2:-1024}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p repo-tool
BIN="$CARGO_TARGET_DIR/release/repo-tool"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"

"$BIN" keys generate --dir keys root targets snapshot timestamp >/dev/null
init() {
  "$BIN" init --repo "$1" --no-qr --keys-dir keys --root-key keys/root.pub.json \
    --targets-key keys/targets.pub.json --snapshot-key keys/snapshot.pub.json \
    --timestamp-key keys/timestamp.pub.json >/dev/null
}
init repo
mkdir imgs
python3 - "$N" <<'PY'
import os, sys
n = int(sys.argv[1])
for i in range(n):
    with open(f"imgs/fw-1.{i // 1000}.{i % 1000}.bin", "wb") as f:
        f.write(os.urandom(512))
PY
sync

# run NAME CMD...: appends "NAME wall user sys rss_kib" to results
run() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o t.out "$@" >/dev/null
  echo "$name $(cat t.out)" >>results
}
: >results
run "bulk add of $N targets (fresh repo)" "$BIN" add --repo repo --dir imgs --hardware gw-a --channel stable --keys-dir keys
for i in 1 2 3 4 5; do
  head -c 4096 /dev/urandom >one.bin
  run "single add into a $N-target repo #$i" "$BIN" add --repo repo --image one.bin --version "2.0.$i" \
    --hardware gw-a --channel stable --keys-dir keys
done
init big
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom >big.img
sync
run "add of one ${BIG_MIB} MiB image" "$BIN" add --repo big --image big.img --version 1.0.0 --hardware gw-a \
  --channel stable --keys-dir keys
run "verify of the $N-target repo" "$BIN" verify --repo repo

syscalls=""
if command -v strace >/dev/null; then
  mkdir imgs1k
  python3 - <<'PY'
import os
for i in range(1000):
    with open(f"imgs1k/fw-1.{i // 1000}.{i % 1000}.bin", "wb") as f:
        f.write(os.urandom(512))
PY
  init sc
  strace -c -f -o strace.out "$BIN" add --repo sc --dir imgs1k --hardware gw-a --channel stable \
    --keys-dir keys >/dev/null
  total=$(awk '$NF == "total" {print $4}' strace.out)  # % time, seconds, usecs/call, calls, ...
  syscalls="system calls per target in a 1,000-target bulk add (strace -c -f): $(echo "scale=1; $total / 1000" | bc)"
fi

echo
echo "repo-tool $(git -C "$OLDPWD" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %-44s | %8s | %8s | %8s | %11s |\n' case "wall s" "user s" "sys s" "max RSS MiB"
printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "----------" "----------" "----------" "-------------"
while read -r line; do
  set -- $line
  rss=${*: -1}; sys=${*: -2:1}; user=${*: -3:1}; wall=${*: -4:1}
  name=${line% * * * *}
  printf '| %-44s | %8s | %8s | %8s | %11.1f |\n' "$name" "$wall" "$user" "$sys" "$(echo "$rss / 1024" | bc -l)"
done <results
[ -n "$syscalls" ] && echo && echo "$syscalls"
exit 0
