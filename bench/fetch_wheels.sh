#!/usr/bin/env bash
# Download, here, the wheels of stilts-tui's dependencies that the GPU box lacks (it has torch,
# transformers, accelerate, nvidia-ml-py, typer, rich, numpy, pandas, pyarrow, psutil, filelock, ...
# but no internet), for its Python 3.12 on manylinux x86_64, into .whl/ (git-ignored).
# bench/gpu_check.sh installs them from there with pip --no-index.
#
#   bash bench/fetch_wheels.sh            # then carry .whl/ to the GPU box with the checkout
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
# pinned to the versions the CPU tests run with (keep one version of each: two stop the install)
WHEELS=(
  textual==8.2.8 mdit-py-plugins==0.7.0 platformdirs==4.14.8
  tinydb==4.9.0 orjson==3.13.0
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  peft==0.21.2
)
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl "${WHEELS[@]}"
ls -1 .whl
