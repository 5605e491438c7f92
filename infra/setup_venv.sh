#!/usr/bin/env bash
# Creates (or reuses) .venv at the repo root with the project and its dev tools installed.
# torch is pinned to the CPU build that lies on this machine's disk through constraints.txt;
# without it pip would resolve `torch>=2.4` to a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.sas-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,demo]' 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import torch, ray, mlflow, synth, sas_model, pipelines" 
    touch "$stamp"
fi
