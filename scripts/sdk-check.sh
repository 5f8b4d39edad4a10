#!/usr/bin/env bash
# Runs the official OpenAI and Anthropic Python SDKs against `pylon demo` (debug build).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/sdk-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check openai anthropic

cargo build --quiet -p pylon
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=target/sdk-demo.log
PYLON_LOG=warn target/debug/pylon demo --listen "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/livez" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "pylon demo exited early:"; cat "$log"; exit 1; fi
  sleep 0.1
done
"$venv/bin/python" scripts/sdk_check.py "http://127.0.0.1:$port"
