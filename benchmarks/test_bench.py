"""The benchmark cases under pytest-benchmark (not part of the test suite):

    python -m pytest benchmarks/test_bench.py --benchmark-only
"""

import pytest
import torch

from benchmarks.run import discover

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [c for module in discover(None) for c in module.cases(DEVICE)]


@pytest.mark.parametrize("impl", ["ours", "eager"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op}[{c.shape}]")
def test_benchmark(benchmark, case, impl):
    inputs = case.setup()
    fn = getattr(case, impl)
    benchmark.pedantic(lambda: fn(inputs), rounds=5, warmup_rounds=1)
