#!/usr/bin/env bash
# Wheels for the lent accelerator machine (device tool), made here before its one call.
#
# That machine has Python 3.12 with torch, torchvision, timm, lightning, transformers, torchmetrics,
# pyarrow, pillow and scikit-image installed, no package index, and lacks the rest of what
# benchmarks/gpu_suite.py imports. This downloads those (the versions this project is tested with) into
# .whl/ (ignored by git, ~3 MB), which the device call carries:
#
#     bash benchmarks/gpu_wheels.sh
#     device run: command "bash benchmarks/gpu_device.sh", carry [".whl"], timeout_s 480
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 webdataset==1.0.2 braceexpand==0.1.7 \
    jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 omegaconf==2.4.0
ls .whl
