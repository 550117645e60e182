"""SoftGRPOTrainer: SofT-GRPO (soft-thinking rollouts, Gumbel-reparameterised log-probs) inside
TRL's GRPOTrainer, in the style of TRL's experimental trainers (e.g. GMPOTrainer).

What changes w.r.t. GRPOTrainer (everything else: datasets, reward functions with TRL's
signature, reward aggregation and advantages, the reference model, gradient accumulation,
accelerate/DeepSpeed wrapping, metric logging, is inherited):
- rollouts: ``_generate_single_turn`` runs softgrpo.adapters.hf.generate on the policy, or
  with ``use_vllm=True`` softgrpo.adapters.vllm.generate on a colocated engine
  (SoftVLLMGeneration, weights synced by TRL before each generation), and keeps the Rollout;
  TRL pads its completions as usual. Noise-key sequence ids are global (unique across
  processes and rounds), so both paths give the same rollouts for the same seeds.
- records: ``_generate_and_score_completions`` adds the per-position records (top-k ids,
  perturbed values, thinking / forced masks) to TRL's batch as ``soft_*`` tensors, aligned with
  ``completion_ids``; TRL's shuffling and splitting carry them to every micro-batch. Tokens
  forced by max_thinking_tokens enter the loss mask through TRL's ``tool_mask``.
- log-probs: ``_get_per_token_logps_and_entropies`` (TRL's single entry point for policy, old
  and reference log-probs) calls the model with the records; the model's forward, patched like
  TRL's fused LM head, runs softgrpo.adapters.hf.policy_logprobs (soft_logprob_from_hidden: no
  full logits at soft rows). Entropies are not computed (NaN: TRL logs ``entropy`` as None).
- loss: loss_type "softgrpo" is softgrpo.softgrpo_loss, its token mean taken over the global
  batch (the active tokens of every process, as TRL's "dapo"), so that data-parallel training
  computes the single-process loss and gradient; TRL's loss types run TRL's
  ``_compute_loss`` on the soft log-probs unchanged.
- importance sampling: no rollout log-probs are handed to TRL (see SoftGRPOTrainer).
- Multiplex Thinking (soft_policy "multiplex", spec 10): the records carry the draws, their
  log-probs and (with a top-k filter) the kept sets; log-probs are (B, C, K) per draw, and the
  "softgrpo" loss gets their slot mask and the ratio setting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import types
from typing import ClassVar

import torch
from accelerate.utils import is_peft_model
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import get_config_model_id, pad

from softgrpo.adapters.hf import generate, policy_logprobs
from softgrpo.loss import softgrpo_loss
from softgrpo.ops.multiplex import multiplex_slots
from softgrpo.rollout import Rollout, select

from .config import LOSS_TYPE, SoftGRPOConfig

logger = logging.getLogger(__name__)

# Rollout tensors carried per completion position (B, C, ...) and per completion (B,).
POSITION_FIELDS = ("topk_ids", "perturbed", "thinking_mask", "forced_mask", "logprobs")
ROW_FIELDS = ("finished", "sequence_ids")
PREFIX = "soft_"

IS_REASON = ("TRL's importance-sampling correction against rollout log-probs is off: soft "
             "rollouts run on the current weights (in the training process, or on the colocated "
             "vLLM engine synced before each generation; old log-probs are the sampling "
             "log-probs), and the rollout side reports the 'release' soft log-prob only "
             "(spec 2.9), not the likelihood training may use (spec 9), so it is not handed to "
             "TRL as sampling_per_token_logps.")


@dataclasses.dataclass
class SoftLogProbs:
    """What the patched forward returns: log_probs (B, C) fp32 over completion positions."""

    log_probs: torch.Tensor


def add_soft_head(model: torch.nn.Module, **likelihood) -> None:
    """Patch ``model.forward`` (like TRL's add_fused_lm_head): ``model(softgrpo_rollout=r)``
    returns SoftLogProbs(policy_logprobs(model, r, **likelihood)) (likelihood,
    conditional_weight); any other call runs the previous forward. Going through the
    (wrapped) model keeps DDP/DeepSpeed hooks in the loop."""
    previous = model.forward

    def forward(self, *args, softgrpo_rollout: Rollout | None = None, **kwargs):
        if softgrpo_rollout is None:
            return previous(*args, **kwargs)
        return SoftLogProbs(policy_logprobs(self, softgrpo_rollout, **likelihood))

    model.forward = types.MethodType(forward, model)


def _fit(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Cut or zero-pad dim 1 to ``width`` (TRL re-pads completions to its own width)."""
    if tensor.shape[1] >= width:
        return tensor[:, :width]
    pad_shape = (tensor.shape[0], width - tensor.shape[1], *tensor.shape[2:])
    return torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=1)


class SoftGRPOTrainer(GRPOTrainer):
    """
    Trainer for SofT-GRPO (https://huggingface.co/papers/2511.06411): GRPO on soft-thinking
    rollouts, whose thinking steps are scored by the Gumbel-reparameterised log-prob.

    Use it as GRPOTrainer, with a [`SoftGRPOConfig`]. Reward functions keep TRL's signature.

    Generation: the Hugging Face adapter, or with ``use_vllm=True`` (colocate mode) a vLLM
    engine per process through softgrpo.adapters.vllm. Not supported (raises): TRL's vLLM
    server mode, continuous-batching generation, tools and environments, custom
    ``rollout_func``, multimodal prompts, MoE router aux loss, and
    anything that needs the full-vocabulary entropy (entropy bonus, top-entropy masking).
    TRL's importance-sampling correction against rollout log-probs is disabled (logged):
    rollouts run in-process on the current weights, and the rollout side reports only the
    "release" soft log-prob (spec 2.9).
    """

    _tag_names: ClassVar[list[str]] = ["trl", "softgrpo"]

    def __init__(self, model, reward_funcs, args: SoftGRPOConfig | None = None, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = SoftGRPOConfig(f"{model_name.split('/')[-1]}-SoftGRPO")
        if not isinstance(args, SoftGRPOConfig):
            raise TypeError(f"args must be a SoftGRPOConfig, got {type(args).__name__}")
        for name in ("rollout_func", "tools", "environment_factory"):
            if kwargs.get(name):
                raise NotImplementedError(f"SoftGRPOTrainer does not support {name} yet: its "
                                          "rollouts come from softgrpo's soft-thinking sampler")
        # The soft forward detaches its input embeddings (spec 4): an untied embedding table gets
        # no gradient, so DDP must look for unused parameters (as TRL does for VLMs; reentrant
        # checkpointing fails with it, so it stays off there).
        if args.ddp_find_unused_parameters is None and \
                not (args.gradient_checkpointing_kwargs or {}).get("use_reentrant"):
            args.ddp_find_unused_parameters = True
        use_vllm, args.use_vllm = args.use_vllm, False  # TRL must not build its own engine
        try:
            super().__init__(model, reward_funcs, args=args, **kwargs)
        finally:
            args.use_vllm = use_vllm
        self.use_vllm = use_vllm
        if use_vllm:
            from .vllm import SoftVLLMGeneration  # needs vLLM, an optional dependency

            self.vllm_generation = SoftVLLMGeneration(
                model=self.model, accelerator=self.accelerator,
                processing_class=self.processing_class, mode="colocate",
                gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                max_model_length=args.vllm_max_model_length,
                max_num_seqs=args.per_device_train_batch_size * args.steps_per_generation,
                model_impl=args.vllm_model_impl, trust_remote_code=args.trust_remote_code,
                dtype=args.vllm_dtype)
            self._last_loaded_step = -1
        if self.aux_loss_enabled:
            raise NotImplementedError("SoftGRPOTrainer does not support the MoE router aux loss")
        self.soft_config = args.soft_thinking_config()
        for target in (self.model, self.ref_model):
            if target is not None:
                add_soft_head(target.get_base_model() if is_peft_model(target) else target,
                              likelihood=args.likelihood,
                              conditional_weight=args.conditional_weight,
                              multiplex_logprob=args.multiplex_logprob)
        self._soft_records: dict[str, torch.Tensor] | None = None
        self._next_sequence = 0
        logger.info(IS_REASON)

    # ---- rollouts -----------------------------------------------------------------------
    def _sequence_ids(self, rows: int) -> torch.Tensor:
        """Global noise-key sequence ids: unique across processes and generation rounds."""
        counts = self.accelerator.gather(torch.tensor([rows], device=self.accelerator.device))
        start = self._next_sequence + int(counts[:self.accelerator.process_index].sum())
        self._next_sequence += int(counts.sum())
        return torch.arange(start, start + rows, dtype=torch.int64)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                              has_tool_images=False):
        if images is not None or multimodal_fields:
            raise NotImplementedError("SoftGRPOTrainer does not support multimodal prompts")
        prompts = [torch.tensor(ids, dtype=torch.long) for ids in prompt_ids]
        input_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left")
        mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
        sequence_ids = self._sequence_ids(len(prompts))
        if self.use_vllm:
            if self.state.global_step != self._last_loaded_step:  # as TRL's vLLM path
                self.vllm_generation.sync_weights()
                self._last_loaded_step = self.state.global_step
            rollout = self.vllm_generation.rollout(input_ids, mask, self.soft_config,
                                                   sequence_ids).to(self.accelerator.device)
        else:
            with (
                unwrap_model_for_generation(
                    self.model_wrapped, self.accelerator,
                    gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                    gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                ) as unwrapped_model,
                torch.no_grad(),
                self._dist.summon_full_params(self.model_wrapped, recurse=False),
            ):
                rollout = generate(unwrapped_model, self._tokenizer, config=self.soft_config,
                                   input_ids=input_ids, attention_mask=mask,
                                   sequence_ids=sequence_ids)
        self._soft_records = {PREFIX + n: getattr(rollout, n) for n in self._fields()}
        completions = [row[keep].tolist() for row, keep in
                       zip(rollout.response_ids.cpu(), rollout.response_mask.cpu())]
        return completions, None  # no sampling log-probs for TRL: see IS_REASON

    def _fields(self) -> tuple[str, ...]:
        """The Rollout tensors carried in TRL's batch (and the multiplex kept sets)."""
        kept = ("kept_ids",) if self.soft_config.kept_width else ()
        return POSITION_FIELDS + kept + ROW_FIELDS

    def _generate_and_score_completions(self, inputs):
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            records, self._soft_records = self._soft_records, None
        width = output["completion_ids"].shape[1]
        for name, value in records.items():
            output[name] = value if name[len(PREFIX):] in ROW_FIELDS else _fit(value, width)
        # forced think-end tokens were not sampled: keep them out of the loss via tool_mask
        output["tool_mask"] = (~output[PREFIX + "forced_mask"]).long()
        mask = output["completion_mask"] * output["tool_mask"]
        output["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        mode = "train" if self.model.training else "eval"
        soft = (output[PREFIX + "thinking_mask"] & mask.bool()).sum()
        totals = self.accelerator.gather(torch.stack([soft, mask.sum()]).float()[None]).sum(0)
        self._metrics[mode]["softgrpo/soft_token_fraction"].append(
            (totals[0] / totals[1].clamp(min=1)).item())
        return output

    # ---- log-probs ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _records_of(self, inputs: dict):
        """Make the micro-batch's soft_* records the ones the log-prob calls score."""
        self._soft_records = {k: v for k, v in inputs.items() if k.startswith(PREFIX)}
        try:
            yield
        finally:
            self._soft_records = None

    def _rollout_of(self, input_ids, attention_mask, logits_to_keep) -> Rollout:
        """A Rollout in TRL's layout: its prompt/completion split and the active records."""
        if self._soft_records is None:
            raise RuntimeError("no soft records are active: log-probs are computed only for "
                               "batches made by SoftGRPOTrainer")
        width = logits_to_keep
        fields = {n: self._soft_records[PREFIX + n] for n in self._fields()}
        fields.update({n: _fit(v, width) for n, v in fields.items() if n not in ROW_FIELDS})
        mask = attention_mask.bool()
        return Rollout(prompt_ids=input_ids[:, :-width], prompt_mask=mask[:, :-width],
                       response_ids=input_ids[:, -width:], response_mask=mask[:, -width:],
                       config=self.soft_config, **fields)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask,
                                           logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False,
                                           **multimodal):
        if any(value is not None for value in multimodal.values()):
            raise NotImplementedError("SoftGRPOTrainer does not support multimodal inputs")
        rollout = self._rollout_of(input_ids, attention_mask, logits_to_keep)
        rows = input_ids.shape[0]
        batch_size = batch_size or rows
        with self.accelerator.autocast():  # as TRL's: policy, old and reference alike
            logps = torch.cat([
                model(softgrpo_rollout=select(rollout, slice(start, start + batch_size))).log_probs
                for start in range(0, rows, batch_size)])
        # the full-vocabulary entropy at soft rows would need the full logits: not computed
        entropies = logps.new_full(logps.shape[:2], math.nan) if compute_entropy else None
        return logps, entropies, None

    # ---- loss -----------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        with self._records_of(inputs):
            if self.loss_type != LOSS_TYPE:
                return super()._compute_loss(model, inputs)
            return self._softgrpo_loss(model, inputs)

    def _softgrpo_loss(self, model, inputs):
        completion_ids = inputs["completion_ids"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.shape[1])
        mask = inputs["completion_mask"] * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        slots = (multiplex_slots(_fit(inputs[PREFIX + "perturbed"], mask.shape[1]))
                 if self.soft_config.multiplex else None)
        loss, metrics = softgrpo_loss(
            logps, logps.detach() if old is None else old, inputs["advantages"], mask,
            ref_logp=inputs.get("ref_per_token_logps"), kl_coef=self.beta,
            kl_kind=self.args.kl_kind, clip_low=self.epsilon_low, clip_high=self.epsilon_high,
            dual_clip=self.args.dual_clip, agg="token-mean", slot_mask=slots,
            ratio=self.args.multiplex_ratio)
        mode = "train" if self.model.training else "eval"
        values = torch.tensor(list(metrics.values()), device=logps.device)
        values = self.accelerator.gather(values[None]).mean(0).tolist()
        for name, value in zip(metrics, values):
            self._metrics[mode][f"softgrpo/{name}"].append(value)
        if "kl_loss" in metrics:
            self._metrics[mode]["kl"].append(values[list(metrics).index("kl_loss")])
        # softgrpo_loss is the token mean of this micro-batch; make it the global batch's (TRL's
        # "dapo" normaliser), so data-parallel ranks together compute the single-process loss
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":  # num_items_in_batch spans the generation batch
            normalizer = (normalizer * self.current_gradient_accumulation_steps
                          / self.args.steps_per_generation)
        return loss * mask.sum().clamp(min=1) / normalizer
