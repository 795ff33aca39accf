#!/usr/bin/env bash
# The one prepared GPU check (issue 16): the gpu-marked tests, then timings of the three
# methods at their paper settings on one GPU, fp32 and bf16 autocast, written to
# benchmarks/results/gpu.md. About 8 minutes on one H100/H200.
# Usage (repository root, sctorch installed with its test extra):
#   bash benchmarks/gpu_check.sh            # or: OUT=/some/dir bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
timeout 240 python -m pytest -q -m gpu -p no:cacheprovider
timeout 300 python benchmarks/gpu.py --out "${OUT:-benchmarks/results}/gpu.md"
