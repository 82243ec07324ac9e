#!/usr/bin/env bash
# Runs the whole test suite. First installs what the tests need when it is missing:
#   Debian: nginx (HTTP and TLS tests), libubootenv-tool (fw_setenv/fw_printenv), grub-common (grub-editenv),
#           zbar-tools (zbarimg decodes the onboarding QR code's PNG)
#   PyPI:   python-tuf and securesystemslib in ./.venv (interoperability tests)
# Then: cargo fmt --check, cargo clippy -D warnings, cargo test --workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v fw_setenv >/dev/null 2>&1 || [ -x /usr/bin/fw_setenv ] || need_apt+=(libubootenv-tool)
command -v grub-editenv >/dev/null 2>&1 || need_apt+=(grub-common)
command -v zbarimg >/dev/null 2>&1 || need_apt+=(zbar-tools)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! .venv/bin/python -c 'import tuf.ngclient, securesystemslib.signer' >/dev/null 2>&1; then
  echo "== creating .venv with python-tuf"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check 'tuf==7.0.1' 'securesystemslib[crypto]==1.6.0'
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
echo "== cargo test"
cargo test --workspace --locked
