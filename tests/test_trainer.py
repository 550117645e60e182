"""The trainer on the tiny model: both algorithms run and learn something, reward failures are
isolated, checkpoints resume bit for bit (also after SIGKILL), evaluation and the CLI."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softgrpo import checkpoint, metrics
from softgrpo.cli import main
from softgrpo.components import RewardScorer, reward_function, rollout_backend
from softgrpo.config import load_config
from softgrpo.evaluate import evaluate, table
from softgrpo.rollout import Rollout, SoftThinkingConfig
from softgrpo.tasks import Problem
from softgrpo.trainer import INITIAL_DIR, train

# A few seconds per run: 1-layer model, 3 warm-start steps, 4 prompts x 4 samples, two PPO
# mini-batches of two micro-batches each (gradient accumulation), a reference model (KL).
TINY = {"tiny_hidden_size": 32, "tiny_layers": 1, "tiny_heads": 2, "task_train_size": 64,
        "task_eval_size": 3, "warm_start_steps": 3, "warm_start_batch_size": 16,
        "steps": 2, "prompts_per_step": 4, "group_size": 4, "mini_batch_prompts": 2,
        "micro_batch_size": 4, "max_response_length": 8, "eval_samples": 2, "lr": 1e-3,
        "kl_coef": 0.001, "save_every": 1, "threads": 1, "progress": False}

FLAKY_REWARD = '''
import math
from softgrpo.rewards import math_reward

def flaky(response, reference):
    """Raises for some responses and returns NaN for others (deterministically)."""
    if len(response) % 3 == 0:
        raise RuntimeError("reward server down")
    if len(response) % 3 == 1:
        return math.nan
    return math_reward(response, reference)
'''


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cfg(out, **changes):
    return load_config("default", {**TINY, "output_dir": str(out), **changes})


def _train_records(out):
    return [r for r in metrics.read(out) if r["kind"] == "train"]


def _final_weights(out):
    return load_file(str(checkpoint.latest(Path(out) / "checkpoints") / "model" /
                         "model.safetensors"))


@pytest.fixture(scope="module")
def soft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("soft")
    torch_threads = torch.get_num_threads()
    summary = train(_cfg(out))
    torch.set_num_threads(torch_threads)
    return out, summary


@pytest.mark.parametrize("algorithm", ["softgrpo", "softgrpo-release", "grpo"])
def test_both_algorithms_train(algorithm, soft_run, tmp_path):
    """The built-in default (SofT-GRPO, "token" likelihood), the paper's "release" likelihood
    on clamped noise, and GRPO."""
    if algorithm == "softgrpo":
        out, summary = soft_run
    elif algorithm == "softgrpo-release":
        out = tmp_path
        summary = train(_cfg(out, likelihood="release", noise_clamp=[-1.5, 3.0]))
    else:
        out = tmp_path
        summary = train(_cfg(out, algorithm="grpo", kl_coef=0.0))
    algorithm = algorithm.removesuffix("-release")
    records = _train_records(out)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        for key in ("loss", "pg_loss", "grad_norm", "reward_mean", "approx_kl"):
            assert math.isfinite(r[key]), (key, r)
        assert r["skipped_updates"] == 0
        assert r["thinking_length"] > 0
        if algorithm == "softgrpo":
            assert r["soft_rows"] > 0  # soft thinking happened
            assert math.isfinite(r["kl"])  # reference model loaded, KL computed
        else:
            assert r["soft_rows"] == 0  # discrete rollouts only
            assert r["kl"] is None  # kl_coef 0: no reference model
    start = load_file(str(out / INITIAL_DIR / "model.safetensors"))
    final = _final_weights(out)
    assert any(not torch.equal(start[k], final[k]) for k in start)  # the policy moved
    own = "soft" if algorithm == "softgrpo" else "discrete"
    assert summary["eval_mode"] == own and next(iter(summary["first_eval"])) == own
    assert set(summary["final_eval"]) == {"discrete", "soft", "soft-no-noise", "greedy"}
    for mode, result in summary["final_eval"].items():
        assert result["mode"] == mode and result["samples"] == (1 if mode == "greedy" else 2)
        assert 0.0 <= result["pass@1"] <= result["pass@2"] <= 1.0
        assert 1.0 <= result["distinct_answers"] <= result["samples"]
    assert (out / metrics.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["algorithm"] == algorithm


def test_same_seed_same_machine_writes_identical_metrics(tmp_path):
    """Two runs with the same seed and settings write byte-identical metrics.jsonl (wall
    times go to timing.jsonl); here with the token likelihood on unclamped noise."""
    settings = dict(likelihood="token", noise_clamp=None, conditional_weight=0.25,
                    eval_every=1)
    for name in ("a", "b"):
        train(_cfg(tmp_path / name, **settings))
    a, b = ((tmp_path / name / metrics.METRICS_FILE).read_bytes() for name in ("a", "b"))
    assert a == b
    records = metrics.read(tmp_path / "a")
    evals = [(r["step"], r["mode"]) for r in records if r["kind"] == "eval"]
    modes = ["soft", "discrete", "soft-no-noise", "greedy"]
    # before and at the end: every mode; after step 1: the training mode
    assert evals == [(0, m) for m in modes] + [(1, "soft")] + [(2, m) for m in modes]
    assert all(r["soft_rows"] > 0 for r in records if r["kind"] == "train")


def test_refuses_to_overwrite_a_run(soft_run):
    out, _ = soft_run
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(out))


def test_resume_with_changed_settings_is_refused(soft_run):
    out, _ = soft_run
    with pytest.raises(ValueError, match="lr: checkpoint 0.001 vs now 0.002"):
        train(_cfg(out, lr=2e-3), resume=True)


def test_reward_failures_score_zero_and_the_run_goes_on(tmp_path):
    module = tmp_path / "my_reward.py"
    module.write_text(FLAKY_REWARD)
    scorer = RewardScorer(reward_function(f"{module}:flaky"))
    scores = scorer(["\\boxed{ 7 }", "\\boxed{ 7 }.", "\\boxed{ 7 }..", "abc"],
                    ["7", "7", "7", "7"])
    # lengths 11, 12, 13, 3: 11 % 3 == 2 is scored; 12 and 3 raise; 13 % 3 == 1 is NaN
    assert scores.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert [f.split(":")[0] for f in scorer.failures] == ["sample 1", "sample 2", "sample 3"]
    assert "RuntimeError: reward server down" in scorer.failures[0]
    assert "ValueError: returned nan" in scorer.failures[1]
    out = tmp_path / "run"
    train(_cfg(out, reward=f"{module}:flaky", steps=1, kl_coef=0.0))
    (record,) = _train_records(out)
    assert record["reward_failures"] > 0 and math.isfinite(record["loss"])


def test_reward_function_names():
    from softgrpo.rewards import exact_match_reward, math_reward

    assert reward_function("math") is math_reward
    assert reward_function("exact") is exact_match_reward
    assert reward_function("softgrpo.rewards:math_reward") is math_reward
    with pytest.raises(ValueError, match="has no attribute"):
        reward_function("softgrpo.rewards:nothing")
    with pytest.raises(ValueError, match="no such file"):
        reward_function("missing_file.py:f")
    with pytest.raises(TypeError, match="not callable"):
        reward_function("softgrpo.rewards:MATH_VERIFY_TIMEOUT_S")
    with pytest.raises(ValueError, match="backend must be one of"):
        rollout_backend("sglang", None, None)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    settings = {**TINY, "steps": 4, "kl_coef": 0.0}
    whole = tmp_path / "whole"
    train(_cfg(whole, **settings))

    killed = tmp_path / "killed"
    args = [f"--{k}={v}" for k, v in {**settings, "output_dir": killed}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "softgrpo.cli", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (killed / "checkpoints" / checkpoint.LATEST).exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never wrote its first checkpoint"
            time.sleep(0.002)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # in step 2 or later, or writing a checkpoint
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert _train_records(killed)[-1]["step"] < 4

    summary = train(_cfg(killed, **settings), resume=True)
    assert 1 <= summary["resumed_from_step"] < 4
    a, b = _final_weights(whole), _final_weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a = checkpoint.load_state(checkpoint.resolve(whole))
    state_b = checkpoint.load_state(checkpoint.resolve(killed))
    assert state_a["step"] == state_b["step"] == 4
    assert state_a["sampler"] == state_b["sampler"]
    for pa, pb in zip(state_a["optimizer"]["state"].values(),
                      state_b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert _train_records(whole) == _train_records(killed)  # one run, as the uninterrupted
    assert [r["step"] for r in metrics.read(killed, metrics.TIMING_FILE)] == [1, 2, 3, 4]


class _FixedBackend:
    """A RolloutBackend whose sample j of problem i is correct iff correct[i][j]."""

    def __init__(self, correct):
        self.correct = correct

    def generate(self, prompts, config, sequence_ids=None):
        samples = len(self.correct[0])
        texts = [f"\\boxed{{ {'1' if self.correct[s // samples][s % samples] else '0'} }}"
                 for s in sequence_ids.tolist()]
        b = len(prompts)
        flags = torch.zeros(b, 1, dtype=torch.bool)
        return Rollout(torch.ones(b, 1, dtype=torch.long), ~flags, torch.ones(b, 1).long(),
                       ~flags, flags, flags, torch.zeros(b, 1, 1, dtype=torch.long),
                       torch.zeros(b, 1, 1), torch.zeros(b, 1), ~flags[:, 0],
                       sequence_ids, texts, config)


def test_evaluate_matches_hand_computed_pass_at_k():
    correct = [[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 1]]  # c = 0, 1, 3 of n = 4
    problems = [Problem(f"p{i}", "1") for i in range(3)]
    result = evaluate(_FixedBackend(correct), problems, RewardScorer(reward_function("math")),
                      SoftThinkingConfig(), samples=4, think_end=[7], ks=[1, 2, 4],
                      batch_size=5)
    assert result["pass@1"] == pytest.approx((0 + 1 / 4 + 3 / 4) / 3)
    # pass@2 = 1 - C(n - c, 2) / C(4, 2): 0, 1 - 3/6, 1
    assert result["pass@2"] == pytest.approx((0 + 0.5 + 1) / 3)
    assert result["pass@4"] == pytest.approx(2 / 3)
    assert result["distinct_answers"] == pytest.approx((1 + 2 + 2) / 3)  # "0" and/or "1"
    assert "pass@2" in table({"fixed": result}).splitlines()[0]
    with pytest.raises(ValueError, match="every k"):
        evaluate(_FixedBackend(correct), problems, RewardScorer(reward_function("math")),
                 SoftThinkingConfig(), samples=4, think_end=[7], ks=[5])
    # greedy (temperature 0) is deterministic: one sample per problem, Pass@k = Pass@1
    greedy = evaluate(_FixedBackend([[1], [0], [1]]), problems,
                      RewardScorer(reward_function("math")), SoftThinkingConfig(temperature=0),
                      samples=4, think_end=[7], ks=[1, 2, 4])
    assert greedy["samples"] == 1 and greedy["distinct_answers"] == 1
    assert greedy["pass@1"] == greedy["pass@2"] == greedy["pass@4"] == pytest.approx(2 / 3)


def test_greedy_decoding_is_deterministic(soft_run):
    """What evaluate relies on for greedy: temperature 0 gives the same tokens whatever the
    noise key, in both rollout modes."""
    from softgrpo.adapters.hf import generate
    from softgrpo.components import load_pretrained

    out, _ = soft_run
    model, tokenizer = load_pretrained(out / INITIAL_DIR, torch.device("cpu"), trainable=False)
    prompts = ["3 + 4 - 2 = <think>"] * 6
    for temperature in (0.0, 1.0):
        for mode in ("soft", "discrete"):
            rollout = generate(model, tokenizer, prompts, SoftThinkingConfig(
                temperature=temperature, mode=mode, max_new_tokens=8),
                sequence_ids=torch.arange(6) * 7)
            # the same tokens (the values may differ by rounding between batch rows)
            same = torch.equal(rollout.topk_ids, rollout.topk_ids[:1].expand_as(
                rollout.topk_ids)) and len(set(rollout.texts)) == 1
            assert same == (temperature == 0)  # sampling differs between noise keys


def test_cli_eval_plot_and_errors(soft_run, tmp_path, capsys):
    out, summary = soft_run
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--samples", "2", "--k", "1,2",
                 "--output", str(report), "--threads", "1"]) == 0
    results = json.loads(report.read_text())["modes"]
    # the checkpoint's own config and eval seed: the trainer's final evaluation, replayed
    assert results == summary["final_eval"]
    lines = capsys.readouterr().out.splitlines()
    assert "pass@2" in lines[1] and [line.split()[0] for line in lines[3:7]] == [
        "soft", "discrete", "soft-no-noise", "greedy"]
    assert main(["eval", "--model", str(out), "--mode", "discrete,greedy", "--samples", "2",
                 "--output", str(report), "--threads", "1"]) == 0
    assert list(json.loads(report.read_text())["modes"]) == ["discrete", "greedy"]
    assert main(["eval", "--model", str(out), "--mode", "beam"]) == 2
    assert "eval_modes must be comma-separated names" in capsys.readouterr().err
    assert main(["plot", str(out)]) == 0
    assert main(["train", "--stpes", "3"]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert main(["train", "--output_dir", str(out / "summary.json" / "x")]) == 2
    assert "not writable" in capsys.readouterr().err


def _records(response_ids, lengths):
    ids = torch.tensor(response_ids)
    b, steps = ids.shape
    mask = torch.arange(steps)[None] < torch.tensor(lengths)[:, None]
    flags = torch.zeros(b, steps, dtype=torch.bool)
    return Rollout(torch.ones(b, 1).long(), torch.ones(b, 1, dtype=torch.bool), ids, mask,
                   flags, flags, torch.zeros(b, steps, 1).long(), torch.zeros(b, steps, 1),
                   torch.zeros(b, steps), torch.ones(b, dtype=torch.bool),
                   torch.arange(b), [], SoftThinkingConfig())


def test_thinking_length_counts_tokens_before_think_end():
    rollout = _records([[5, 6, 7, 9, 1], [7, 9, 1, 0, 0], [5, 5, 5, 5, 0], [5, 1, 0, 7, 7]],
                       [5, 3, 4, 2])
    # think-end 7 at 2 and at 0; never in row 2 (its 4 tokens); row 3's 7s are padding
    assert metrics.thinking_lengths(rollout, [7]).tolist() == [2, 0, 4, 2]
    assert metrics.thinking_lengths(rollout, [6, 7]).tolist() == [1, 3, 4, 2]


def test_a_saved_model_on_a_dataset_file(soft_run, tmp_path):
    """The real-model path: --model <directory> --dataset <jsonl>, a reference model loaded
    from the same directory, gradient checkpointing on."""
    from softgrpo.tasks import running_sum_task

    out, _ = soft_run
    train_set, held_out = running_sum_task(seed=5, train_size=16, eval_size=3)
    for name, rows in (("train", train_set), ("test", held_out)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"question": p.prompt, "solution": {"value": int(p.answer)}}) + "\n"
            for p in rows))
    run = tmp_path / "run"
    settings = {k: v for k, v in TINY.items() if not k.startswith(("tiny_", "task_", "warm_"))}
    summary = train(load_config(None, {
        **settings, "model": str(out / INITIAL_DIR), "dataset": str(tmp_path / "train.jsonl"),
        "eval_dataset": str(tmp_path / "test.jsonl"), "prompt_column": "question",
        "answer_column": "solution.value", "gradient_checkpointing": True, "steps": 1,
        "output_dir": str(run)}))
    (record,) = _train_records(run)
    assert math.isfinite(record["loss"]) and math.isfinite(record["kl"])
    assert summary["final_eval"]["soft"]["problems"] == 3
    assert not (run / INITIAL_DIR).exists()  # no warm start for a given model


def test_a_missing_model_is_named_before_any_download(tmp_path, monkeypatch, capsys):
    """softgrpo eval / train with a --model that is no local directory: a message saying so
    (and why the hub cannot serve it), not transformers' retries and hub errors."""
    from huggingface_hub import constants

    missing = tmp_path / "no" / "such" / "dir"
    assert main(["eval", "--model", str(missing)]) == 2
    assert f"no such local directory: '{missing}' (and not a Hugging Face hub id" in (
        capsys.readouterr().err)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert main(["eval", "--model", "org/missing-model"]) == 2
    err = capsys.readouterr().err
    assert "no such local directory: 'org/missing-model'; as a hub id it is not in the local" \
           in err and "(http://127.0.0.1:9) cannot be reached (127.0.0.1:9: " in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["train", "--model", "org/missing-model", "--dataset", str(tmp_path / "x.jsonl"),
                 "--output_dir", str(tmp_path / "run")]) == 2
    assert "cannot be reached (HF_HUB_OFFLINE is set)" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["eval", "--model", str(tmp_path / "file")]) == 2
    assert "is a file, not a model directory" in capsys.readouterr().err


def test_warm_start_cache_is_shared_and_changes_nothing(tmp_path, capsys):
    """Runs with warm_start_cache: the first stores its warm-started model, the next (same
    settings, another algorithm) reuses it; either way the run is the one without a cache."""
    cache = tmp_path / "cache"
    settings = dict(steps=1, warm_start_cache=str(cache), dataset="mnns", warm_start_skip=0.0,
                    warm_start_teacher="distribution", max_response_length=8,
                    task_digits=3, task_digit_range=[1, 5], eval_modes="soft")
    train(_cfg(tmp_path / "first", **settings))
    assert "warm start (distribution teacher): 3 supervised steps" in capsys.readouterr().out
    (entry,) = cache.iterdir()
    assert entry.name.startswith("mnns-seed0-")
    train(_cfg(tmp_path / "again", **settings))
    assert f"(reused {entry})" in capsys.readouterr().out
    train(_cfg(tmp_path / "grpo", **{**settings, "algorithm": "grpo"}))
    assert f"(reused {entry})" in capsys.readouterr().out
    alone = {**settings, "warm_start_cache": None}
    train(_cfg(tmp_path / "alone", **alone))
    weights = [load_file(str(tmp_path / name / INITIAL_DIR / "model.safetensors"))
               for name in ("first", "again", "grpo", "alone")]
    assert all(w.keys() == weights[0].keys() and all(torch.equal(w[k], weights[0][k])
                                                     for k in w) for w in weights)
    runs = [(tmp_path / name / metrics.METRICS_FILE).read_bytes()
            for name in ("first", "again", "alone")]
    assert runs[0] == runs[1] == runs[2]
    train(_cfg(tmp_path / "seed1", **{**settings, "seed": 1}))
    assert len(list(cache.iterdir())) == 2  # another seed, another entry
