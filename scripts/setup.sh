#!/usr/bin/env bash
# Create (or reuse) .venv in the project root and install unip-bench into it.
# torch is installed first, from TORCH_SPEC, so that pip never replaces it with a
# different build while resolving the project's dependencies. GPU users override it:
#   TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128"
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
STAMP=.venv/.unipbench-installed

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi

# Reinstall only when the project metadata or the torch spec changed.
want="$(cat pyproject.toml; echo "$TORCH_SPEC")"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi

.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install -q $TORCH_SPEC
fi
echo "[setup] installing unip-bench (editable) with test extras"
.venv/bin/python -m pip install -q -e ".[test]"
printf '%s' "$want" > "$STAMP"
echo "[setup] done: .venv/bin/unipbench"
