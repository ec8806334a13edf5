#!/usr/bin/env bash
# Install, then run the default job with Flower: embedded digits data, 2 simulated owners,
# white-box, transductive teachers. Extra arguments go to `flwr run`, e.g.
#   bash simulations/quickstart.sh --run-config "scenario='blackbox'"
set -euo pipefail
cd "$(dirname "$0")/.."
bash simulations/install.sh
export PATH="$(pwd)/.venv/bin:$PATH"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1   # offline: never pip-install per run
export FLWR_HOME="${FLWR_HOME:-$HOME/.flwr}"            # outside the app folder
trap '.venv/bin/python -m simulations.run.local_superlink stop --flwr-home "$FLWR_HOME" >/dev/null' EXIT
flwr run . --stream "$@"
