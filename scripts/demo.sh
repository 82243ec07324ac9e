#!/usr/bin/env bash
# Placeholder until repo-tool lands: builds the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace
