#!/usr/bin/env bash
# The dashboard in Debian's Chromium driven by playwright-core (pinned): starts the mock
# provider and Pylon with a rollout, a flag and an alert rule, then runs dashboard_check.mjs.
# Screenshots go to target/dashboard/.
set -euo pipefail
cd "$(dirname "$0")/.."
node_dir=target/dashboard-node
if [ ! -d "$node_dir/node_modules/playwright-core" ]; then
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --silent --no-save playwright-core@1.64.1
fi
command -v chromium >/dev/null || { echo "chromium (Debian package) is required: run scripts/setup"; exit 1; }
cargo build --quiet -p pylon
source scripts/lib.sh
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
mock=$(free_port)
target/debug/pylon mock-provider --port "$mock" >target/dashboard-mock.log 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$mock/mock/stats" "$!" target/dashboard-mock.log
gw=$(free_port)
data=$(mktemp -d)
cat >target/dashboard.toml <<TOML
[server]
listen = "127.0.0.1:$gw"
[data]
dir = "$data"
[auth]
mode = "none"
[limits]
ip_rpm = 0
[request_log]
flush = "200ms"
[flags]
file = "$PWD/scripts/flags.json"
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:$mock/v1"
[[models]]
name = "chat"
targets = [ { provider = "mock", model = "gpt-4o-mini" } ]
[[prices]]
model = "gpt-4o-mini"
input_per_million = 150
output_per_million = 600
[[rollouts]]
name = "chat-v2"
model = "chat"
candidate = { temperature = 0.2 }
steps = [ { weight = 10, hold = "1h" } ]
[alerting]
evaluate_every = "1s"
[[alerts]]
name = "chat-errors"
kind = "threshold"
series = "error_rate"
labels = { model = "chat" }
above = 0.05
severity = "critical"
annotations = { summary = "chat error rate above 5 %" }
[[alerts]]
name = "chat-slo"
kind = "burn-rate"
labels = { model = "chat" }
objective = 0.99
severity = "critical"
TOML
PYLON_ADMIN_TOKEN=dash-admin PYLON_LOG=warn target/debug/pylon serve --config target/dashboard.toml >target/dashboard.log 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$gw/livez" "$!" target/dashboard.log
# Beside its node_modules, so the import resolves.
cp scripts/dashboard_check.mjs "$node_dir/"
node "$node_dir/dashboard_check.mjs" "http://127.0.0.1:$gw" dash-admin "$PWD/target/dashboard" "http://127.0.0.1:$mock" \
  || { tail -50 target/dashboard.log; exit 1; }
