#!/usr/bin/env bash
# Runs the whole test suite. First installs what the tests need when it is missing:
#   Debian: nginx (HTTP tests), libubootenv-tool (fw_setenv/fw_printenv), grub-common (grub-editenv)
#   PyPI:   python-tuf and securesystemslib in ./.venv (interoperability tests), moto's S3 server
#           (publishing to object storage)
# Then: cargo fmt --check, cargo clippy -D warnings, cargo test --workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v fw_setenv >/dev/null 2>&1 || [ -x /usr/bin/fw_setenv ] || need_apt+=(libubootenv-tool)
command -v grub-editenv >/dev/null 2>&1 || need_apt+=(grub-common)
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
echo "== cargo build device-agent (the end-to-end tests run the real binary; built here, not inside a test)"
cargo build --locked -p device-agent --bin device-agent
echo "== cargo build repo-tool (publish_s3 runs the real binary and kills it; built here, not inside a test)"
cargo build --locked -p repo-tool --bin repo-tool
echo "== cargo test"
cargo test --workspace --locked
