import sys

from setuptools import setup

# torch: a lower bound only, users bring their own CPU or CUDA build.
install_requires = ["torch>=2.6", "numpy"]
if sys.platform.startswith("linux"):
    install_requires.append("triton>=3.2")

hf = ["transformers>=4.56,<5.20", "tokenizers", "safetensors", "math-verify>=0.8"]
extras = {
    "test": ["pytest>=8", "pytest-benchmark>=4", "ruff"],
    "hf": hf,
    "vllm": [],
    "trl": [],
    "verl": [],
}

setup(
    name="softgrpo",
    version="0.1.0",
    description="Fused Triton kernels and adapters for SofT-GRPO (soft-thinking RL)",
    python_requires=">=3.10",
    packages=["softgrpo", "softgrpo.reference", "softgrpo.ops", "softgrpo.kernels", "softgrpo.adapters"],
    package_dir={"softgrpo.kernels": "kernels", "softgrpo.adapters": "adapters"},
    install_requires=install_requires,
    extras_require=extras,
)
