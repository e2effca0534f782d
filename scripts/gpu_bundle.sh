#!/usr/bin/env bash
# scripts/gpu_check.py on a GPU machine without network, whose Python has torch, lightning, torchmetrics,
# torchvision, tensorboard, matplotlib and h5py but not hydra-core, omegaconf or pytest.
#
#   bash scripts/gpu_bundle.sh                    # here, with network: .whl/ (the missing wheels) and
#                                                 # .gl/fashion-mnist/ (the four IDX files); checks that the working
#                                                 # tree and both folders stay within 64 MiB
#   bash scripts/gpu_bundle.sh run [OPTIONS]      # there, in the copied tree: the wheels unpacked into .gl/site
#                                                 # (nothing installed into that Python), then
#                                                 # python scripts/gpu_check.py [OPTIONS] with src/ on the path
#
# .whl/ and .gl/ are git-ignored: they travel beside the working tree (the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
FASHION_MNIST=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
LIMIT_MIB=64
# Pure-Python wheels, except safetensors (hgmldl/saving.py; one abi3 wheel for every CPython 3.x on x86-64 Linux).
WHEELS=("hydra-core>=1.3.2,<1.4" "omegaconf>=2.2,<2.4" pytest pluggy iniconfig pygments safetensors)

pack() {
    rm -rf .whl .gl
    mkdir -p .whl .gl/fashion-mnist
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    # hydra-core 1.3 pins antlr4-python3-runtime 4.9.*, published only as source: built here (pure Python).
    "$PYTHON" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
    for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        cp "$FASHION_MNIST/$name.gz" .gl/fashion-mnist/ || {
            echo "error: no $FASHION_MNIST/$name.gz: apt-get install dataset-fashion-mnist, or set FASHION_MNIST=<folder>" >&2
            exit 1
        }
    done
    local tree bundle total
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb | tail -n 1 | cut -f 1)
    bundle=$(du -scb .whl .gl | tail -n 1 | cut -f 1)
    total=$(((tree + bundle) / 1048576))
    ls -l .whl .gl/fashion-mnist
    if ((total > LIMIT_MIB)); then
        echo "error: the working tree ($((tree / 1048576)) MiB) and .whl/ + .gl/ ($((bundle / 1048576)) MiB) exceed $LIMIT_MIB MiB" >&2
        exit 1
    fi
    echo "bundle ready: $((tree / 1048576)) MiB working tree + $((bundle / 1048576)) MiB .whl/ and .gl/ (limit $LIMIT_MIB MiB)"
    echo "on the GPU machine, in the copied tree: bash scripts/gpu_bundle.sh run"
}

run() {
    rm -rf .gl/site
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --target .gl/site .whl/*.whl
    else  # a wheel is a zip of what goes into site-packages (these hold nothing else the check needs)
        "$PYTHON" -c 'import glob, zipfile; [zipfile.ZipFile(w).extractall(".gl/site") for w in glob.glob(".whl/*.whl")]'
    fi
    export PYTHONPATH="$PWD/src:$PWD/.gl/site${PYTHONPATH:+:$PYTHONPATH}"
    exec "$PYTHON" scripts/gpu_check.py "$@"
}

case "${1:-pack}" in
    pack) pack ;;
    run) shift && run "$@" ;;
    *) echo "error: unknown command $1: bash scripts/gpu_bundle.sh [pack | run [gpu_check.py options]]" >&2 && exit 1 ;;
esac
