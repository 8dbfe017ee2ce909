#!/usr/bin/env bash
# corral serve sftp against rclone serve sftp over one local Garage, and
# against corral cp straight to the bucket, in one run (OpenSSH sftp, 1 GiB
# put and get, three alternating rounds, medians). Not part of the test
# command. Needs Garage, sshpass and rclone: scripts/install-test-deps.sh
# installs them. Results: docs/PERFORMANCE.md.
# Quick: CORRAL_BENCH_ROUNDS=1 CORRAL_BENCH_TOOLS=corral (the server alone);
# CORRAL_BENCH_CIPHER=aes128-ctr makes the client insist on one cipher.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost
cargo build --release -q -p corral
cargo bench -q -p corral --bench sftp
