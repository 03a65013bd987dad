#!/usr/bin/env bash
# Issue 12's GPU figures, sized for one 15-minute lease of a CUDA machine with no registry
# (the `device` tool: about 13 minutes with a start). Two phases, run from the repository
# root, each writing under OUT:
#
#   bash benchmarks/gpu_figures.sh torch OUT   # stock Trainer + PEFT vs mlxlora's torch backend
#   bash benchmarks/gpu_figures.sh mlx OUT     # stock mlx-lm vs mlxlora's MLX backend (CUDA)
#
# The mlx phase installs mlx[cuda13] from wheels: mlx and mlx-lm, and mlx-cuda-13 split into
# mlx-cuda-13.part-* files, in folders named .whl* (the whole wheel is over one call's 64 MiB,
# so each phase's call carries a part, kept in /tmp between the calls). mlx-cuda links the
# CUDA libraries torch's wheels installed (nvidia/*/lib beside torch). To make them (list
# /.whl1/ and /.whl2/ in .git/info/exclude, so that they travel only when carried):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_35_x86_64 -d /tmp/wheels mlx==0.32.4 mlx-cuda-13==0.32.4
#   pip download --no-deps -d /tmp/wheels mlx-lm==0.32.2
#   split -b 45000000 -d -a 2 /tmp/wheels/mlx_cuda_13-*.whl /tmp/wheels/mlx-cuda-13.part-
#   mkdir .whl1 .whl2; mv /tmp/wheels/*part-00 .whl1; mv /tmp/wheels/*part-01 /tmp/wheels/mlx-0* \
#       /tmp/wheels/mlx_lm-* .whl2
set -u
phase=$1 out=$2
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p /tmp/mlx-cuda-parts && cp .whl*/mlx-cuda-13.part-* /tmp/mlx-cuda-parts/ 2>/dev/null

case $phase in
torch)
    python3 -c "import torch, transformers, peft; print('torch', torch.__version__,
        'transformers', transformers.__version__, 'peft', peft.__version__)"
    # 2026-11-26, H100 (the third lease): the 0.5B shape 3.25x stock, the 1B shape 2.40x; the
    # four 0.5B sides took ~130 s, the 1B compiled side was cut off by the shape's 170 s; the
    # 0.5B step kept the GPU busy half its time, waiting on the host's ~5,000 launches.
    # Next: fewer launches (torch_fused): the LoRA layers against PEFT's forward
    # (mlxlora-peftlora) on both shapes, torch's rms_norm against transformers' (plainnorm);
    # the 1B profile; the compiled step's profile (why it ran 0.25x eager with flash
    # attention: which attention kernel, graphs compiled again).
    timeout 290 python3 benchmarks/torch_vs_trainer.py --shape llama-3.2-1b --side-timeout 100 \
        --sides stock,mlxlora,mlxlora-peftlora,mlxlora-plainnorm,mlxlora-profiled,mlxlora-compiled-profiled \
        --json "$out/torch-llama.json" 2>&1 | tee "$out/torch-llama.log"
    timeout 110 python3 benchmarks/torch_vs_trainer.py --shape qwen2.5-0.5b --side-timeout 40 \
        --sides stock,mlxlora,mlxlora-peftlora --json "$out/torch-qwen.json" 2>&1 |
        tee "$out/torch-qwen.log"
    ;;
mlx)
    site=/tmp/mlx-site
    mkdir -p $site
    cat /tmp/mlx-cuda-parts/mlx-cuda-13.part-* >/tmp/mlx-cuda-13.whl
    for wheel in .whl*/mlx-*.whl .whl*/mlx_lm-*.whl /tmp/mlx-cuda-13.whl; do
        python3 -m zipfile -e "$wheel" $site || exit 1
    done
    nvidia=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])")
    ln -sfn "$nvidia" $site/nvidia  # where libmlx.so's RPATH looks ($ORIGIN/../../nvidia)
    export PYTHONPATH="$PYTHONPATH:$site"
    export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}"
    python3 -c "import mlx.core as mx; print('mlx', mx.__version__, 'cuda', mx.cuda.is_available())"
    # The H100 lease: both mlxlora sides padded for cuDNN's attention (now the tiled side, off
    # by default) failed: the 0.5B step ran out of the card's 80 GB, the 1B one did not end in
    # two minutes, which left no time for the sides after it. Each side now has its own time
    # limit, and a failed step prints what MLX held. This lease: the unpadded step and the
    # compiled one (never timed on a GPU), and the estimate against their peaks.
    timeout 160 python3 benchmarks/train_vs_mlx_lm.py --shape qwen-0.5b --compiled \
        --side-timeout 45 2>&1 | tee "$out/mlx-qwen.log"
    timeout 170 python3 benchmarks/train_vs_mlx_lm.py --shape llama-1b --compiled \
        --side-timeout 50 2>&1 | tee "$out/mlx-llama.log"
    ;;
esac
