#!/usr/bin/env bash
# CI drift check: fail when libs/mlp-protos/src/mlp_protos differs from what proto/ generates.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" scripts/gen_protos.py --check
