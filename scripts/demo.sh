#!/usr/bin/env bash
# The main job on the embedded default (local CA): no Vault, no cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
