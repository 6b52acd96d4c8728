#!/usr/bin/env bash
# The whole test suite, from scratch: installs into .venv, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python -m pytest -ra "$@"
