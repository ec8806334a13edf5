#!/usr/bin/env bash
# Create .venv and install azsl-flower with its test tools.
# torch is installed first and pinned to the CPU build this project is tested with; a GPU
# user installs their own CUDA build of torch (<= 2.13.0) into .venv before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev,text]"
echo "installed azsl-flower into $(pwd)/.venv"
