"""The thin SofT-GRPO trainer: one loop, read it top to bottom.

Per step: a batch of prompts -> a group of ``group_size`` rollouts per prompt -> rewards ->
group advantages -> old (and reference) log-probs -> PPO epochs over mini-batches, gradient
accumulation over micro-batches -> optimizer step with grad-norm clipping (a step whose norm
is not finite is skipped) -> metrics, checkpoint.

The two algorithms share every line: "softgrpo" rolls out with soft thinking (the thinking
positions are soft rows scored by the Gumbel log-density, spec 4) and "grpo" rolls out
discretely (every position an ordinary token log-prob). Which one runs is only the rollout
mode, cfg.mode.

Exact resume: rollout noise is keyed by (seed, global sequence id, position), mini-batches
are shuffled by a generator seeded from (seed, step), and a checkpoint holds the model,
optimizer, scheduler, data position and RNG states; a resumed run continues bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from softgrpo import checkpoint
from softgrpo.adapters.hf import policy_logprobs
from softgrpo.components import (
    RewardScorer,
    autocast,
    compute_dtype,
    device_of,
    load_pretrained,
    problems,
    reward_function,
    rollout_backend,
    teacher,
    tiny_policy,
)
from softgrpo.config import BUILTIN_MODEL, RESUMABLE_CHANGES, TrainConfig
from softgrpo.evaluate import evaluate_modes, table
from softgrpo.loss import grpo_advantages, softgrpo_loss
from softgrpo.metrics import RunLog, plot, step_line, thinking_lengths
from softgrpo.ops.multiplex import multiplex_slots
from softgrpo.rollout import Rollout, select
from softgrpo.tasks import Problem, PromptSampler
from softgrpo.tiny import warm_start

INITIAL_DIR = "initial_policy"  # the tiny model after its warm start (the KL reference)
SUMMARY_FILE = "summary.json"
WARM_START_FILE = "warm_start.json"  # in INITIAL_DIR: the warm start's settings and losses


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Run (or, with resume, continue) training as configured; returns the run summary
    (also written to <output_dir>/summary.json).

    Raises:
        FileExistsError: output_dir already has checkpoints and resume is False.
        ValueError: resuming with settings that differ from the checkpoint's (other than
            RESUMABLE_CHANGES).
        PermissionError / OSError: output_dir not writable or too little disk space, before
            training starts.
    """
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    checkpoint.check_writable(out, 0)
    previous = checkpoint.latest(ckpt_root) if (ckpt_root / checkpoint.LATEST).exists() else None
    if previous is not None and not resume:
        raise FileExistsError(f"{out} already holds checkpoints (latest {previous.name}); pass "
                              "--resume to continue that run, or choose another output_dir")
    device = device_of(cfg)
    dtype = compute_dtype(cfg, device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    # -- policy: resumed from the checkpoint, loaded, or built and warm-started --------------
    state: dict = {}
    if previous is not None:
        state = checkpoint.load_state(previous)
        _check_resumable(cfg, TrainConfig(**state["config"]))
        model, tokenizer = load_pretrained(previous / "model", device, trainable=True,
                                           gradient_checkpointing=cfg.gradient_checkpointing)
        print(f"resuming from {previous} (step {state['step']})")
    elif cfg.model == BUILTIN_MODEL:
        model, tokenizer = tiny_policy(cfg)
        model.to(device)
    else:
        model, tokenizer = load_pretrained(cfg.model, device, trainable=True,
                                           gradient_checkpointing=cfg.gradient_checkpointing)
    need = (cfg.min_free_disk_gb * 2**30 if cfg.min_free_disk_gb is not None
            else 2 * checkpoint.size_estimate(model))
    checkpoint.check_writable(out, int(need))  # before any training
    train_set, held_out = problems(cfg, tokenizer)
    if previous is None and cfg.model == BUILTIN_MODEL:
        print(_warm_start(cfg, model, tokenizer, train_set, out / INITIAL_DIR))
        # computed or reused, every run continues from the saved copy: the same weights
        model, tokenizer = load_pretrained(out / INITIAL_DIR, device, trainable=True,
                                           gradient_checkpointing=cfg.gradient_checkpointing)
    initial = out / INITIAL_DIR if cfg.model == BUILTIN_MODEL else cfg.model
    reference = None
    if cfg.kl_coef > 0:  # the KL anchor: the initial policy, frozen, in the compute dtype
        reference, _ = load_pretrained(initial, device, trainable=False, dtype=dtype)

    # -- the rest of the machinery -----------------------------------------------------------
    scorer = RewardScorer(reward_function(cfg.reward))
    backend = rollout_backend(cfg.backend, model, tokenizer, progress=cfg.progress)
    rollout_cfg = cfg.rollout_config()
    think_end = tokenizer.encode(cfg.think_end, add_special_tokens=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(cfg.lr_warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    sampler = PromptSampler(len(train_set), cfg.seed)
    start_step = 0
    if previous is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        checkpoint.set_rng_state(state["rng"])
        start_step = state["step"]
    log = RunLog(out, start_step)
    cfg.save_yaml(out / "config.yaml")

    def run_eval(step: int, modes: list[str]) -> dict | None:
        """{mode: result} on the held-out problems, each result logged as an eval record."""
        if not held_out:
            return None
        with autocast(device, dtype):
            results = evaluate_modes(backend, held_out, scorer, cfg, modes, think_end=think_end,
                                     progress=cfg.progress)
        for result in results.values():
            log.log(step, result, kind="eval")
        tqdm.write(f"eval step {step} ({len(held_out)} problems x {cfg.eval_samples} "
                   f"samples):\n{table(results, 'mode')}")
        return results

    all_modes = cfg.eval_mode_list()  # before and after training; in between: cfg.mode
    first_eval = (state.get("first_eval") if previous is not None
                  else run_eval(0, all_modes))
    group, batch = cfg.group_size, cfg.prompts_per_step * cfg.group_size
    updates_per_step = cfg.ppo_epochs * (cfg.prompts_per_step // cfg.mini_batch_prompts)
    micro_per_update = -(-cfg.mini_batch_prompts * group // cfg.micro_batch_size)  # ceil
    record: dict = {}

    # -- the loop ------------------------------------------------------------------------------
    for step in range(start_step + 1, cfg.steps + 1):
        t0 = time.perf_counter()

        # 1. prompts: each repeated group_size times, a group's rows adjacent
        index = sampler.take(cfg.prompts_per_step)
        batch_problems = [train_set[i] for i in index for _ in range(group)]

        # 2. rollouts; global sequence ids key the noise, so every rollout can be replayed
        backend.load_weights(model)
        sequence_ids = torch.arange(batch) + (step - 1) * batch
        with autocast(device, dtype):
            rollout = backend.generate([p.prompt for p in batch_problems], rollout_cfg,
                                       sequence_ids=sequence_ids).to(device)
        rollout_time = time.perf_counter() - t0

        # 3. rewards (a failing reward function scores 0 for that sample) and 4. advantages
        rewards = scorer(rollout.texts, [p.answer for p in batch_problems])
        for failure in scorer.failures:
            tqdm.write(f"step {step}: reward failed for {failure}; scored 0")
        advantages = grpo_advantages(rewards, group).to(device)
        mask = rollout.response_mask & ~rollout.forced_mask  # forced tokens were not sampled
        # multiplex: (B, L, k) per-draw log-probs; the loss counts every draw of a soft row
        slots = multiplex_slots(rollout.perturbed) if rollout.config.multiplex else None

        # 5. old and reference log-probs, without gradient
        old_logp = _logprobs(model, rollout, cfg, device, dtype)
        ref_logp = _logprobs(reference, rollout, cfg, device, dtype) if reference else None

        # 6. PPO epochs over mini-batches of whole groups; micro-batches accumulate gradients
        model.train()
        shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        stats, grad_norms, skipped = [], [], 0
        updates = tqdm(total=updates_per_step * micro_per_update, disable=not cfg.progress,
                       desc=f"update {step}", leave=False)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.prompts_per_step, generator=shuffle)
            for groups in order.split(cfg.mini_batch_prompts):
                rows = (groups[:, None] * group + torch.arange(group)).flatten()
                total = _weight(mask[rows], cfg.loss_agg)
                optimizer.zero_grad(set_to_none=True)
                for micro in rows.split(cfg.micro_batch_size):
                    with autocast(device, dtype):
                        logp = policy_logprobs(model, select(rollout, micro),
                                               pathwise=cfg.pathwise, **_likelihood(cfg))
                    loss, metrics = softgrpo_loss(
                        logp, old_logp[micro], advantages[micro], mask[micro],
                        ref_logp=None if ref_logp is None else ref_logp[micro],
                        kl_coef=cfg.kl_coef, kl_kind=cfg.kl_kind, clip_low=cfg.clip_low,
                        clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, agg=cfg.loss_agg,
                        slot_mask=None if slots is None else slots[micro],
                        ratio=cfg.multiplex_ratio)
                    # scale so the accumulated gradient is the whole mini-batch's aggregate
                    share = _weight(mask[micro], cfg.loss_agg) / max(total, 1)
                    (loss * share).backward()
                    stats.append((share / updates_per_step, metrics))
                    updates.update(1)
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if torch.isfinite(norm):
                    optimizer.step()
                else:  # a NaN/inf gradient: skip this update, keep the weights
                    skipped += 1
                grad_norms.append(float(norm))
        updates.close()
        scheduler.step()
        model.eval()

        # 7. metrics, checkpoint, evaluation
        record = _step_metrics(rollout, think_end, rewards, stats, grad_norms, skipped, scorer)
        record["lr"] = scheduler.get_last_lr()[0]
        log.log(step, record)
        times = {"rollout_time": rollout_time, "step_time": time.perf_counter() - t0}
        log.time(step, **times)
        if step % cfg.log_every == 0 or step == cfg.steps:
            tqdm.write(step_line(step, cfg.steps, {**record, **times}))
        if step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0):
            _save(ckpt_root, step, model, tokenizer, optimizer, scheduler, sampler, cfg,
                  first_eval)
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            run_eval(step, [cfg.mode])

    last_eval = run_eval(cfg.steps, all_modes)
    log.close()
    summary = {"algorithm": cfg.algorithm, "seed": cfg.seed, "steps": cfg.steps,
               "resumed_from_step": start_step, "eval_mode": cfg.mode,
               "first_eval": first_eval, "final_eval": last_eval, "last_step": record,
               "wall_time_s": time.perf_counter() - started}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    try:
        print(f"plot: {plot(out)}")
    except ImportError:
        print("plot skipped: matplotlib is not installed")
    if first_eval and last_eval:
        print(f"held-out Pass@1 ({cfg.mode} decoding): {first_eval[cfg.mode]['pass@1']:.4f} "
              f"before -> {last_eval[cfg.mode]['pass@1']:.4f} after ({cfg.algorithm}, "
              f"seed {cfg.seed})")
    return summary


def _warm_start(cfg: TrainConfig, model, tokenizer, train_set: list[Problem],
                dest: Path) -> str:
    """Warm-start the tiny model with the task's teacher and save it (and its tokenizer and
    WARM_START_FILE) to ``dest``; with cfg.warm_start_cache, reuse the copy stored there for
    the same settings, or store this one. Returns the line to print."""
    # every setting the warm start depends on (max_prompt_length: which problems it sees)
    settings = {k: v for k, v in cfg.to_dict().items()
                if k in ("seed", "dataset", "max_prompt_length") or (
                    k.startswith(("task_", "tiny_", "warm_start_")) and k != "warm_start_cache")}
    cached = None
    if cfg.warm_start_cache is not None:
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        cached = Path(cfg.warm_start_cache) / f"{cfg.dataset}-seed{cfg.seed}-{key}"
    if cached is not None and (cached / WARM_START_FILE).is_file():
        shutil.copytree(cached, dest, dirs_exist_ok=True)
        note = f" (reused {cached})"
    else:
        # running-sum: a teacher that skips intermediate values (warm_start_skip > 0) leaves
        # the model shortcuts that often fail, which leaves RL room to improve Pass@1
        losses = warm_start(model, tokenizer, train_set, steps=cfg.warm_start_steps,
                            batch_size=cfg.warm_start_batch_size, lr=cfg.warm_start_lr,
                            seed=cfg.seed, solution=teacher(cfg))
        model.save_pretrained(dest)
        tokenizer.save_pretrained(dest)
        (dest / WARM_START_FILE).write_text(json.dumps({"settings": settings,
                                                         "losses": losses}))
        note = ""
        if cached is not None:  # publish whole (rename), unless a parallel run did first
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
            shutil.copytree(dest, tmp, dirs_exist_ok=True)
            try:
                os.rename(tmp, cached)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
    losses = json.loads((dest / WARM_START_FILE).read_text())["losses"]
    first, last = (losses[0], losses[-1]) if losses else (float("nan"),) * 2
    return (f"warm start ({cfg.warm_start_teacher} teacher): {len(losses)} supervised "
            f"steps, loss {first:.3f} -> {last:.3f}{note}")


@torch.no_grad()
def _logprobs(model: torch.nn.Module, rollout: Rollout, cfg: TrainConfig,
              device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) log-probs of a whole rollout ((B, L, k) multiplex), in micro-batches, without
    gradient."""
    rows = torch.arange(rollout.response_ids.shape[0])
    with autocast(device, dtype):
        return torch.cat([policy_logprobs(model, select(rollout, micro), **_likelihood(cfg))
                          for micro in rows.split(cfg.micro_batch_size)])


def _likelihood(cfg: TrainConfig) -> dict:
    return {"likelihood": cfg.likelihood, "conditional_weight": cfg.conditional_weight,
            "multiplex_logprob": cfg.multiplex_logprob}


def _weight(mask: torch.Tensor, agg: str) -> int:
    """A micro-batch's share of its mini-batch's loss: its tokens (token-mean), its rows (the
    seq-mean modes), or all of it (seq-mean-token-sum-norm: a sum over rows, not a mean).
    So the accumulated gradient is the aggregate over the whole mini-batch; the release
    instead averages the micro-batches' own aggregates (equal weights whatever their tokens)."""
    if agg == "seq-mean-token-sum-norm":
        return 1
    return int(mask.sum()) if agg == "token-mean" else mask.shape[0]


def _step_metrics(rollout: Rollout, think_end: list[int], rewards: torch.Tensor, stats: list,
                  grad_norms: list, skipped: int, scorer: RewardScorer) -> dict:
    """The step's record: rollout statistics and the share-weighted mean loss metrics.
    soft_rows counts the soft (mixed-embedding) positions: zero in a grpo run."""
    response = rollout.response_mask.sum(1).float()
    thinking = thinking_lengths(rollout, think_end)
    record = {"reward_mean": float(rewards.mean()),
              "pass_rate": float((rewards >= 1.0).float().mean()),
              "reward_failures": len(scorer.failures),
              "response_length": float(response.mean()),
              "thinking_length": float(thinking.mean()),
              "soft_rows": int(rollout.thinking_mask.sum()),
              "finished": float(rollout.finished.float().mean())}
    for key in stats[0][1]:
        record[key] = sum(share * m[key] for share, m in stats)
    record["clip_frac"] = record["clip_frac_low"] + record["clip_frac_high"]
    record["kl"] = record.pop("kl_loss", None)
    record["grad_norm"] = sum(grad_norms) / len(grad_norms)
    record["skipped_updates"] = skipped
    return record


def _save(root: Path, step: int, model, tokenizer, optimizer, scheduler, sampler,
          cfg: TrainConfig, first_eval: dict | None) -> None:
    state = {"step": step, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
             "rng": checkpoint.rng_state(), "config": cfg.to_dict(), "first_eval": first_eval}
    try:
        path = checkpoint.save(root, step, model, tokenizer, state, keep=cfg.keep_checkpoints)
    except OSError as err:
        good = checkpoint.latest(root) if (root / checkpoint.LATEST).exists() else None
        raise OSError(f"could not write the checkpoint of step {step} ({err}); the last good "
                      f"checkpoint is {good or 'none'} and was left untouched") from err
    tqdm.write(f"checkpoint: {path}")


def _check_resumable(cfg: TrainConfig, saved: TrainConfig) -> None:
    changed = {k: v for k, v in cfg.differences(saved).items() if k not in RESUMABLE_CHANGES}
    if changed:
        lines = ", ".join(f"{k}: checkpoint {b!r} vs now {a!r}" for k, (a, b) in changed.items())
        raise ValueError(f"cannot resume with different settings ({lines}); use the run's "
                         "config (saved as <output_dir>/config.yaml)")
