import sys

from setuptools import find_packages, setup

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

# kernels/ and adapters/ install as softgrpo.kernels and softgrpo.adapters: a top-level
# `kernels` would collide with Hugging Face's `kernels` package, which transformers imports.
packages = ["softgrpo", *(f"softgrpo.{p}" for p in find_packages("softgrpo"))]
for name, folder in (("softgrpo.kernels", "kernels"), ("softgrpo.adapters", "adapters")):
    packages += [name, *(f"{name}.{p}" for p in find_packages(folder))]

setup(
    name="softgrpo",
    version="0.1.0",
    description="Fused Triton kernels and adapters for SofT-GRPO (soft-thinking RL)",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"softgrpo.kernels": "kernels", "softgrpo.adapters": "adapters"},
    install_requires=install_requires,
    extras_require=extras,
    entry_points={"console_scripts": ["softgrpo = softgrpo.cli:main"]},
)
