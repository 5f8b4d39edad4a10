#!/usr/bin/env bash
# Builds release binaries and runs the load harness; extra arguments go to pylon-bench
# (e.g. --duration 10s --concurrency 64 --streams 1000). Needs nginx (./scripts/setup installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pylon -p pylon-bench
extra=()
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "nginx not found: run ./scripts/setup to compare against it" >&2
  extra+=(--no-nginx)
fi
ulimit -n 65536 2>/dev/null || true
exec target/release/pylon-bench "${extra[@]}" "$@"
