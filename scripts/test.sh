#!/usr/bin/env bash
# Runs the whole test suite. First installs what the tests need when it is missing:
#   Debian: nginx (HTTP and TLS tests), libubootenv-tool (fw_setenv/fw_printenv), grub-common (grub-editenv),
#           zbar-tools (zbarimg decodes the onboarding QR code's PNG),
#           softhsm2 (PKCS#11 token tests: softhsm2-util and the module, loaded at run time);
#           for the U-Boot and GRUB VM tests (tests/tests/qemu_boot.rs): qemu-system-x86, u-boot-qemu,
#           grub-pc-bin, busybox-static, u-boot-tools (mkimage), cpio, e2fsprogs, binutils (strip), and a Debian kernel
#           (linux-image-cloud-amd64, fetched with apt-get download and unpacked in $OTA_QEMU_KERNEL_DIR,
#           default /var/cache/ota-qemu/kernel; not installed on this machine);
#           postgresql (the collector's store tests start their own server from its initdb and postgres),
#           chromium (the collector's dashboard test loads the page in headless Chromium)
#   PyPI:   python-tuf and securesystemslib in ./.venv (interoperability tests), moto's S3 server
#           (publishing to object storage)
# Then: cargo fmt --check, cargo clippy -D warnings, cargo test --workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v fw_setenv >/dev/null 2>&1 || [ -x /usr/bin/fw_setenv ] || need_apt+=(libubootenv-tool)
command -v grub-editenv >/dev/null 2>&1 || need_apt+=(grub-common)
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
command -v zbarimg >/dev/null 2>&1 || need_apt+=(zbar-tools)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need_apt+=(chromium)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
[ -f /usr/lib/u-boot/qemu-x86/u-boot.rom ] || need_apt+=(u-boot-qemu)
[ -f /usr/lib/grub/i386-pc/boot.img ] || need_apt+=(grub-pc-bin)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need_apt+=(busybox-static)
command -v mkimage >/dev/null 2>&1 || need_apt+=(u-boot-tools)
command -v cpio >/dev/null 2>&1 || need_apt+=(cpio)
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.ext4 ] || [ -x /sbin/mkfs.ext4 ] || need_apt+=(e2fsprogs)
command -v strip >/dev/null 2>&1 || need_apt+=(binutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

export OTA_QEMU_KERNEL_DIR="${OTA_QEMU_KERNEL_DIR:-/var/cache/ota-qemu/kernel}"
if ! ls "$OTA_QEMU_KERNEL_DIR"/boot/vmlinuz-* >/dev/null 2>&1; then
  echo "== fetching a Debian kernel for the U-Boot VM test into $OTA_QEMU_KERNEL_DIR"
  [ ${#need_apt[@]} -gt 0 ] || $SUDO apt-get update -qq
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  debs=$(mktemp -d)
  (cd "$debs" && apt-get download -qq "$pkg")
  mkdir -p "$OTA_QEMU_KERNEL_DIR"
  dpkg-deb -x "$debs"/*.deb "$OTA_QEMU_KERNEL_DIR"
  rm -rf "$debs"
fi

if ! .venv/bin/python -c 'import tuf.ngclient, securesystemslib.signer' >/dev/null 2>&1; then
  echo "== creating .venv with python-tuf"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check 'tuf==7.0.1' 'securesystemslib[crypto]==1.6.0'
fi
if ! .venv/bin/python -c 'import moto.server' >/dev/null 2>&1; then
  echo "== installing moto's S3 server into .venv"
  .venv/bin/pip install -q --disable-pip-version-check 'moto[server]==5.1.22'
fi
export OTA_PYTHON_TUF="$PWD/.venv/bin/python"
export PATH="$PATH:/usr/sbin:/sbin"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build device-agent and collector (the end-to-end tests run the real binaries; built here, not inside a test)"
cargo build --locked -p device-agent --bin device-agent
cargo build --locked -p collector --bin collector
echo "== cargo build repo-tool (publish_s3 runs the real binary and kills it; built here, not inside a test)"
cargo build --locked -p repo-tool --bin repo-tool
echo "== cargo test"
cargo test --workspace --locked
