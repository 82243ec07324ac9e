#!/usr/bin/env bash
# Proves a refactor changed no output: builds `repo-tool` and the `ota-delta` example at BASE_REV (in a
# temporary git worktree with its own target directory) and at the current checkout, runs one deterministic
# scenario with each, and compares the results byte for byte. Prints a table; exits 1 on any difference.
#
#   scripts/compare-outputs.sh BASE_REV
#
# Determinism: keys are generated once (by the base binary) and copied to both runs; every command runs under
# Debian's `faketime` at a fixed instant, so expiry dates match; images come from a seeded generator.
# Environment: CARGO_TARGET_DIR (the current checkout's target dir, default ./target); COMPARE_SEED_TARGET
# (optional: a target dir copied into the base build's, so dependencies are not rebuilt from scratch);
# KEEP=1 keeps the scratch directory for inspection.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 BASE_REV" >&2
    exit 2
fi
base_rev=$1
root=$(git rev-parse --show-toplevel)
base_commit=$(git -C "$root" rev-parse --verify "$base_rev^{commit}")
head_commit=$(git -C "$root" rev-parse HEAD)
# The head side builds the working tree: say so when it differs from HEAD.
head_label=${head_commit:0:7}
[[ -z $(git -C "$root" status --porcelain --untracked-files=no) ]] || head_label+="+dirty"
scratch=$(mktemp -d /tmp/compare-outputs.XXXXXX)
base_src=$scratch/base-src

cleanup() {
    if [[ -e $base_src ]]; then
        git -C "$root" worktree remove --force "$base_src" || true
    fi
    git -C "$root" worktree prune
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "scratch kept: $scratch" >&2
    else
        rm -rf "$scratch"
    fi
}
trap cleanup EXIT

if ! command -v faketime >/dev/null; then
    echo "installing faketime" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >&2; }
fi

# --- build both sides ------------------------------------------------------------------------------------
build() { # build SRC_DIR TARGET_DIR
    (cd "$1" && CARGO_TARGET_DIR=$2 nice cargo build -q --locked \
        -p repo-tool --bin repo-tool -p ota-delta --example ota-delta)
}
git -C "$root" worktree add -q --detach "$base_src" "$base_commit"
base_target=$scratch/base-target
if [[ -n ${COMPARE_SEED_TARGET:-} ]]; then
    cp -a "$COMPARE_SEED_TARGET" "$base_target"
fi
head_target=${CARGO_TARGET_DIR:-$root/target}
echo "building base ${base_commit:0:7} in $base_src" >&2
build "$base_src" "$base_target"
echo "building head $head_label (working tree $root)" >&2
build "$root" "$head_target"
mkdir -p "$scratch/bin/base" "$scratch/bin/head"
cp "$base_target/debug/repo-tool" "$base_target/debug/examples/ota-delta" "$scratch/bin/base/"
cp "$head_target/debug/repo-tool" "$head_target/debug/examples/ota-delta" "$scratch/bin/head/"

# --- shared inputs ---------------------------------------------------------------------------------------
inputs=$scratch/inputs
mkdir -p "$inputs/images" "$inputs/pairs"
# Firmware-like images from a seeded generator: each release is the previous one with a few patches and an
# insertion, so deltas pay off; all but one are over 64 KiB, so `--deltas 1` builds deltas.
/usr/bin/python3 - "$inputs" <<'EOF'
import random, sys, shutil
out = sys.argv[1]
rng = random.Random(20261207)

def evolve(data, patches, insert):
    data = bytearray(data)
    for _ in range(patches):
        at = rng.randrange(len(data) - 64)
        data[at:at + 64] = rng.randbytes(64)
    at = rng.randrange(len(data))
    data[at:at] = rng.randbytes(insert)
    return bytes(data)

# Compressible-ish base: repeated records with random fields, like tables in a firmware image.
gw = b"".join(b"REC" + rng.randbytes(13) + bytes(16) for _ in range(9000))  # 288000 bytes
releases = {"fw-1.0.0.bin": gw}
releases["fw-1.1.0.bin"] = evolve(gw, 40, 3000)
releases["fw-1.2.0.bin"] = evolve(releases["fw-1.1.0.bin"], 25, 500)
app = rng.randbytes(100_000) + bytes(50_000)
releases["app-2.0.0.bin"] = app
releases["app-2.1.0.bin"] = evolve(app, 10, 1000)
releases["tiny-0.1.0.bin"] = rng.randbytes(4096)  # under 64 KiB: never gets a delta
for name, data in releases.items():
    with open(f"{out}/images/{name}", "wb") as f:
        f.write(data)

# A real ELF pair: this machine's python3.11 and a "rebuild" of it (patched bytes, 4 KiB inserted mid-file).
elf = bytearray(open("/usr/bin/python3.11", "rb").read())
shutil.copyfile("/usr/bin/python3.11", f"{out}/pairs/elf-python.old")
for _ in range(200):
    elf[rng.randrange(len(elf))] = rng.randrange(256)
mid = len(elf) // 2
elf[mid:mid] = rng.randbytes(4096)
with open(f"{out}/pairs/elf-python.new", "wb") as f:
    f.write(elf)
EOF
cp "$inputs/images/fw-1.0.0.bin" "$inputs/pairs/fw.old"
cp "$inputs/images/fw-1.2.0.bin" "$inputs/pairs/fw.new"
cp "$inputs/images/app-2.0.0.bin" "$inputs/pairs/app.old"
cp "$inputs/images/app-2.1.0.bin" "$inputs/pairs/app.new"
# A second real ELF pair: two builds of the same program (the ota-delta example at base and at head).
cp "$scratch/bin/base/ota-delta" "$inputs/pairs/elf-ota-delta.old"
cp "$scratch/bin/head/ota-delta" "$inputs/pairs/elf-ota-delta.new"
# Encodes: a pair with the filter the encoder picks, or PAIR@FILTER forced, so every filter's inverse in the
# decoder runs (the picks here are none and x86-rip).
encodes=(fw app elf-python elf-ota-delta elf-python@x86 elf-python@x86-full elf-python@arm64)

# Every command at a fixed instant: `-f` with an absolute date stops the clock there (a plain
# `faketime DATE` only starts it there, and a slow `add` then signed expiries a second later). The monotonic
# clock is left alone for thread timers.
export FAKETIME_DONT_FAKE_MONOTONIC=1
at() { # at "YYYY-MM-DD HH:MM:SS" CMD...
    local when=$1
    shift
    faketime -f "$when" "$@"
}
(cd "$inputs" && at "2026-12-01 08:00:00" "$scratch/bin/base/repo-tool" keys generate --dir keys \
    root targets snapshot timestamp product >/dev/null)

# --- the scenario, once per side -------------------------------------------------------------------------
step() { # step WHEN CMD...: run at a fixed instant, logging to out/repo-tool.log; stop on failure
    if ! at "$@" >>out/repo-tool.log 2>&1; then
        echo "failed: ${*:2}" >&2
        tail -20 out/repo-tool.log >&2
        exit 1
    fi
}
run_side() { # run_side SIDE
    local bin=$scratch/bin/$1 run=$scratch/run/$1
    mkdir -p "$run/out" "$run/deltas" "$run/applied"
    cp -a "$inputs/keys" "$inputs/images" "$run/"
    cd "$run"
    local rt=$bin/repo-tool
    local sign=(--keys-dir keys)
    # Releases without waves on both sides: a repo-tool that knows `--waves` defaults to the staged plan
    # (signed with the publication time), which an older one cannot write; `now` writes no plan.
    local waves=()
    if "$rt" add --help | grep -q -- '--waves'; then
        waves=(--waves now)
    fi
    step "2026-12-01 09:00:00" "$rt" init --repo repo "${sign[@]}" --no-qr \
        --root-key keys/root.pub.json --targets-key keys/targets.pub.json \
        --snapshot-key keys/snapshot.pub.json --timestamp-key keys/timestamp.pub.json
    step "2026-12-01 09:01:00" "$rt" add --repo repo "${sign[@]}" "${waves[@]}" --image images/fw-1.0.0.bin \
        --version 1.0.0 --hardware gw-a --channel stable --deltas 1
    step "2026-12-01 09:02:00" "$rt" add --repo repo "${sign[@]}" "${waves[@]}" --image images/fw-1.1.0.bin \
        --version 1.1.0 --hardware gw-a --channel stable --deltas 1
    step "2026-12-01 09:03:00" "$rt" add --repo repo "${sign[@]}" "${waves[@]}" --image images/fw-1.2.0.bin \
        --version 1.2.0 --hardware gw-a --channel stable --deltas 1
    step "2026-12-01 09:04:00" "$rt" add --repo repo "${sign[@]}" "${waves[@]}" --image images/tiny-0.1.0.bin \
        --version 0.1.0 --hardware gw-b --channel beta --deltas 1
    step "2026-12-01 09:05:00" "$rt" delegate --repo repo "${sign[@]}" --from targets --role product \
        --path 'product/*/*' --path 'product/*/deltas/*/*' --role-key keys/product.pub.json
    step "2026-12-01 09:06:00" "$rt" add --repo repo "${sign[@]}" "${waves[@]}" --role product \
        --image images/app-2.0.0.bin --version 2.0.0 --hardware product --channel beta --deltas 1
    step "2026-12-01 09:07:00" "$rt" add --repo repo "${sign[@]}" "${waves[@]}" --role product \
        --image images/app-2.1.0.bin --version 2.1.0 --hardware product --channel beta --deltas 1
    step "2026-12-02 09:00:00" "$rt" refresh --repo repo "${sign[@]}" --snapshot
    step "2026-12-02 09:00:00" "$rt" list --repo repo
    step "2026-12-02 09:00:00" "$rt" verify --repo repo
    local od=$bin/ota-delta
    for e in "${encodes[@]}"; do
        local p=${e%@*} filter=()
        [[ $e == *@* ]] && filter=(--filter "${e#*@}")
        "$od" encode --threads 2 "${filter[@]}" "$inputs/pairs/$p.old" "$inputs/pairs/$p.new" \
            "deltas/$e.delta" >>out/ota-delta.log 2>&1
        "$od" info "deltas/$e.delta" >>out/ota-delta.log 2>&1
    done
}
(run_side base)
(run_side head)

# --- compare ---------------------------------------------------------------------------------------------
status=0
row() { # row WHAT RESULT
    printf '%-62s %s\n' "$1" "$2"
    [[ $2 == identical* ]] || status=1
}
base=$scratch/run/base head=$scratch/run/head
printf '%-62s %s\n' "compared (base ${base_commit:0:7} vs head $head_label)" "result"
printf '%-62s %s\n' "--------------------------------------------------------------" "---------"
# The repository without the lock file, which records the holder's pid.
nfiles=$(find "$base/repo" -type f ! -name .repo-tool.lock | wc -l)
nmeta=$(find "$base/repo/metadata" -type f | wc -l)
ndeltas=$(find "$base/repo/targets" -type f -name '*.delta' | wc -l)
what="repo-tool repository ($nfiles files: $nmeta metadata, $ndeltas deltas)"
if ((ndeltas == 0)); then
    row "$what" "NO DELTAS BUILT: scenario broken"
elif diff -r -x .repo-tool.lock "$base/repo" "$head/repo" >/dev/null; then
    row "$what" identical
else
    row "$what" DIFFERENT
    diff -rq -x .repo-tool.lock "$base/repo" "$head/repo" | sed 's/^/    /' || true
fi
if cmp -s "$base/out/repo-tool.log" "$head/out/repo-tool.log"; then
    row "repo-tool stdout+stderr (init..verify)" identical
else
    row "repo-tool stdout+stderr (init..verify)" DIFFERENT
    diff "$base/out/repo-tool.log" "$head/out/repo-tool.log" | head -20 | sed 's/^/    /' || true
fi
for e in "${encodes[@]}"; do
    p=${e%@*}
    size=$(stat -c %s "$base/deltas/$e.delta")
    info=$("$scratch/bin/base/ota-delta" info "$base/deltas/$e.delta")
    filter=$(grep -m1 -o 'filter: [A-Za-z0-9]*' <<<"$info")
    what="ota-delta encode $p (${filter#filter: }, $size bytes, cmp)"
    if cmp -s "$base/deltas/$e.delta" "$head/deltas/$e.delta"; then
        row "$what" identical
    else
        row "$what" DIFFERENT
    fi
    # Both decoders apply the base delta; each result must equal the new image.
    for side in base head; do
        out=$scratch/run/$side/applied/$e.new
        if "$scratch/bin/$side/ota-delta" apply "$inputs/pairs/$p.old" "$base/deltas/$e.delta" "$out" \
            >/dev/null 2>&1 && cmp -s "$out" "$inputs/pairs/$p.new"; then
            row "  $side decoder: apply base delta == new image" identical
        else
            row "  $side decoder: apply base delta == new image" DIFFERENT
        fi
    done
done
if cmp -s "$base/out/ota-delta.log" "$head/out/ota-delta.log"; then
    row "ota-delta encode/info stdout+stderr" identical
else
    row "ota-delta encode/info stdout+stderr" DIFFERENT
    diff "$base/out/ota-delta.log" "$head/out/ota-delta.log" | head -20 | sed 's/^/    /' || true
fi
if ((status == 0)); then
    echo "all identical"
else
    echo "DIFFERENCES FOUND"
fi
exit "$status"
