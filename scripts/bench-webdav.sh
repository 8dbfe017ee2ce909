#!/usr/bin/env bash
# corral serve webdav against rclone serve webdav over one local Garage, and
# against corral cp straight to the bucket, in one run (curl, 1 GiB PUT and
# GET, three alternating rounds, medians): the SFTP benchmark's code with
# CORRAL_BENCH_PROTOCOL=webdav. Not part of the test command. Results:
# docs/PERFORMANCE.md. Quick: CORRAL_BENCH_ROUNDS=1 CORRAL_BENCH_TOOLS=corral;
# the memory of a 2 GiB upload: add CORRAL_BENCH_MIB=2048.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost
cargo build --release -q -p corral
CORRAL_BENCH_PROTOCOL=webdav cargo bench -q -p corral --bench sftp
