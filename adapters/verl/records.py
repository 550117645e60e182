"""How soft-thinking records travel through verl 0.9.1, from an agent loop to the actor.

verl's only per-sample extension point from rollout to trainer is AgentLoopOutput.extra_fields:
each key becomes a per-sample entry of DataProto.non_tensor_batch, survives reordering and
balancing, and reaches the actor's and the reference's micro-batches as a list (one entry per
sample). A sample with a response of R tokens carries

    softgrpo_topk_ids     (R, k) int   the stored top-k ids of each response token (spec 3)
    softgrpo_perturbed    (R, k) float the stored perturbed log-probs y
    softgrpo_tau          float        the rollout's Gumbel-softmax temperature
    softgrpo_temperature  float        the rollout's sampling temperature
    softgrpo_noise_clamp  (lo, hi)|None the rollout's noise bounds (the recovered noise's too)
    softgrpo_noise_scale  float        the rollout's noise scale c
    softgrpo_likelihood   str          the soft-row score the actor computes (spec 9); for
                                       Multiplex Thinking the draws' log-prob, "filtered" or
                                       "full" (spec 10)
    softgrpo_conditional_weight float  its weight of log q(y | token) ("token" only)
    softgrpo_policy       str          the soft policy, "gumbel" or "multiplex"
    softgrpo_weighting    str          the multiplex input mix, "weighted" or "uniform"
    softgrpo_kept         (R, W) int   the multiplex filter's kept sets, -1 unused (W = 0:
                                       no top-k filter, the support is the vocabulary)

(discrete rows in the convention [s, 0, ..., 0] / [l_s, 0, ..., 0], [l_s, -inf, ...] for
multiplex). The actor engine packs them next to verl's packed input ids: prompt tokens become
discrete rows of themselves.

Multiplex records are scored by the joint log-prob of each step (the sum over its draws):
verl carries one log-prob per token from the actor's old/reference passes to its loss, so the
"softgrpo" loss on them is the joint ratio (softgrpo.loss, spec 10); the release's per-draw
ratio runs in softgrpo's trainer and the TRL adapter.

The likelihood travels with the records rather than in verl's policy-loss config: the actor
engine computes the log-probs (old, reference and current) before, and without, the loss
function, and verl's PolicyLossConfig is a closed dataclass. It is set in the trainer
config's ``softgrpo`` section (agent_loop.py) or by agent_loop_output's arguments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from softgrpo import _checks
from softgrpo.ops.multiplex_logprob import MULTIPLEX_LOGPROBS
from softgrpo.rollout import Rollout, SoftThinkingConfig

TOPK_IDS = "softgrpo_topk_ids"
PERTURBED = "softgrpo_perturbed"
TAU = "softgrpo_tau"
TEMPERATURE = "softgrpo_temperature"
NOISE_CLAMP = "softgrpo_noise_clamp"
NOISE_SCALE = "softgrpo_noise_scale"
LIKELIHOOD = "softgrpo_likelihood"
CONDITIONAL_WEIGHT = "softgrpo_conditional_weight"
POLICY = "softgrpo_policy"
WEIGHTING = "softgrpo_weighting"
KEPT = "softgrpo_kept"
KEYS = (TOPK_IDS, PERTURBED, TAU, TEMPERATURE, NOISE_CLAMP, NOISE_SCALE, LIKELIHOOD,
        CONDITIONAL_WEIGHT, POLICY, WEIGHTING, KEPT)


def record_fields(topk_ids, perturbed, config: SoftThinkingConfig, likelihood: str | None = None,
                  conditional_weight: float = 0.0, kept=None) -> dict:
    """The extra_fields entries of one sample from its (R, k) records (tensors, arrays or
    lists), the rollout's settings and the likelihood the actor scores them with (None: the
    policy's default, "release" for gumbel records, "filtered" for multiplex ones): int64 /
    float32 arrays (-inf values kept), tau, temperature, noise clamp and scale, likelihood,
    the soft policy and, for multiplex records, the weighting and the (R, W) kept sets
    (None: W = 0).

    Raises ValueError for records of mismatched shapes or a likelihood the rollout cannot
    serve ("exact" and "token" need noise_clamp None; multiplex records take "filtered" or
    "full")."""
    ids = np.asarray(topk_ids, dtype=np.int64)
    values = np.asarray(perturbed, dtype=np.float32)
    if ids.ndim != 2 or values.shape != ids.shape:
        raise ValueError(f"records must be (R, k) ids and perturbed values of one shape, got "
                         f"{ids.shape} and {values.shape}")
    kept = np.zeros((len(ids), 0), np.int64) if kept is None else np.asarray(kept, np.int64)
    if kept.ndim != 2 or len(kept) != len(ids):
        raise ValueError(f"kept must be (R, W) with R = {len(ids)}, got {kept.shape}")
    if likelihood is None:
        likelihood = "filtered" if config.multiplex else "release"
    if config.multiplex:
        if likelihood not in MULTIPLEX_LOGPROBS or conditional_weight:
            raise ValueError(f"multiplex records are scored with likelihood in "
                             f"{MULTIPLEX_LOGPROBS} (the draws' log-prob), got {likelihood!r}"
                             + (" with a conditional_weight" if conditional_weight else ""))
        weight = 0.0
    else:
        weight = _checks.likelihood_setting(likelihood, conditional_weight, config.noise_clamp)
    return {TOPK_IDS: ids, PERTURBED: values, TAU: float(config.tau),
            TEMPERATURE: float(config.temperature), NOISE_CLAMP: config.noise_clamp,
            NOISE_SCALE: float(config.noise_scale), LIKELIHOOD: likelihood,
            CONDITIONAL_WEIGHT: weight, POLICY: config.soft_policy,
            WEIGHTING: config.multiplex_weighting, KEPT: kept}


def agent_loop_fields(rollout: Rollout, row: int, likelihood: str | None = None,
                      conditional_weight: float = 0.0) -> dict:
    """The extra_fields entries of one rollout row (its response positions only).

    Args:
        rollout: a softgrpo Rollout (any backend). row: the row index.
        likelihood, conditional_weight: the soft-row score the actor computes (spec 9), or
            for a multiplex rollout the draws' log-prob (spec 10); None: "release" /
            "filtered".
    Returns:
        record_fields' entries, R = the row's response length.
    """
    length = int(rollout.response_mask[row].sum())
    kept = None if rollout.kept_ids is None else rollout.kept_ids[row, :length].cpu()
    return record_fields(rollout.topk_ids[row, :length].cpu(),
                         rollout.perturbed[row, :length].float().cpu(), rollout.config,
                         likelihood, conditional_weight, kept)


def agent_loop_output(rollout: Rollout, row: int, likelihood: str | None = None,
                      conditional_weight: float = 0.0, **kwargs):
    """A verl AgentLoopOutput for one rollout row, records in extra_fields.

    prompt_ids: the row's prompt without padding; response_ids: its response tokens;
    response_mask: 1 for sampled tokens, 0 for tokens forced by max_thinking_tokens (verl then
    keeps them in the context but out of the loss). response_logprobs is left unset: the
    rollout-side log-prob (spec 2.9) is the "release" score only, so verl's rollout
    correction must not compare it with the actor's. likelihood, conditional_weight: the
    soft-row score the actor computes. kwargs go to AgentLoopOutput (e.g. reward_score,
    num_turns); metrics defaults to an empty AgentLoopMetrics.
    """
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

    length = int(rollout.response_mask[row].sum())
    fields = {**kwargs.pop("extra_fields", {}),
              **agent_loop_fields(rollout, row, likelihood, conditional_weight)}
    return AgentLoopOutput(
        prompt_ids=rollout.prompt_ids[row][rollout.prompt_mask[row].bool()].tolist(),
        response_ids=rollout.response_ids[row, :length].tolist(),
        response_mask=(~rollout.forced_mask[row, :length].bool()).long().tolist(),
        metrics=kwargs.pop("metrics", AgentLoopMetrics()),
        extra_fields=fields,
        **kwargs,
    )


@dataclass(frozen=True)
class PackedRecords:
    """Records in verl's packed (remove-padding) layout of one micro-batch, N packed tokens.

    ids, perturbed (N, k): every token's record (prompt tokens as discrete rows).
    scored (N,) bool: positions whose next token is a response token of the same sequence
    (their hidden state is scored against the next record). tau, temperature, clamp,
    noise_scale: the rollout's settings; likelihood, conditional_weight: the soft-row score;
    policy, weighting, kept (N, W): the soft policy, the multiplex mix and kept sets.
    A frozen dataclass is a pytree leaf, so FSDP2 does not cast it to the compute dtype.
    """

    ids: torch.Tensor
    perturbed: torch.Tensor
    scored: torch.Tensor
    tau: float
    temperature: float
    clamp: tuple[float, float] | None
    noise_scale: float
    likelihood: str
    conditional_weight: float
    policy: str
    weighting: str
    kept: torch.Tensor

    def padded(self, pad: int) -> PackedRecords:
        """Append ``pad`` unscored discrete rows of token 0 (verl's static packed padding)."""
        if not pad:
            return self
        pad_rows = torch.nn.functional.pad
        discrete = -math.inf if self.policy == "multiplex" else 0.0  # slots 1.. of the padding
        perturbed = pad_rows(self.perturbed, (0, 0, 0, pad), value=discrete)
        perturbed[-pad:, 0] = 0.0
        return dataclasses.replace(self, ids=pad_rows(self.ids, (0, 0, 0, pad)),
                                   perturbed=perturbed, scored=pad_rows(self.scored, (0, pad)),
                                   kept=pad_rows(self.kept, (0, 0, 0, pad), value=-1))


def _uniform(name: str, values: list):
    """The one value all samples share (numbers, a likelihood name, or (lo, hi) pairs / None
    for the clamp)."""
    distinct = {v if v is None or isinstance(v, str) else tuple(float(x) for x in np.ravel(v))
                for v in values}
    if len(distinct) != 1:
        raise ValueError(f"{name} must be the same for every sample of a batch, got "
                         f"{sorted(distinct, key=str)}")
    value = distinct.pop()
    return value if value is None or isinstance(value, str) or len(value) != 1 else value[0]


def _sample_records(name: str, value: object, rows: int, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(value), dtype=dtype)
    if tensor.dim() != 2 or tensor.shape[0] < rows:
        raise ValueError(f"{name} of a sample must be (R, k) with R >= its response length "
                         f"{rows}, got shape {tuple(tensor.shape)}")
    return tensor[:rows]


def pack(micro_batch, response_lengths: torch.Tensor) -> PackedRecords:
    """Pack one micro-batch's per-sample records next to its nested ``input_ids``.

    Args:
        micro_batch: verl TensorDict with nested input_ids (prompt + response tokens of each
            sample) and the KEYS as per-sample lists (see the module docstring).
        response_lengths: (B,) response tokens per sample (the tail of each sequence).
    Raises:
        KeyError naming the missing key; ValueError for records of the wrong shape, records
        whose first id is not the sample's response token (misaligned records), or tau /
        temperature that differ between samples.
    """
    present = set(micro_batch.keys())
    missing = [key for key in KEYS if key not in present]
    if missing:
        raise KeyError(f"the batch has no {missing}: a SofT-GRPO actor needs soft records from "
                       "the rollout (AgentLoopOutput.extra_fields, see "
                       "softgrpo.adapters.verl.agent_loop_output)")
    tokens = micro_batch["input_ids"].values()
    offsets = micro_batch["input_ids"].offsets().tolist()
    ids_list, perturbed_list, scored = [], [], torch.zeros(tokens.shape[0], dtype=torch.bool)
    kept_list = []
    policy = _uniform(POLICY, micro_batch[POLICY])
    discrete = -math.inf if policy == "multiplex" else 0.0  # a discrete row's slots 1..
    k = None
    for i, (start, end) in enumerate(pairwise(offsets)):
        rows = int(response_lengths[i])
        prompt = end - start - rows
        if prompt < 1:
            raise ValueError(f"sample {i} has no prompt token (verl needs prompt length > 0)")
        ids = _sample_records(TOPK_IDS, micro_batch[TOPK_IDS][i], rows, torch.int64)
        perturbed = _sample_records(PERTURBED, micro_batch[PERTURBED][i], rows, torch.float32)
        k = ids.shape[1] if k is None else k
        if ids.shape != (rows, k) or perturbed.shape != ids.shape:
            raise ValueError(f"sample {i}: {TOPK_IDS} {tuple(ids.shape)} and {PERTURBED} "
                             f"{tuple(perturbed.shape)} must both be ({rows}, {k})")
        response = tokens[end - rows:end].cpu()
        if not torch.equal(ids[:, 0], response):
            raise ValueError(f"sample {i}: {TOPK_IDS}[:, 0] is not the sample's response "
                             "tokens (records misaligned with the response)")
        kept = torch.as_tensor(np.asarray(micro_batch[KEPT][i]), dtype=torch.int64)[:rows]
        if kept.dim() != 2 or len(kept) != rows:
            raise ValueError(f"sample {i}: {KEPT} must be ({rows}, W), got {tuple(kept.shape)}")
        prompt_ids = torch.zeros(prompt, k, dtype=torch.int64)
        prompt_ids[:, 0] = tokens[start:end - rows].cpu()
        prompt_values = torch.full((prompt, k), discrete)
        prompt_values[:, 0] = 0.0
        ids_list += [prompt_ids, ids]
        perturbed_list += [prompt_values, perturbed]
        kept_list += [torch.full((prompt, kept.shape[1]), -1, dtype=torch.int64), kept]
        scored[max(end - rows - 1, start):end - 1] = True  # hidden state t scores record t + 1
    widths = {t.shape[1] for t in kept_list}
    if len(widths) != 1:
        raise ValueError(f"{KEPT} must have one width W for every sample, got {sorted(widths)}")
    device = tokens.device
    return PackedRecords(torch.cat(ids_list).to(device), torch.cat(perturbed_list).to(device),
                         scored.to(device), _uniform(TAU, micro_batch[TAU]),
                         _uniform(TEMPERATURE, micro_batch[TEMPERATURE]),
                         *(_uniform(key, micro_batch[key]) for key in
                           (NOISE_CLAMP, NOISE_SCALE, LIKELIHOOD, CONDITIONAL_WEIGHT)),
                         policy, _uniform(WEIGHTING, micro_batch[WEIGHTING]),
                         torch.cat(kept_list).to(device))
