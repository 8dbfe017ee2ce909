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
# Each front-end's feature builds alone too.
for features in '' cli serve; do
    cargo clippy -q -p corral --no-default-features --features "$features" --all-targets -- -D warnings
done
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
# An embedder's build has none of the front-ends' crates.
if cargo tree -p corral -e normal --no-default-features | grep -E '^[│├└ ]*(clap|russh|russh-sftp|argon2|indicatif|dav-server|tokio-rustls) v'; then
    echo "the library without its default features pulls a front-end's crate" >&2
    exit 1
fi
cargo run -q -p corral-embedder
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q
