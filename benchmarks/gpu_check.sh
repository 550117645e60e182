#!/usr/bin/env bash
# One command for a GPU machine: GPU correctness tests, then the benchmark table.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Installs this package without touching the machine's torch/triton (--no-deps), runs the CUDA
# tests and the Triton kernels' tests, and writes benchmarks/results/<card>.md (or OUT_DIR).
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-benchmarks/results}
mkdir -p "$out_dir"
pip install -q --no-deps -e . || exit 1
pip install -q pytest pytest-benchmark tqdm 2>/dev/null
card=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

status=0
# The kernel tests compare launchers with the reference; on a GPU they run compiled, not
# interpreted (TRITON_INTERPRET=0 overrides the test conftest's default).
TRITON_INTERPRET=0 python -m pytest -q -x tests/test_cuda.py 2>&1 | tee "$out_dir/${card}-tests.txt" \
  || status=1
python -m benchmarks.run --device cuda --out "$out_dir/${card}.md" || status=1
exit $status
