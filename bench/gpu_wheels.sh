#!/usr/bin/env bash
# The wheels bench/gpu_check.py's `engines` section needs that the GPU image (Python 3.12, torch, triton,
# onnx, onnxruntime; no package registry) lacks: downloaded here for Python 3.12 on x86_64 into
# .gpu_wheels/ (git-ignored), carried to the device with the working tree, installed there offline:
#
#   bash bench/gpu_wheels.sh
#   (device) pip install -q --no-index --find-links .gpu_wheels rich safetensors tqdm imageio && python bench/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .gpu_wheels rich safetensors tqdm imageio
du -sh .gpu_wheels
