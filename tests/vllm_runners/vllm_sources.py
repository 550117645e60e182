"""Unpack one vLLM release's CUDA wheel for tests/vllm_runners: ``python vllm_sources.py
VERSION DIR`` downloads vllm==VERSION without its dependencies (the environment running the
tests, .venv-vllm, has them) and unpacks it into DIR without its compiled libraries (CUDA
kernels, which cannot load on a machine without a GPU; vLLM imports without them), to be put
first on PYTHONPATH. Does nothing when DIR exists."""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def main(version: str, target: str) -> None:
    if Path(target).exists():
        return
    with tempfile.TemporaryDirectory() as folder:
        # --no-cache-dir: ten CUDA wheels of several hundred MB each would otherwise stay in
        # pip's cache; the unpacked DIR is what later runs reuse
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-cache-dir", "--only-binary=:all:", "-d", folder,
                        f"vllm=={version}"], check=True)
        (wheel,) = Path(folder).glob("vllm-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if ".so" not in Path(n).suffixes]
            archive.extractall(target + ".part", names)
    Path(target + ".part").rename(target)


if __name__ == "__main__":
    main(*sys.argv[1:])
