#!/usr/bin/env bash
# Fill the git-ignored .whl/ with the wheels that benchmarks/gpu_check.sh installs offline: the
# project's dependencies that the GPU machine's image lacks (hydra-core, omegaconf,
# antlr4-python3-runtime, pycocotools), for its Python 3.12 on x86-64 Linux and, for a CPU
# rehearsal, for this machine's python3 too. Run once, with network, from anywhere:
#
#   bash benchmarks/gpu_wheels.sh            # then: carry .whl to the GPU machine
#
# Versions follow pyproject.toml. antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) exists
# only as a source archive: it is built here into a pure-Python wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_PYTHON=${GPU_PYTHON:-3.12}
mkdir -p .whl
PURE=("hydra-core>=1.3.2,<1.4" "omegaconf>=2.3,<2.4")
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "${PURE[@]}"
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==4.9.3"
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "pycocotools>=2.0.7"
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "pycocotools>=2.0.7"  # this python
ls -1 .whl
