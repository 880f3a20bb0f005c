#!/usr/bin/env bash
# The one command for the lent accelerator machine (see benchmarks/gpu_wheels.sh, run here first):
# installs the carried wheels, then runs every GPU check of issue 15; the log and gpu_suite.json come
# back under $OUT/gpu (written after every section, so a run stopped at its limit keeps what it measured).
set -uo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT/gpu"
compgen -G '.whl/*.whl' >/dev/null || { echo "gpu_device: no wheels in .whl/: run 'bash benchmarks/gpu_wheels.sh' on the development machine first and carry .whl"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu/log"
python3 -c "import torch, torchvision, timm, lightning, open_clip; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__, 'open_clip', open_clip.__version__)" 2>&1 | tee -a "$OUT/gpu/log"
python3 benchmarks/gpu_suite.py --out "$OUT/gpu" "$@" 2>&1 | tee -a "$OUT/gpu/log"
