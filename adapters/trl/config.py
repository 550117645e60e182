"""SoftGRPOConfig: TRL's GRPOConfig plus the soft-thinking rollout and SofT-GRPO loss settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from softgrpo import _checks
from softgrpo.loss import KL_KINDS, MULTIPLEX_RATIOS
from softgrpo.ops.multiplex_logprob import MULTIPLEX_LOGPROBS
from softgrpo.rollout import SoftThinkingConfig

LOSS_TYPE = "softgrpo"


@dataclass
class SoftGRPOConfig(GRPOConfig):
    r"""
    Configuration class for [`SoftGRPOTrainer`] (SofT-GRPO, arXiv 2511.06411).

    Inherits every [`GRPOConfig`] parameter. Defaults follow the published 1.5B run: rollout
    `top_k=5`, `top_p=0.95`, `temperature=1.0`; `beta=0.001` with the clamped k3 KL.
    `top_k` is the soft-token width K and `top_p` the nucleus applied inside the top-k during
    thinking; `max_completion_length` is the response budget.

    Parameters:
        loss_type (`str`, *optional*, defaults to `"softgrpo"`):
            `"softgrpo"`: softgrpo.softgrpo_loss (PPO clip, dual clip, KL to the reference,
            token mean; spec section 5). Any of TRL's loss types (`"grpo"`, `"dapo"`, ...)
            runs TRL's own loss on the soft log-probs.
        soft_tau (`float`, defaults to `0.1`): Gumbel-softmax temperature of the soft tokens.
        soft_noise_scale (`float`, defaults to `1.0`): scale of the Gumbel noise.
        soft_noise_clamp (`list[float]` or `None`, defaults to `[-1.5, 3.0]`): noise bounds.
        after_thinking_top_k (`int`, defaults to `5`), after_thinking_top_p (`float`,
            defaults to `0.95`): sampling filter after the think-end sequence.
        think_end (`str`, defaults to `"</think>"`): the string that ends thinking.
        max_thinking_tokens (`int` or `None`): force the think-end sequence after this many
            thinking steps (forced tokens are kept out of the loss).
        soft_seed (`int` or `None`): noise seed of the rollouts; `None` uses `seed`.
        rollout_mode (`str`, defaults to `"soft"`): `"soft"` (SofT-GRPO) or `"discrete"`
            (every step an ordinary sampled token: the GRPO baseline on the same path).
        dual_clip (`float` or `None`, defaults to `3.0`): dual-clip bound for negative
            advantages (`"softgrpo"` loss only).
        kl_kind (`str`, defaults to `"low_var_kl"`): KL estimator of the `"softgrpo"` loss.
        likelihood (`str`, defaults to `"release"`): the soft-row score (spec 9): `"release"`
            (the paper's), `"exact"` or `"token"`; the latter two need
            `soft_noise_clamp=None`.
        conditional_weight (`float`, defaults to `0.0`): `"token"` only, in [0, 1].
        soft_policy (`str`, defaults to `"gumbel"`): `"gumbel"` (SofT-GRPO) or `"multiplex"`
            (Multiplex Thinking, spec 10: `top_k` is then the number of draws K, the paper's 3;
            needs `loss_type="softgrpo"`; either rollout path, `use_vllm` or not).
        multiplex_top_k (`int` or `None`), multiplex_top_p (`float`, defaults to `1.0`),
            multiplex_weighting (`str`, defaults to `"weighted"`): the multiplex filter and
            input mix (softgrpo.SoftThinkingConfig; the defaults are the release's).
        multiplex_logprob (`str`, defaults to `"filtered"`): a draw's log-prob over the
            filter's kept set or `"full"` (the vocabulary, the release's).
        multiplex_ratio (`str`, defaults to `"slot"`): the PPO ratio per draw (the release's) or
            `"joint"` per step.
        use_vllm (`bool`, defaults to `False`): generate with softgrpo.adapters.vllm instead of
            the Hugging Face adapter: `vllm_mode="colocate"` only (one in-process engine per
            training process, tensor parallel size 1, vLLM 0.32 with the V1 runner).
        vllm_dtype (`str`, defaults to `"auto"`): dtype of the colocated engine (`"auto"`: the
            checkpoint's, as TRL).
        vllm_importance_sampling_correction (`bool`, defaults to `False`): must stay off (the
            rollout-side soft log-prob is not handed to TRL).
    """

    top_k: int = field(default=5, metadata={"help": "Soft-token width K (top-k of thinking)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus inside the top-k."})
    beta: float = field(default=0.001, metadata={"help": "KL coefficient (published: 0.001)."})
    loss_type: str = field(default=LOSS_TYPE, metadata={"help": "'softgrpo' or a TRL loss."})
    soft_tau: float = field(default=0.1, metadata={"help": "Gumbel-softmax temperature."})
    soft_noise_scale: float = field(default=1.0, metadata={"help": "Gumbel noise scale."})
    soft_noise_clamp: list[float] | None = field(
        default_factory=lambda: [-1.5, 3.0], metadata={"help": "Noise bounds (low, high)."})
    after_thinking_top_k: int = field(default=5, metadata={"help": "Top-k after thinking."})
    after_thinking_top_p: float = field(default=0.95, metadata={"help": "Top-p after thinking."})
    think_end: str = field(default="</think>", metadata={"help": "String that ends thinking."})
    max_thinking_tokens: int | None = field(
        default=None, metadata={"help": "Force think_end after this many thinking steps."})
    soft_seed: int | None = field(default=None, metadata={"help": "Noise seed (None: seed)."})
    rollout_mode: str = field(default="soft", metadata={"help": "'soft' or 'discrete'."})
    dual_clip: float | None = field(default=3.0, metadata={"help": "Dual-clip bound."})
    kl_kind: str = field(default="low_var_kl", metadata={"help": "KL estimator."})
    likelihood: str = field(default="release", metadata={
        "help": "Soft-row score: 'release', 'exact' or 'token' (spec 9)."})
    conditional_weight: float = field(default=0.0, metadata={
        "help": "'token' only: weight of log q(y | token), in [0, 1]."})
    soft_policy: str = field(default="gumbel", metadata={"help": "'gumbel' or 'multiplex'."})
    multiplex_top_k: int | None = field(default=None, metadata={
        "help": "Multiplex filter's top-k (None: the full vocabulary)."})
    multiplex_top_p: float = field(default=1.0, metadata={"help": "Multiplex filter's top-p."})
    multiplex_weighting: str = field(default="weighted", metadata={
        "help": "Multiplex input mix: 'weighted' or 'uniform'."})
    multiplex_logprob: str = field(default="filtered", metadata={
        "help": "Multiplex draw log-prob: 'filtered' or 'full'."})
    multiplex_ratio: str = field(default="slot", metadata={
        "help": "Multiplex PPO ratio: 'slot' (per draw) or 'joint'."})
    vllm_dtype: str = field(default="auto", metadata={"help": "Colocated vLLM engine dtype."})
    vllm_importance_sampling_correction: bool = field(
        default=False, metadata={"help": "Not supported with soft rollouts: keep False."})

    def __post_init__(self):
        super().__post_init__()
        if self.use_vllm:
            self._check_vllm()
        unsupported = {
            "use_transformers_continuous_batching": self.use_transformers_continuous_batching,
            "generation_kwargs": bool(self.generation_kwargs),
            "min_p": self.min_p is not None,
            "repetition_penalty != 1": self.repetition_penalty != 1.0,
            "top_entropy_quantile < 1 (needs the full-vocabulary entropy)":
                self.top_entropy_quantile < 1.0,
            "an entropy bonus (needs the full-vocabulary entropy)":
                self.entropy_coef != 0.0 or self.use_adaptive_entropy,
        }
        for name, used in unsupported.items():
            if used:
                raise ValueError(f"{name} is not supported by SoftGRPOTrainer's soft rollouts")
        if self.kl_kind not in KL_KINDS:
            raise ValueError(f"kl_kind must be one of {KL_KINDS}, got {self.kl_kind!r}")
        multiplex = self.soft_thinking_config().multiplex  # validates the rollout settings now
        if multiplex and self.loss_type != LOSS_TYPE:
            raise ValueError(f"soft_policy='multiplex' needs loss_type={LOSS_TYPE!r} (per-draw "
                             f"log-probs), got {self.loss_type!r}")
        if self.multiplex_logprob not in MULTIPLEX_LOGPROBS:
            raise ValueError(f"multiplex_logprob must be one of {MULTIPLEX_LOGPROBS}, got "
                             f"{self.multiplex_logprob!r}")
        if self.multiplex_ratio not in MULTIPLEX_RATIOS:
            raise ValueError(f"multiplex_ratio must be one of {MULTIPLEX_RATIOS}, got "
                             f"{self.multiplex_ratio!r}")
        _checks.likelihood_setting(self.likelihood, self.conditional_weight,
                                   self.soft_noise_clamp, "soft_noise_clamp")

    def _check_vllm(self) -> None:
        """The vLLM options soft rollouts support (softgrpo.adapters.vllm.SUPPORTED)."""
        if self.vllm_mode != "colocate":
            raise NotImplementedError(
                f"vllm_mode={self.vllm_mode!r} is not supported: TRL's vllm-serve returns token "
                "ids and log-probs only, not the per-position top-k ids and perturbed values "
                "SofT-GRPO trains on, and its weight sync needs NCCL. Use vllm_mode='colocate'.")
        unsupported = {
            "vllm_tensor_parallel_size != 1 (softgrpo.adapters.vllm runs one worker)":
                self.vllm_tensor_parallel_size != 1,
            "vllm_enable_sleep_mode": self.vllm_enable_sleep_mode,
            "vllm_model_impl='transformers' (soft inputs need vLLM's own model classes)":
                self.vllm_model_impl == "transformers",
            "vllm_structured_outputs_regex (it would change the logits soft thinking samples)":
                self.vllm_structured_outputs_regex is not None,
            "vllm_importance_sampling_correction (the rollout side reports the 'release' soft "
            "log-prob only, not the training likelihood)": self.vllm_importance_sampling_correction,
        }
        for name, used in unsupported.items():
            if used:
                raise NotImplementedError(f"{name} is not supported with use_vllm=True by "
                                          "SoftGRPOTrainer")

    def soft_thinking_config(self) -> SoftThinkingConfig:
        """The rollout settings as a softgrpo SoftThinkingConfig (validated there)."""
        clamp = None if self.soft_noise_clamp is None else tuple(self.soft_noise_clamp)
        return SoftThinkingConfig(
            k=self.top_k, temperature=self.temperature, top_p=self.top_p, tau=self.soft_tau,
            noise_scale=self.soft_noise_scale, noise_clamp=clamp,
            after_top_k=self.after_thinking_top_k, after_top_p=self.after_thinking_top_p,
            think_end=self.think_end, max_new_tokens=self.max_completion_length,
            max_thinking_tokens=self.max_thinking_tokens,
            seed=self.seed if self.soft_seed is None else self.soft_seed, mode=self.rollout_mode,
            soft_policy=self.soft_policy, multiplex_top_k=self.multiplex_top_k,
            multiplex_top_p=self.multiplex_top_p, multiplex_weighting=self.multiplex_weighting)
