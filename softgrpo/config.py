"""TrainConfig: every setting of ``softgrpo train`` / ``softgrpo eval``, with the published
runs' values as defaults (spec section 6), loaded from YAML and overridden from the command
line (``--set key=value`` or ``--key value``), validated with messages that name the key.

The built-in default run (``softgrpo train`` with no arguments) is the shipped YAML
``softgrpo/configs/default.yaml``: the synthetic task on a tiny local model, with its own
(much larger) learning rate and small batches. ``configs/mnns.yaml`` is the same on the
mnns search task; ``configs/r1-distill-qwen-1.5b.yaml`` is the authors'
DeepSeek-R1-Distill-Qwen-1.5B recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from softgrpo import _checks
from softgrpo.loss import AGG_MODES, KL_KINDS, MULTIPLEX_RATIOS
from softgrpo.ops.multiplex_logprob import MULTIPLEX_LOGPROBS
from softgrpo.rollout import SoftThinkingConfig

CONFIG_DIR = Path(__file__).parent / "configs"
BUILTIN_MODEL = "tiny"
BUILTIN_TASK = "running-sum"
BUILTIN_TASKS = (BUILTIN_TASK, "mnns")  # the synthetic tasks (softgrpo.tasks)
TEACHERS = ("path", "distribution")  # warm-start teachers of the built-in tasks
# evaluation decoding modes (eval_config): "discrete" sampling, "soft" thinking with Gumbel
# noise (as SofT-GRPO trains), "soft-no-noise" (noise_scale 0: Soft Thinking's original
# deterministic mix, then sampled answers; with the multiplex policy, the k most probable
# tokens mixed by their renormalised probabilities), "greedy" (temperature 0: argmax tokens)
EVAL_MODES = ("discrete", "soft", "soft-no-noise", "greedy")
EVAL_KS = (1, 4, 16, 32)  # the paper's Pass@k (those <= eval_samples)
ALGORITHMS = {"softgrpo": "soft", "grpo": "discrete"}  # algorithm -> rollout mode
# settings that may differ between a checkpoint and the run that resumes it
RESUMABLE_CHANGES = ("steps", "save_every", "keep_checkpoints", "eval_every", "output_dir",
                     "log_every", "progress", "device", "backend", "threads", "eval_batch_size",
                     "warm_start_cache")


@dataclass
class TrainConfig:
    """All settings; see the field comments. Unknown keys and bad values raise ValueError."""

    # -- what to train ---------------------------------------------------------------------
    model: str = BUILTIN_MODEL  # "tiny" (built locally + warm start), a local path or hub id
    dataset: str = BUILTIN_TASK  # "running-sum" or "mnns" (synthetic), or a .jsonl / .parquet
    eval_dataset: str | None = None  # held-out file; None: the task's held-out split (if any)
    prompt_column: str = "prompt"
    answer_column: str = "answer"  # dotted for nested fields: "reward_model.ground_truth"
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    reward: str = "math"  # "math" (last \boxed{} via math-verify), "exact", or "module:function"
    output_dir: str = "runs/softgrpo"

    # -- algorithm and optimisation (spec 5 and 6) -------------------------------------------
    algorithm: str = "softgrpo"  # "softgrpo" (soft thinking) or "grpo" (discrete baseline)
    steps: int = 200
    prompts_per_step: int = 64
    group_size: int = 8  # samples per prompt
    mini_batch_prompts: int = 32  # PPO mini-batch, in prompts (one optimizer step each)
    micro_batch_size: int = 8  # sequences per forward/backward (gradient accumulation)
    ppo_epochs: int = 1
    lr: float = 1e-6
    lr_warmup_steps: int = 0  # linear warm-up, then constant
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # grad-norm clip; a step whose norm is not finite is skipped
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    kl_coef: float = 0.001  # 0: no reference model is loaded
    kl_kind: str = "low_var_kl"
    loss_agg: str = "token-mean"
    pathwise: bool = False  # keep the gradient through soft input embeddings (spec 8)
    # the soft-row score (spec 9): "release" (the paper's), "exact" (joint noise density) or
    # "token" (log P(token) + conditional_weight * log q(y | token)); "exact" and "token"
    # need unclamped rollout noise (noise_clamp: null)
    likelihood: str = "release"
    conditional_weight: float = 0.0  # "token" only, in [0, 1]
    # the soft thinking policy (spec 10): "gumbel" (SofT-GRPO) or "multiplex" (Multiplex
    # Thinking: k draws from the multiplex filter, mixed by multiplex_weighting; the
    # likelihood, tau, noise and top_p settings above and below are the gumbel policy's)
    soft_policy: str = "gumbel"
    multiplex_top_k: int | None = None  # None: the full vocabulary (the release's)
    multiplex_top_p: float = 1.0  # < 1 needs multiplex_top_k
    multiplex_weighting: str = "weighted"  # or "uniform" (the release's enable_unweighting)
    multiplex_logprob: str = "filtered"  # a draw's normaliser: kept set (exact) or "full"
    multiplex_ratio: str = "slot"  # PPO ratio per draw (the release's) or "joint" per step

    # -- rollout (spec 2 and 6) --------------------------------------------------------------
    backend: str = "hf"  # "hf", "vllm", or "module:factory" (factory(model, tokenizer))
    max_prompt_length: int = 1024  # longer prompts are dropped from the dataset (reported)
    max_response_length: int = 8192
    max_thinking_tokens: int | None = None  # force think_end after this many thinking steps
    temperature: float = 1.0
    top_p: float = 0.95
    k: int = 5
    after_top_k: int = 5
    after_top_p: float = 0.95
    tau: float = 0.1
    noise_scale: float = 1.0
    noise_clamp: tuple[float, float] | None = (-1.5, 3.0)
    think_end: str = "</think>"

    # -- evaluation (held-out Pass@k before training, every eval_every steps, at the end) -----
    eval_every: int = 0  # 0: only before and after training (in-between: the training mode)
    eval_samples: int = 32  # samples per problem
    eval_ks: str | None = None  # comma-separated k of Pass@k; None: 1, 4, 16, 32 (<= samples)
    # decoding modes before and after training (comma-separated, from EVAL_MODES); the
    # algorithm's own ("soft" for softgrpo, "discrete" for grpo) is always evaluated
    eval_modes: str = ",".join(EVAL_MODES)
    eval_problems: int | None = None  # evaluate on the first N held-out problems only
    eval_temperature: float | None = None  # None: the rollout temperature
    eval_batch_size: int | None = None  # sequences per rollout; None: prompts x group size

    # -- runtime -----------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": bfloat16 on cuda, float32 on cpu; or float32/bfloat16/float16
    gradient_checkpointing: bool = False
    threads: int | None = None  # torch CPU threads; None: torch's default
    save_every: int = 50  # checkpoint every N steps (and at the end); 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    progress: bool = True  # tqdm bars for rollouts and updates
    min_free_disk_gb: float | None = None  # None: twice the estimated checkpoint size

    # -- the built-in tasks and tiny model (model "tiny", dataset "running-sum" or "mnns") ---
    task_train_size: int = 20000
    task_eval_size: int = 200
    task_steps: int = 3  # running-sum: "+ d" / "- d" operations per problem
    task_max_value: int = 30  # running-sum: the running value stays in [0, max_value]
    task_digits: int = 4  # mnns: digits per problem (3 to 6)
    task_digit_range: tuple[int, int] = (1, 9)  # mnns: the digits' range [low, high]
    tiny_hidden_size: int = 128
    tiny_layers: int = 2
    tiny_heads: int = 4
    warm_start_steps: int = 200
    # "path": one worked solution per problem; "distribution" (mnns only): CoT2's continuous
    # supervision, every thinking step a distribution over the reachable partial sums, fed
    # back as its soft embedding
    warm_start_teacher: str = "path"
    warm_start_skip: float = 0.0  # running-sum: the teacher leaves out a value this often
    warm_start_lr: float = 3e-3
    warm_start_batch_size: int = 64
    # a directory shared by runs: the warm-started tiny model is kept there under a key of
    # every setting it depends on and reused by later runs (None: each run warm-starts)
    warm_start_cache: str | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self._validate()

    def _validate(self) -> None:
        def one_of(name: str, options) -> None:
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {sorted(options)}, got "
                                 f"{getattr(self, name)!r}")

        one_of("algorithm", ALGORITHMS)
        one_of("kl_kind", KL_KINDS)
        one_of("loss_agg", AGG_MODES)
        one_of("multiplex_logprob", MULTIPLEX_LOGPROBS)
        one_of("multiplex_ratio", MULTIPLEX_RATIOS)
        one_of("dtype", ("auto", "float32", "bfloat16", "float16"))
        one_of("warm_start_teacher", TEACHERS)
        self.eval_mode_list()
        self.eval_k_list()
        if self.reward not in ("math", "exact") and ":" not in self.reward:
            raise ValueError(f"reward must be 'math', 'exact' or 'module:function', got "
                             f"{self.reward!r}")
        for name in ("steps", "prompts_per_step", "group_size", "mini_batch_prompts",
                     "micro_batch_size", "ppo_epochs", "max_prompt_length",
                     "max_response_length", "eval_samples", "keep_checkpoints", "log_every",
                     "task_train_size", "task_steps", "tiny_hidden_size", "tiny_layers",
                     "tiny_heads", "warm_start_batch_size"):
            _checks.integer(name, getattr(self, name), 1)
        for name in ("lr_warmup_steps", "eval_every", "save_every", "task_eval_size",
                     "warm_start_steps"):
            _checks.integer(name, getattr(self, name), 0)
        _checks.integer("seed", self.seed, 0, 2**32 - 1)
        for name in ("eval_problems", "eval_batch_size"):
            if getattr(self, name) is not None:
                _checks.integer(name, getattr(self, name), 1)
        for name in ("lr", "warm_start_lr", "grad_clip"):
            _checks.real(name, getattr(self, name), low=0.0, low_open=True)
        for name in ("weight_decay", "kl_coef"):
            _checks.real(name, getattr(self, name), low=0.0)
        _checks.real("warm_start_skip", self.warm_start_skip, low=0.0, high=1.0)
        _checks.likelihood_setting(self.likelihood, self.conditional_weight, self.noise_clamp)
        if self.eval_temperature is not None:
            _checks.real("eval_temperature", self.eval_temperature, low=0.0)
        if self.min_free_disk_gb is not None:
            _checks.real("min_free_disk_gb", self.min_free_disk_gb, low=0.0)
        if self.prompts_per_step % self.mini_batch_prompts:
            raise ValueError(f"prompts_per_step ({self.prompts_per_step}) must be a multiple of "
                             f"mini_batch_prompts ({self.mini_batch_prompts})")
        if self.model == BUILTIN_MODEL and self.dataset not in BUILTIN_TASKS:
            raise ValueError(f"model 'tiny' only knows the built-in tasks {list(BUILTIN_TASKS)}"
                             f"; with dataset {self.dataset!r} pass --model <path or hub id>")
        if (self.dataset in BUILTIN_TASKS and self.task_eval_size == 0
                and self.eval_dataset is None):
            raise ValueError("task_eval_size must be >= 1 for a built-in task (held-out split)")
        if self.warm_start_teacher == "distribution" and self.dataset != "mnns":
            raise ValueError("warm_start_teacher 'distribution' is defined for the mnns task "
                             f"only (dataset {self.dataset!r}); use 'path'")
        if self.warm_start_skip and self.dataset != BUILTIN_TASK:
            raise ValueError(f"warm_start_skip is a running-sum teacher's setting; set it to 0 "
                             f"for dataset {self.dataset!r} (the shipped config 'mnns' is "
                             "set up for that task: --config mnns)")
        _checks.integer("task_digits", self.task_digits, 3, 6)
        low, high = self.task_digit_range
        _checks.integer("task_digit_range[0]", low, 0, 8)
        _checks.integer("task_digit_range[1]", high, low + 1, 9)
        self.rollout_config()  # SoftThinkingConfig validates the rollout settings

    @property
    def mode(self) -> str:
        """The rollout mode of the algorithm: "soft" (softgrpo) or "discrete" (grpo)."""
        return ALGORITHMS[self.algorithm]

    def rollout_config(self, *, mode: str | None = None, temperature: float | None = None,
                       seed: int | None = None) -> SoftThinkingConfig:
        """The SoftThinkingConfig of this run's rollouts (or of an evaluation's)."""
        return SoftThinkingConfig(
            k=self.k, temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p, tau=self.tau, noise_scale=self.noise_scale,
            noise_clamp=self.noise_clamp, after_top_k=self.after_top_k,
            after_top_p=self.after_top_p, think_end=self.think_end,
            max_new_tokens=self.max_response_length,
            max_thinking_tokens=self.max_thinking_tokens,
            seed=self.seed if seed is None else seed, mode=mode or self.mode,
            soft_policy=self.soft_policy, multiplex_top_k=self.multiplex_top_k,
            multiplex_top_p=self.multiplex_top_p, multiplex_weighting=self.multiplex_weighting)

    def eval_mode_list(self) -> list[str]:
        """The decoding modes evaluated before and after training: the algorithm's own
        first, then the others of eval_modes in their order."""
        modes = [m.strip() for m in self.eval_modes.split(",") if m.strip()]
        for m in modes:
            if m not in EVAL_MODES:
                raise ValueError(f"eval_modes must be comma-separated names from "
                                 f"{list(EVAL_MODES)}, got {m!r}")
        return list(dict.fromkeys([self.mode, *modes]))

    def eval_k_list(self) -> list[int]:
        """The k of Pass@k: eval_ks, or those of 1, 4, 16, 32 within eval_samples and
        eval_samples itself."""
        if self.eval_ks is None:
            return sorted({*(k for k in EVAL_KS if k <= self.eval_samples), self.eval_samples})
        try:
            ks = sorted({int(k) for k in self.eval_ks.split(",")})
        except ValueError:
            raise ValueError(f"eval_ks must be comma-separated integers, got "
                             f"{self.eval_ks!r}") from None
        if not ks or ks[0] < 1 or ks[-1] > self.eval_samples:
            raise ValueError(f"every k of eval_ks must lie in [1, eval_samples="
                             f"{self.eval_samples}], got {self.eval_ks!r}")
        return ks

    def eval_config(self, mode: str | None = None) -> SoftThinkingConfig:
        """The rollout settings of an evaluation in decoding ``mode`` (EVAL_MODES, or the
        rollout modes "soft" / "discrete"; None: the algorithm's own): eval_temperature
        ("greedy": 0; "soft-no-noise": noise_scale 0), and a noise seed of its own
        (seed + 1), the same before, during and after training (paired comparisons)."""
        mode = mode or self.mode
        if mode not in EVAL_MODES:
            raise ValueError(f"mode must be one of {list(EVAL_MODES)}, got {mode!r}")
        config = self.rollout_config(mode="soft" if mode.startswith("soft") else "discrete",
                                     temperature=self.eval_temperature,
                                     seed=(self.seed + 1) % 2**32)
        if mode == "soft-no-noise" and config.multiplex:  # no draws: the k most probable
            # tokens of the multiplex filter, mixed by their renormalised probabilities
            return config.replace(soft_policy="gumbel", noise_scale=0.0, tau=1.0,
                                  k=min(config.k, self.multiplex_top_k or config.k),
                                  top_p=self.multiplex_top_p)
        if mode == "soft-no-noise":
            return config.replace(noise_scale=0.0)
        return config.replace(temperature=0.0) if mode == "greedy" else config

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["noise_clamp"] is not None:
            out["noise_clamp"] = list(out["noise_clamp"])
        return out

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def differences(self, other: TrainConfig) -> dict[str, tuple]:
        """{key: (self's value, other's value)} for every key that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(name: str, value: object, tp) -> object:
    """value as the annotated type ``tp``; YAML / command-line text is accepted for numbers,
    booleans and None ("null", "none"). Raises TypeError naming the key."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("null", "none"))
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads "1e-6" as a string
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"{name} must be {_type_name(tp)}, got {value!r}")


def _check_keys(keys, source: str) -> None:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown setting {key!r} in {source}{hint}")


def config_path(name: str) -> Path:
    """A shipped config by name ("default", "mnns", "r1-distill-qwen-1.5b") or a YAML file path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {name!r}")
        return path
    shipped = CONFIG_DIR / f"{name}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"no config named {name!r}; shipped configs: {names}, or a .yaml path")
    return shipped


def load_config(name: str | None = None, overrides: dict[str, object] | None = None, *,
                base: dict[str, object] | None = None) -> TrainConfig:
    """TrainConfig from ``base`` (e.g. a checkpoint's saved settings), else a shipped name or
    YAML path (None: the dataclass defaults), then ``overrides`` (key -> value or
    command-line text) on top. Raises ValueError / TypeError naming the key on unknown keys
    or bad values."""
    values: dict[str, object] = dict(base or {})
    if name is not None:
        path = config_path(name)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a mapping of setting: value")
        _check_keys(loaded, str(path))
        values.update(loaded)
    overrides = dict(overrides or {})
    _check_keys(overrides, "the command line")
    values.update(overrides)
    return TrainConfig(**values)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Command-line settings: ``--set key=value`` (repeatable), ``--key value``,
    ``--key=value``; a bare ``--flag`` means true. Dashes in keys read as underscores.
    Values stay text; TrainConfig converts them by the setting's type."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--set":
            if i + 1 == len(args) or "=" not in args[i + 1]:
                raise ValueError("--set needs key=value")
            key, value = args[i + 1].split("=", 1)
            i += 2
        elif arg.startswith("--") and len(arg) > 2:
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
                i += 1
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 2
            else:
                value, i = "true", i + 1
        else:
            raise ValueError(f"unexpected argument {arg!r} (settings are --key value)")
        out[key.replace("-", "_")] = value
    return out

