#!/usr/bin/env bash
# The project's one test command: installs what the tests need (when missing),
# and runs every test against real servers the tests start on 127.0.0.1.
# CI runs exactly this (see .ci/run). A missing server fails a test; nothing skips.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies (quick when present)"
scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== layers (docs/ARCHITECTURE.md)"
python3 scripts/check-layers.py
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== building tests"
cargo test --workspace --no-run

# Hygiene: a dead proxy in the environment must not disturb loopback tests
# (NO_PROXY covers them) and must be ignored where a sandbox configures its own.
export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9
export NO_PROXY=127.0.0.1,localhost
echo "== cargo test (HTTPS_PROXY=$HTTPS_PROXY, NO_PROXY=$NO_PROXY)"
cargo test --workspace
echo "== examples"
cargo run -q -p corral --example custom_backend
cargo run -q -p corral --example embed
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q
