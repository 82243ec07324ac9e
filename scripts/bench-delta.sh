#!/usr/bin/env bash
# Delta codec benchmark: for every corpus pair (DIR/<name>/{old,new}, built by shared/corpus/fetch.sh),
# patch size, generation time and peak RSS, apply time and peak RSS, for ota-delta side by side with
# bsdiff4, zstd --patch-from -19 --long, xdelta3 -9 and HDiffPatch (through detools, lzma, match score 6).
#   bash scripts/bench-delta.sh [CORPUS_DIR] [PAIR...]      (default corpus: ../corpus-data or $OTA_CORPUS)
# Installs what it needs when missing: Debian zstd, xdelta3, time; PyPI bsdiff4 and detools in a venv
# ($BENCH_VENV, default .tmp/bench-venv). Every patch is applied and compared with the new file; a tool
# whose output differs is marked FAIL. Timings are wall clock from /usr/bin/time -v on this machine, the
# median of $BENCH_RUNS runs (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CORPUS=$(realpath -m "${1:-${OTA_CORPUS:-../corpus-data}}")
shift || true
VENV=${BENCH_VENV:-$ROOT/.tmp/bench-venv}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-delta.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

[ -d "$CORPUS" ] || { echo "no corpus at $CORPUS: run bash ../shared/corpus/fetch.sh $CORPUS" >&2; exit 1; }

need_apt=()
command -v zstd >/dev/null || need_apt+=(zstd)
command -v xdelta3 >/dev/null || need_apt+=(xdelta3)
[ -x /usr/bin/time ] || need_apt+=(time)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! "$VENV/bin/python" -c 'import bsdiff4, detools' >/dev/null 2>&1; then
  echo "== creating $VENV with bsdiff4 and detools" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'bsdiff4==1.3.2' 'detools==0.53.0'
fi

echo "== building ota-delta (release)" >&2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build -q --release -p ota-delta --example ota-delta
OTA="$CARGO_TARGET_DIR/release/examples/ota-delta"

# Runs of each command: wall times on a shared 2-core VM vary by 10-25 % from run to run, so each figure
# is the median of RUNS runs (the peak RSS is the largest of them).
RUNS=${BENCH_RUNS:-3}

# measure cmd...: runs cmd RUNS times under /usr/bin/time -v; sets SECS (median wall time) and RSS_MIB
# (largest peak RSS); 1 on failure.
measure() {
  local log="$WORK/time.log" times=() rss=0 r secs kib
  for ((r = 0; r < RUNS; r++)); do
    if ! /usr/bin/time -v -o "$log" "$@" >"$WORK/cmd.out" 2>&1; then
      sed 's/^/    /' "$WORK/cmd.out" | tail -5 >&2
      return 1
    fi
    secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,p,":"); s=0; for(i=1;i<=n;i++) s=s*60+p[i]; printf "%.2f", s}' "$log")
    kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
    times+=("$secs")
    [ "$kib" -gt "$rss" ] && rss=$kib
  done
  SECS=$(printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
  RSS_MIB=$(awk -v k="$rss" 'BEGIN {printf "%.1f", k/1024}')
}

# command CMD for (enc|app) TOOL OLD NEW PATCH OUT
command_for() {
  local o=$3 n=$4 p=$5 out=$6
  case "$1.$2" in
    enc.ota)        CMD=("$OTA" encode "$o" "$n" "$p") ;;
    app.ota)        CMD=("$OTA" apply "$o" "$p" "$out") ;;
    enc.bsdiff4)    CMD=("$VENV/bin/bsdiff4" "$o" "$n" "$p") ;;
    app.bsdiff4)    CMD=("$VENV/bin/bspatch4" "$o" "$out" "$p") ;;
    enc.zstd)       CMD=(zstd -q -f -19 --long=27 "--patch-from=$o" "$n" -o "$p") ;;
    app.zstd)       CMD=(zstd -q -f -d --long=27 "--patch-from=$o" "$p" -o "$out") ;;
    enc.xdelta3)    CMD=(xdelta3 -9 -e -f -s "$o" "$n" "$p") ;;
    app.xdelta3)    CMD=(xdelta3 -d -f -s "$o" "$p" "$out") ;;
    enc.hdiffpatch) CMD=("$VENV/bin/detools" create_patch -t hdiffpatch -a hdiffpatch -c lzma "$o" "$n" "$p") ;;
    app.hdiffpatch) CMD=("$VENV/bin/detools" apply_patch "$o" "$p" "$out") ;;
  esac
}
TOOLS=(ota bsdiff4 zstd xdelta3 hdiffpatch)

pairs=("$@")
if [ ${#pairs[@]} -eq 0 ]; then
  for d in "$CORPUS"/*/; do [ -f "$d/old" ] && [ -f "$d/new" ] && pairs+=("$(basename "$d")"); done
fi

echo "# Delta benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, corpus $CORPUS"
echo "# ota-delta $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); sizes in bytes, RSS = peak resident set"
echo "# times: median of $RUNS runs; RSS: the largest of them"
for pair in "${pairs[@]}"; do
  old="$CORPUS/$pair/old"; new="$CORPUS/$pair/new"
  new_size=$(stat -c %s "$new"); old_size=$(stat -c %s "$old")
  echo
  echo "## $pair (old $old_size, new $new_size bytes)"
  echo
  echo "Load average before this pair: $(cut -d' ' -f1-3 /proc/loadavg) (times depend on it; sizes do not)."
  echo
  echo "| tool | patch bytes | % of new | gen s | gen RSS MiB | apply s | apply RSS MiB | result |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  best_other=""
  ours=""
  for tool in "${TOOLS[@]}"; do
    patch="$WORK/$pair.$tool.patch"; out="$WORK/$pair.$tool.out"
    rm -f "$patch" "$out"
    command_for enc "$tool" "$old" "$new" "$patch" "$out"
    if ! measure "${CMD[@]}"; then
      echo "| $tool | | | | | | | FAIL (encode) |"; continue
    fi
    gen_s=$SECS; gen_rss=$RSS_MIB
    size=$(stat -c %s "$patch")
    command_for app "$tool" "$old" "$new" "$patch" "$out"
    if ! measure "${CMD[@]}"; then
      echo "| $tool | $size | | $gen_s | $gen_rss | | | FAIL (apply) |"; continue
    fi
    result=ok; cmp -s "$out" "$new" || result="FAIL (output differs)"
    pct=$(awk -v a="$size" -v b="$new_size" 'BEGIN {printf "%.3f", 100*a/b}')
    echo "| $tool | $size | $pct | $gen_s | $gen_rss | $SECS | $RSS_MIB | $result |"
    if [ "$result" = ok ]; then
      if [ "$tool" = ota ]; then ours=$size
      elif [ -z "$best_other" ] || [ "$size" -lt "$best_other" ]; then best_other=$size; fi
    fi
    rm -f "$patch" "$out"
  done
  if [ -n "$ours" ] && [ -n "$best_other" ]; then
    awk -v a="$ours" -v b="$best_other" \
      'BEGIN {printf "\nota-delta vs best other tool: %+.1f%% (%s vs %s bytes)\n", 100*(a-b)/b, a, b}'
  fi
done
