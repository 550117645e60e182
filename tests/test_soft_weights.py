"""benchmarks.soft_weights: the weight a soft step puts on reachable and optimal partial sums
of an mnns problem, on a rollout written by hand."""

import math

import pytest
import torch

from benchmarks.soft_weights import step_stats, summary
from softgrpo.rollout import Rollout, SoftThinkingConfig
from softgrpo.tasks import mnns_words
from softgrpo.tiny import build_tokenizer


def test_step_stats_by_hand():
    tokenizer = build_tokenizer(mnns_words(4, 9))
    # "3 5 2 7": reachable after 1, 2, 3 signs {±3}, {±8, ±2}, {±10, ±6, ±4, 0}; the one
    # optimal choice -3 -5 +2 +7 = 1 passes -3, -8, -6
    steps = [(["-3", "3", "5"], [0.5, 0.3, 0.2]),
             (["-8", "0", "2"], [0.6, 0.38, 0.02]),
             (["</think>", "-6", "6"], [0.1, 0.45, 0.45]),
             (["1", "2", "3"], [0.4, 0.3, 0.3])]  # a fourth soft step: past the task's three
    ids = torch.tensor([[tokenizer.convert_tokens_to_ids(w) for w in words]
                        for words, _ in steps])[None]
    tau = 0.5  # weights = softmax(perturbed / tau): perturbed = tau * log(weight)
    perturbed = tau * torch.tensor([w for _, w in steps]).log()[None]
    b, length = 1, len(steps)
    flags = torch.ones(b, length, dtype=torch.bool)
    rollout = Rollout(torch.ones(b, 1).long(), torch.ones(b, 1, dtype=torch.bool),
                      ids[..., 0], flags, flags, ~flags, ids, perturbed,
                      torch.zeros(b, length), flags[:, 0], torch.arange(b), [],
                      SoftThinkingConfig(tau=tau))
    stats = step_stats(rollout, tokenizer, ["3 5 2 7 <think>"], tau)
    expected = [(1, 0.8, 0.5, 2), (2, 0.62, 0.6, 1), (3, 0.9, 0.45, 2)]
    assert [r["step"] for r in stats] == [1, 2, 3]
    for r, (step, reachable, optimal, carried) in zip(stats, expected):
        assert r["reachable"] == pytest.approx(reachable, abs=1e-6)
        assert r["optimal"] == pytest.approx(optimal, abs=1e-6)
        assert r["carried"] == carried, step
    pooled = summary(stats + stats[:1])
    assert pooled[1]["steps"] == 2 and pooled[1]["carried"] == {2: 2}
    assert math.isclose(pooled[2]["reachable"], 0.62, abs_tol=1e-6)
