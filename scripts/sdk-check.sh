#!/usr/bin/env bash
# Runs the official OpenAI and Anthropic Python SDKs, the OpenAI Agents SDK and the Vercel AI
# SDK against Pylon (debug build), and the
# OpenFeature Python and Node SDKs with their OFREP providers against its flags:
# `pylon demo` for the API surface, then a keys-mode `pylon serve` for 401/403/429, the
# OpenAPI document validated as OpenAPI 3.1 with /docs checked to need no network, and
# schemathesis checking the admin API against that document (fixed seed: the same cases each run).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/sdk-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Pinned: a new SDK release is a deliberate upgrade, not a surprise in CI.
"$venv/bin/pip" install --quiet --disable-pip-version-check openai==3.57.0 anthropic==2.15.0 \
  openapi-spec-validator==0.9.0 schemathesis==4.32.5 openai-agents==0.24.0 openfeature-sdk==0.10.0 openfeature-provider-ofrep==0.3.0
node_dir=target/ofrep-node
if [ ! -d "$node_dir/node_modules/@openfeature/ofrep-provider" ]; then
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --silent --no-save \
    @openfeature/server-sdk@1.23.0 @openfeature/ofrep-provider@0.1.3 @openfeature/ofrep-core@0.1.4
fi
ai_dir=target/ai-node
if [ ! -d "$ai_dir/node_modules/@ai-sdk/openai" ]; then
  mkdir -p "$ai_dir"
  npm install --prefix "$ai_dir" --no-audit --no-fund --silent --no-save \
    ai@7.0.185 @ai-sdk/openai@4.0.126 zod@4.6.7
fi

cargo build --quiet -p pylon
source scripts/lib.sh
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

port=$(free_port)
PYLON_LOG=warn target/debug/pylon demo --listen "127.0.0.1:$port" >target/sdk-demo.log 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$port/livez" "$!" target/sdk-demo.log
"$venv/bin/python" scripts/sdk_check.py "http://127.0.0.1:$port"
# Beside its node_modules, so the imports resolve.
cp scripts/ai_sdk_check.mjs "$ai_dir/"
node "$ai_dir/ai_sdk_check.mjs" "http://127.0.0.1:$port"

mock=$(free_port)
target/debug/pylon mock-provider --port "$mock" >target/sdk-mock.log 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$mock/mock/stats" "$!" target/sdk-mock.log
gw=$(free_port)
data=$(mktemp -d)
cat >target/sdk-keys.toml <<TOML
[server]
listen = "127.0.0.1:$gw"
[data]
dir = "$data"
[auth]
mode = "keys"
[limits]
ip_rpm = 0
[flags]
file = "$PWD/scripts/flags.json"
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:$mock/v1"
[[models]]
name = "chat"
targets = [ { provider = "mock", model = "gpt-4o-mini" } ]
[[models]]
name = "other"
targets = [ { provider = "mock", model = "gpt-4o-mini" } ]
TOML
PYLON_ADMIN_TOKEN=sdk-admin PYLON_LOG=warn target/debug/pylon serve --config target/sdk-keys.toml >target/sdk-keys.log 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$gw/livez" "$!" target/sdk-keys.log
"$venv/bin/python" scripts/sdk_keys_check.py "http://127.0.0.1:$gw" sdk-admin
"$venv/bin/python" scripts/openapi_check.py "http://127.0.0.1:$gw"
flags_key=$(curl -fsS -X POST "http://127.0.0.1:$gw/admin/v1/keys" -H "Authorization: Bearer sdk-admin" \
  -H 'content-type: application/json' -d '{"name":"web-flags","scopes":["flags"]}' \
  | "$venv/bin/python" -c 'import sys, json; print(json.load(sys.stdin)["key"])')
"$venv/bin/python" scripts/flags_check.py "http://127.0.0.1:$gw" "$flags_key"
cp scripts/flags_check.mjs "$node_dir/"
node "$node_dir/flags_check.mjs" "http://127.0.0.1:$gw" "$flags_key"
# Every status the admin API sends is documented, schema-valid input is accepted, invalid input
# refused, content types as documented. `use_after_free` is left out: DELETE of a key revokes
# it and the record stays readable (status `revoked`) for audit.
"$venv/bin/st" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$gw/openapi.json" -H "Authorization: Bearer sdk-admin" \
  --max-examples 30 --seed 1 --exclude-checks use_after_free --no-color
