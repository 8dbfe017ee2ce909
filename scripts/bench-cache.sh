#!/usr/bin/env bash
# Transfer-cache benchmarks, each scenario in a process of its own (RSS peaks
# are per process). Results and how to read them: docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p corral --bench cache --no-run >/dev/null 2>&1 || cargo bench -p corral --bench cache --no-run
for scenario in reserve staging rss-memory rss-file; do
    cargo bench -q -p corral --bench cache -- "$scenario" 2>/dev/null
done
