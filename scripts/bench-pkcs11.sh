#!/usr/bin/env bash
# Benchmark (issue 16): signatures per second through a SoftHSM2 token against a key file, on the path
# repo-tool signs with (tough's KeySource/Sign; ota-pkcs11 for the token: ECDSA P-256 hashes in software
# and signs the digest with CKM_ECDSA, Ed25519 signs with CKM_EDDSA). The file key is the ed25519 PKCS#8
# key `repo-tool keys generate` makes (aws-lc-rs). Each key signs N messages of MSG bytes (default 2000
# signatures of 1 KiB, about a small snapshot's canonical bytes) after one warm-up signature. Prints a
# markdown table. Needs softhsm2 (scripts/test.sh installs it).
# A second table: the device's side, report envelopes signed per second by device-agent's identity (the
# ed25519 key file against keys generated in a SoftHSM2 token through [identity]; each signature then
# checked in pure Rust, as the agent does before queuing a report).
#   usage: [N=2000] [MSG=1024] [PROFILE=release] [PARTS=all|device] scripts/bench-pkcs11.sh
# (PROFILE=dev reuses a test build; signing time is spent in SoftHSM2's and aws-lc's C code either way.)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-2000}"
MSG="${MSG:-1024}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PROFILE="${PROFILE:-release}"
PARTS="${PARTS:-all}"
[ "$PARTS" = device ] || cargo build -q --profile "$PROFILE" -p ota-publish --example sign_rate -p repo-tool
cargo build -q --profile "$PROFILE" -p device-agent --example report_sign_rate
OUT="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
BIN="$OUT/examples/sign_rate"
REPO_TOOL="$OUT/repo-tool"
MODULE=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so; do [ -f "$m" ] && MODULE="$m" && break; done
[ -n "$MODULE" ] || { echo "libsofthsm2.so not found: apt-get install softhsm2"; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$WORK/softhsm2.conf"
export SOFTHSM2_CONF="$WORK/softhsm2.conf" OTA_PKCS11_MODULE="$MODULE"
PIN="bench-$RANDOM-$RANDOM"
( umask 077; printf '%s\n' "$PIN" >"$WORK/pin" )
# softhsm2-util takes its PINs as arguments: a throwaway token in a temp directory.
softhsm2-util --init-token --free --label bench --so-pin "so-$PIN" --pin "$PIN" >/dev/null
if [ "$PARTS" != device ]; then
P256="pkcs11:token=bench;object=p256?pin-source=$WORK/pin"
ED="pkcs11:token=bench;object=ed25519?pin-source=$WORK/pin"
"$REPO_TOOL" keys generate-in-token --uri "$P256" --algorithm ecdsa-p256 --dir "$WORK/keys" --name p256 >/dev/null
"$REPO_TOOL" keys generate-in-token --uri "$ED" --algorithm ed25519 --dir "$WORK/keys" --name ed25519 >/dev/null
"$REPO_TOOL" keys generate --dir "$WORK/keys" file >/dev/null

echo "SoftHSM2 $(softhsm2-util --version), $PROFILE build, $N signatures of $MSG bytes each, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo
echo "| key | signatures/s | µs/signature |"
echo "|---|---:|---:|"
"$BIN" "$N" "$MSG" "$WORK/keys/file.pk8" "$P256" "$ED" | while IFS=$'\t' read -r key rate us; do
  case "$key" in
    *.pk8) name="ed25519 key file (aws-lc-rs)" ;;
    *object=p256*) name="SoftHSM2 ECDSA P-256 (CKM_ECDSA, SHA-256 in software)" ;;
    *) name="SoftHSM2 Ed25519 (CKM_EDDSA)" ;;
  esac
  echo "| $name | $rate | $us |"
done
fi

echo
echo "Device reports (device-agent identity: one DSSE report envelope each, its signature checked after;"
echo "SoftHSM2 $(softhsm2-util --version), $PROFILE build, N=$N, load $(cut -d' ' -f1 /proc/loadavg)):"
echo
echo "| identity | reports signed/s | µs/report |"
echo "|---|---:|---:|"
DEV_P256="pkcs11:token=bench;object=device-p256"
DEV_ED="pkcs11:token=bench;object=device-ed25519"
"$OUT/examples/report_sign_rate" "$N" "$WORK/device.pk8" "$MODULE" "$WORK/pin" "$DEV_P256" "$DEV_ED" |
  while IFS=$'\t' read -r key rate us; do
    case "$key" in
      *.pk8) name="ed25519 key file (identity.pk8, ed25519-dalek)" ;;
      *object=device-p256*) name="SoftHSM2 ECDSA P-256 ([identity] in the token)" ;;
      *) name="SoftHSM2 Ed25519 ([identity] in the token)" ;;
    esac
    echo "| $name | $rate | $us |"
  done
