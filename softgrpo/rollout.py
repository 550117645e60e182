"""What every rollout backend shares: the soft-thinking config, the Rollout record (spec
section 3) and its row selection, and one step of the thinking phase (ThinkingPhase: soft
sampling, the think-end tracker, the conversion of the think-end step to a discrete row,
forced think-end tokens).

Noise keys (spec 8): the noise of sequence ``s`` at response position ``t`` (0-based index of
the generated token) and token ``v`` is Philox(key=noise_key(config.seed, s), counter=(v, t)),
so a rollout can be replayed exactly and does not depend on the batch or backend it ran in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from softgrpo import _checks
from softgrpo.ops.multiplex import (
    MAX_DRAWS,
    check_filter,
    check_weighting,
    multiplex_sample,
)
from softgrpo.ops.sampling import SoftSample, soft_sample

POLICIES = ("gumbel", "multiplex")  # SofT-GRPO's Gumbel-softmax top-k, Multiplex Thinking


@dataclass(frozen=True)
class SoftThinkingConfig:
    """Rollout settings; the defaults are the published runs' (spec section 6).

    k, temperature, top_p: thinking-phase filter (top-k width = soft-token width).
    tau, noise_scale, noise_clamp: Gumbel-softmax temperature, noise scale c, noise bounds.
    after_top_k, after_top_p: the filter for ordinary sampling after the think-end sequence.
    think_end: the string that ends thinking (matched as its full token sequence).
    max_new_tokens: response budget. max_thinking_tokens: after this many thinking steps the
    think-end sequence is forced (its tokens are marked in Rollout.forced_mask).
    seed: the run's noise seed (32 bits). mode: "soft" (soft thinking) or "discrete" (every
    step an ordinary sampled token, the GRPO baseline).
    soft_policy: how a thinking step is soft: "gumbel" (SofT-GRPO, spec 2: the Gumbel-perturbed
    top-k mixed by softmax(y / tau)) or "multiplex" (Multiplex Thinking, spec 10: k >= 2
    independent draws from the filtered distribution, mixed by their probabilities). For
    "multiplex", k is the number of draws (the paper's K, 3 in its runs) and its filter is
    multiplex_top_k (None: the full vocabulary, the release's) and multiplex_top_p (1, the
    release's; < 1 needs multiplex_top_k <= 128); multiplex_weighting "weighted" (the
    release's) or "uniform" (its enable_unweighting). top_p, tau, noise_scale and noise_clamp
    are the gumbel policy's.
    """

    k: int = 5
    temperature: float = 1.0
    top_p: float = 0.95
    tau: float = 0.1
    noise_scale: float = 1.0
    noise_clamp: tuple[float, float] | None = (-1.5, 3.0)
    after_top_k: int = 5
    after_top_p: float = 0.95
    think_end: str = "</think>"
    max_new_tokens: int = 8192
    max_thinking_tokens: int | None = None
    seed: int = 0
    mode: str = "soft"
    soft_policy: str = "gumbel"
    multiplex_top_k: int | None = None
    multiplex_top_p: float = 1.0
    multiplex_weighting: str = "weighted"

    def __post_init__(self) -> None:
        _checks.integer("k", self.k, 1)
        _checks.integer("after_top_k", self.after_top_k, 1)
        _checks.real("temperature", self.temperature, low=0.0, high=math.inf, high_open=True)
        for name in ("top_p", "after_top_p"):
            _checks.real(name, getattr(self, name), low=0.0, high=1.0, low_open=True)
        _checks.real("tau", self.tau, low=0.0, high=math.inf, low_open=True, high_open=True)
        _checks.real("noise_scale", self.noise_scale, low=0.0, high=math.inf, high_open=True)
        _checks.clamp_range("noise_clamp", self.noise_clamp)
        if not isinstance(self.think_end, str) or not self.think_end:
            raise ValueError(f"think_end must be a non-empty string, got {self.think_end!r}")
        _checks.integer("max_new_tokens", self.max_new_tokens, 1)
        if self.max_thinking_tokens is not None:
            _checks.integer("max_thinking_tokens", self.max_thinking_tokens, 0)
        _checks.integer("seed", self.seed, 0, 2**32 - 1)
        if self.mode not in ("soft", "discrete"):
            raise ValueError(f"mode must be 'soft' or 'discrete', got {self.mode!r}")
        if self.soft_policy not in POLICIES:
            raise ValueError(f"soft_policy must be one of {POLICIES}, got {self.soft_policy!r}")
        if self.multiplex:
            _checks.integer("k", self.k, 2, MAX_DRAWS)  # k = 1 is ordinary sampling
            check_filter(self.multiplex_top_k, self.multiplex_top_p)
            check_weighting(self.multiplex_weighting)
            if self.temperature == 0.0 and self.mode == "soft":
                raise ValueError("soft_policy 'multiplex' draws its tokens: temperature must be "
                                 "> 0 in soft mode")
        elif math.log(1.0 / self.k + 1e-6) <= -3.0:
            raise ValueError(f"k must be <= 20 (got {self.k}): with more slots a soft step can "
                             "keep none and its log-prob is undefined (spec 4)")

    @property
    def multiplex(self) -> bool:
        """Multiplex Thinking rollouts (soft_policy "multiplex")."""
        return self.soft_policy == "multiplex"

    @property
    def kept_width(self) -> int:
        """W, the width of a step's kept-set record (Rollout.kept_ids): multiplex_top_k for
        the multiplex policy with a top-k filter, else 0 (no kept sets: the gumbel policy's
        records are its top-k ids; an unfiltered multiplex step's support is the
        vocabulary)."""
        return (self.multiplex_top_k or 0) if self.multiplex else 0

    def replace(self, **changes) -> SoftThinkingConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class Rollout:
    """Padded per-position records of B sequences, everything spec section 3 lists.

    prompt_ids (B, P) int64, left-padded; prompt_mask (B, P) bool.
    response_ids (B, L) int64 text tokens, right-padded; response_mask (B, L) bool.
    thinking_mask (B, L) bool: soft rows. forced_mask (B, L) bool: tokens forced by
    max_thinking_tokens (not sampled; exclude them from a loss).
    topk_ids (B, L, k) int64 and perturbed (B, L, k) fp32: the records, discrete rows in the
    convention [s, 0, ..., 0] / [l_s, 0, ..., 0].
    logprobs (B, L) fp32: rollout-side log-probs. finished (B,) bool: ended with EOS.
    sequence_ids (B,) int64: the noise key's sequence of each row. texts: decoded responses.
    config: the SoftThinkingConfig the rollout ran with (tau, temperature, noise, seed, ...).
    With config.soft_policy "multiplex" (spec 10): topk_ids are the k draws (repeats allowed,
    slot 0 the text token), perturbed their rollout-side log-probs, a discrete row
    [s, 0, ...] / [l_s, -inf, ...]; logprobs the steps' joint log-probs; kept_ids (B, L, W)
    int64 the filter's kept set per step (-1: unused slot; discrete rows all -1), present
    only when config.multiplex_top_k is set (without it the support is the vocabulary).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    thinking_mask: torch.Tensor
    forced_mask: torch.Tensor
    topk_ids: torch.Tensor
    perturbed: torch.Tensor
    logprobs: torch.Tensor
    finished: torch.Tensor
    sequence_ids: torch.Tensor
    texts: list[str] = field(default_factory=list)
    config: SoftThinkingConfig = field(default_factory=SoftThinkingConfig)
    kept_ids: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device: torch.device | str) -> Rollout:
        return dataclasses.replace(self, **{n: t.to(device) for n, t in self.tensors().items()})

    def save(self, path: str | Path) -> None:
        """torch.save of plain tensors, strings and numbers (loadable with weights_only)."""
        torch.save({"tensors": self.tensors(), "texts": list(self.texts),
                    "config": dataclasses.asdict(self.config)}, Path(path))

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Rollout:
        blob = torch.load(Path(path), map_location=map_location, weights_only=True)
        config = dict(blob["config"])
        if config.get("noise_clamp") is not None:
            config["noise_clamp"] = tuple(config["noise_clamp"])
        return cls(**blob["tensors"], texts=blob["texts"], config=SoftThinkingConfig(**config))


class RolloutBackend(Protocol):
    """What the trainer needs from a rollout engine (HF adapter, vLLM adapter)."""

    def generate(self, prompts: list[str], config: SoftThinkingConfig,
                 sequence_ids: torch.Tensor | None = None) -> Rollout: ...

    def load_weights(self, model: torch.nn.Module) -> None: ...


class ThinkEndTracker:
    """Per-row detector of the full think-end token sequence in the text tokens (the release
    checked only its last sub-token, wrong for tokenizers that split it)."""

    def __init__(self, pattern: list[int], rows: int, device: torch.device | str = "cpu"):
        if not pattern:
            raise ValueError("the think-end token sequence is empty")
        self.pattern = torch.tensor(pattern, dtype=torch.int64, device=device)
        self.window = torch.full((rows, len(pattern)), -1, dtype=torch.int64, device=device)

    def push(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Append one token per row (or to ``rows`` only); returns (n,) bool: the window now
        ends with the pattern."""
        window = self.window if rows is None else self.window[rows]
        window = torch.cat([window[:, 1:], tokens.view(-1, 1).to(window)], dim=1)
        if rows is None:
            self.window = window
        else:
            self.window[rows] = window
        return (window == self.pattern).all(dim=1)


def to_discrete(sample: SoftSample, rows: torch.Tensor, logits: torch.Tensor,
                temperature: float, padding: float = 0.0) -> SoftSample:
    """Store the steps ``rows`` (a (B,) bool mask) of a soft sample as discrete rows: the step
    that completes the think-end sequence (spec 2). Its token is kept; ids [s, 0, ..., 0],
    weights [1, 0, ..., 0], perturbed [y_s, padding, ..., padding] (the perturbed value s was
    chosen with; padding -inf for multiplex records), logprob = log p(s) under the full
    softmax at ``temperature`` (1 when greedy)."""
    first = torch.zeros_like(sample.ids, dtype=torch.bool)
    first[:, 0] = True
    keep = rows[:, None] & ~first
    z = logits.float() / (temperature or 1.0)
    token_lp = z.gather(-1, sample.token[:, None]).squeeze(-1) - torch.logsumexp(z, -1)
    ids = sample.ids.masked_fill(keep, 0)
    return SoftSample(ids, sample.perturbed.masked_fill(keep, padding),
                      torch.where(rows[:, None], first.float(), sample.weights), ids[:, 0],
                      torch.where(rows, token_lp, sample.logprob))


def force_tokens(sample: SoftSample, rows: torch.Tensor, tokens: torch.Tensor,
                 logits: torch.Tensor, temperature: float, padding: float = 0.0) -> SoftSample:
    """Replace the steps ``rows`` by the forced ``tokens``: discrete rows [s, 0, ...] with the
    token's log-prob under the full softmax as logprob and as perturbed slot 0."""
    ids = sample.ids.clone()
    ids[:, 0] = torch.where(rows, tokens, ids[:, 0])
    out = to_discrete(sample._replace(ids=ids, token=ids[:, 0]), rows, logits, temperature,
                      padding)
    perturbed = out.perturbed.clone()
    perturbed[:, 0] = torch.where(rows, out.logprob, perturbed[:, 0])
    return out._replace(perturbed=perturbed)


def multiplex_step(logits: torch.Tensor, config: SoftThinkingConfig, keys: torch.Tensor,
                   t: int | torch.Tensor, soft: torch.Tensor) -> tuple[SoftSample, torch.Tensor]:
    """One step of multiplex records (spec 10): multiplex_sample for the rows ``soft``, an
    ordinary sample with the after-thinking filter for the others ([s, 0, ...] /
    [l_s, -inf, ...]). Each row's logits are read by one op. ``t``: the response position
    (the noise offset), one int or (B,) per row. Returns the sample (perturbed: the draws'
    log-probs; logprob: the joint log-prob) and the kept sets (B, W = config.kept_width), -1
    outside them and on discrete rows."""
    b, k = logits.shape[0], config.k
    ids = torch.zeros(b, k, dtype=torch.int64, device=logits.device)
    perturbed = torch.full((b, k), -math.inf, device=logits.device)
    weights = torch.zeros(b, k, device=logits.device)
    logprob = torch.zeros(b, device=logits.device)
    kept = torch.full((b, config.kept_width), -1, dtype=torch.int64, device=logits.device)
    rows, other = soft.nonzero().squeeze(1), (~soft).nonzero().squeeze(1)

    def offset(picked: torch.Tensor) -> int | torch.Tensor:  # the rows' own positions
        return t[picked] if isinstance(t, torch.Tensor) else t

    if rows.numel():
        m = multiplex_sample(logits[rows], k, temperature=config.temperature,
                             top_k=config.multiplex_top_k, top_p=config.multiplex_top_p,
                             weighting=config.multiplex_weighting, seed=keys[rows],
                             offset=offset(rows))
        ids[rows], perturbed[rows], weights[rows] = m.ids, m.logprobs, m.weights
        logprob[rows], kept[rows] = m.logprob, m.kept
    if other.numel():  # width 1: the discrete sample, then the padding slots
        d = soft_sample(logits[other], 1, temperature=config.temperature, seed=keys[other],
                        offset=offset(other), thinking=torch.zeros_like(other, dtype=torch.bool),
                        discrete_k=config.after_top_k, discrete_top_p=config.after_top_p)
        ids[other, 0], perturbed[other, 0], weights[other, 0] = d.token, d.perturbed[:, 0], 1.0
        logprob[other] = d.logprob
    return SoftSample(ids, perturbed, weights, ids[:, 0], logprob), kept


def policy_step(logits: torch.Tensor, config: SoftThinkingConfig, keys: torch.Tensor,
                t: int | torch.Tensor,
                soft: torch.Tensor) -> tuple[SoftSample, torch.Tensor | None]:
    """One sampling step of the config's soft policy: the rows ``soft`` take a soft step
    (soft_sample's Gumbel top-k, or multiplex_step's draws), the others an ordinary sample
    with the after-thinking filter; noise keys ``keys``, offset ``t`` (one int or one per
    row). Returns the sample and the multiplex kept sets (None under the gumbel policy)."""
    c = config
    if c.multiplex:
        return multiplex_step(logits, c, keys, t, soft)
    return soft_sample(logits, c.k, temperature=c.temperature, top_p=c.top_p, tau=c.tau,
                       noise_scale=c.noise_scale, seed=keys, offset=t, thinking=soft,
                       noise_clamp=c.noise_clamp, discrete_k=c.after_top_k,
                       discrete_top_p=c.after_top_p), None


class ThinkingPhase:
    """Per-row phase: thinking until the think-end sequence, forced think-end after
    config.max_thinking_tokens sampled thinking steps. With the multiplex policy, ``kept``
    holds the last step's kept sets (B_live, W)."""

    def __init__(self, think_end: list[int], rows: int, config: SoftThinkingConfig,
                 device: torch.device):
        self.config = config
        self.tracker = ThinkEndTracker(think_end, rows, device)
        self.pattern = torch.tensor(think_end, dtype=torch.int64, device=device)
        self.thinking = torch.ones(rows, dtype=torch.bool, device=device)
        self.steps = torch.zeros(rows, dtype=torch.int64, device=device)
        self.forced_at = torch.full((rows,), -1, dtype=torch.int64, device=device)
        self.kept: torch.Tensor | None = None

    def step(self, logits: torch.Tensor, keys: torch.Tensor, live: torch.Tensor,
             t: int | torch.Tensor) -> tuple[SoftSample, torch.Tensor, torch.Tensor]:
        """Sample step ``t`` (one response position, or (n,) per row: the noise offsets) of
        the rows ``live``; returns (sample, soft rows, forced rows)."""
        c = self.config
        thinking, forced_at = self.thinking[live], self.forced_at[live]
        limited = c.max_thinking_tokens is not None
        if limited:
            start = thinking & (forced_at < 0) & (self.steps[live] >= c.max_thinking_tokens)
            forced_at = forced_at.masked_fill(start, 0)
        forced = forced_at >= 0
        soft = thinking & ~forced & (c.mode == "soft")
        padding = -math.inf if c.multiplex else 0.0  # a discrete row's slots 1..
        sample, self.kept = policy_step(logits, c, keys, t, soft)
        if limited and forced.any():  # (a host sync: skipped when nothing can be forced)
            sample = force_tokens(sample, forced, self.pattern[forced_at.clamp(min=0)], logits,
                                  c.temperature, padding)
        ended = self.tracker.push(sample.token, live) & thinking
        if (ended & soft).any():
            sample = to_discrete(sample, ended & soft, logits, c.temperature, padding)
            if self.kept is not None:
                self.kept = self.kept.masked_fill((ended & soft)[:, None], -1)
        self.steps[live] += (thinking & ~forced).long()
        self.forced_at[live] = torch.where(ended, -1, forced_at + forced.long())
        self.thinking[live] = thinking & ~ended
        return sample, soft & ~ended, forced


def select(rollout: Rollout, index: torch.Tensor | slice | list[int]) -> Rollout:
    """The rows ``index`` of a rollout (int indices, a bool mask over rows, or a slice), in
    that order, with their texts and the same config. Padding columns are kept, so the
    slice's (B', L) log-probs line up with the full rollout's columns."""
    rows = rollout.prompt_ids.shape[0]
    if isinstance(index, slice):
        index = torch.arange(rows)[index]
    index = torch.as_tensor(index)
    if index.dtype == torch.bool:
        if index.shape != (rows,):
            raise ValueError(f"a bool index must have shape ({rows},), got {tuple(index.shape)}")
        index = index.nonzero().squeeze(1)
    if index.dim() != 1 or (index.numel() and index.is_floating_point()):
        raise TypeError("index must be a 1-D tensor or list of row indices, a bool mask or a "
                        "slice")
    index = index.long().cpu()
    if index.numel() and (int(index.min()) < -rows or int(index.max()) >= rows):
        raise ValueError(f"index must lie in [-{rows}, {rows}), got {index.tolist()}")
    picked = {name: t[index.to(t.device)] for name, t in rollout.tensors().items()}
    texts = [rollout.texts[i] for i in index.tolist()] if rollout.texts else []
    return dataclasses.replace(rollout, **picked, texts=texts)
