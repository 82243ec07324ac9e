#!/usr/bin/env bash
# The TLS handshake's cost on a poll: plain HTTP vs HTTPS vs mutual TLS against a real nginx on 127.0.0.1,
# a fresh connection per poll. Usage: bash scripts/bench-tls.sh [POLLS]   (default 200 per row)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
# The dev profile: dependencies (rustls, ring, reqwest) are built at opt-level 2 there (Cargo.toml).
cargo run --quiet -p ota-e2e --example tls_handshake -- "${1:-200}"
