#!/usr/bin/env bash
# corral cp against a plain object_store client on a local s3s-fs, in one run.
# Needs s3s-fs (scripts/install-test-deps.sh). Results: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost
cargo build --release -q -p corral
cargo bench -q -p corral --bench transfer
