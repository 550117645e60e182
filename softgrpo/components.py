"""What the trainer and ``softgrpo eval`` build from a TrainConfig: device and precision, the
policy / reference model and tokenizer, the problems, the reward function (with per-sample
failure isolation) and the rollout backend."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import random
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from softgrpo import rewards
from softgrpo.config import BUILTIN_TASKS, TrainConfig
from softgrpo.rollout import RolloutBackend
from softgrpo.tasks import (
    Problem,
    load_problems,
    mnns_solution,
    mnns_targets,
    mnns_task,
    mnns_words,
    prompt_text,
    running_sum_solution,
    running_sum_task,
    running_sum_words,
)

RewardFn = Callable[[str, str], float]

# rollout backends by name: "module:attribute" of a factory(model, tokenizer, progress=bool)
BACKENDS = {"hf": "softgrpo.adapters.hf:HFRolloutBackend",
            "vllm": "softgrpo.adapters.vllm:VLLMRolloutBackend"}


def device_of(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The autocast dtype: "auto" is bfloat16 on CUDA and float32 elsewhere. Trainable
    weights stay float32 (at lr 1e-6 a bfloat16 weight would not move)."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)


def autocast(device: torch.device, dtype: torch.dtype):
    """torch.autocast to ``dtype``, or a no-op context for float32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _import(spec: str, what: str) -> object:
    """The attribute named by "module:attribute" or "path/to/file.py:attribute"."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} {spec!r} must look like 'module:attribute'")
    if module_name.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if loader is None or not Path(module_name).is_file():
            raise ValueError(f"{what} {spec!r}: no such file {module_name!r}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


# ---- models ----------------------------------------------------------------------------------
def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached from here (HF_HUB_OFFLINE, or a TCP
    connection to its endpoint failing within 5 s), or None when it can."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as err:
        return f"{url.hostname}:{port}: {err.strerror or err}"
    return None


def check_model_source(path: str | Path) -> None:
    """Fail fast, with a message that says so, when ``path`` is neither a local model
    directory nor a hub id that can be loaded (instead of transformers' retries and a hub
    error for what was meant as a local directory).

    Raises:
        FileNotFoundError: ``path`` is a file; or no such directory exists and ``path`` is
            not a hub id ("org/name"); or it is one, is not in the local hub cache, and the
            hub cannot be reached (the message says why).
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(path)
    local = Path(text).expanduser()
    if local.is_dir():
        return
    if local.exists():
        raise FileNotFoundError(f"model {text!r} is a file, not a model directory")
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise FileNotFoundError(f"no such local directory: {text!r} (and not a Hugging Face "
                                "hub id, which looks like 'org/name')") from None
    if isinstance(try_to_load_from_cache(text, "config.json"), str):
        return
    reason = _hub_unreachable()
    if reason is not None:
        raise FileNotFoundError(
            f"no such local directory: {text!r}; as a hub id it is not in the local Hugging "
            f"Face cache, and the hub ({constants.ENDPOINT}) cannot be reached ({reason})")


def load_tokenizer(path: str | Path):
    """AutoTokenizer, except for a plain `tokenizers` tokenizer saved by
    PreTrainedTokenizerFast (the tiny model's): AutoTokenizer in transformers 5 would rebuild
    it as the model family's tokenizer class (Qwen2's BPE) and lose its vocabulary rules."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(str(path)) / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text()).get("tokenizer_class") in (
            "TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def load_pretrained(path: str | Path, device: torch.device, *, trainable: bool,
                    dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False):
    """(model, tokenizer) from a local directory or hub id. Trainable models keep float32
    weights; a frozen one (the reference) is stored in ``dtype`` without gradients. A
    tokenizer without a pad token gets its EOS token as pad. Raises FileNotFoundError for a
    path that is neither a local directory nor a reachable hub id (check_model_source)."""
    from transformers import AutoModelForCausalLM

    check_model_source(path)
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32 if trainable else dtype).to(device)
    model.requires_grad_(trainable)
    if trainable and gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train(trainable)
    return model, tokenizer


def tiny_policy(cfg: TrainConfig):
    """(model, tokenizer) of the built-in tiny model, freshly initialised from cfg.seed."""
    from softgrpo.tiny import build_model, build_tokenizer

    words = (mnns_words(cfg.task_digits, cfg.task_digit_range[1]) if cfg.dataset == "mnns"
             else running_sum_words(cfg.task_max_value))
    tokenizer = build_tokenizer(words)
    model = build_model(tokenizer, hidden_size=cfg.tiny_hidden_size, layers=cfg.tiny_layers,
                        heads=cfg.tiny_heads, seed=cfg.seed)
    return model, tokenizer


# ---- problems --------------------------------------------------------------------------------
def problems(cfg: TrainConfig, tokenizer) -> tuple[list[Problem], list[Problem]]:
    """(train, held_out) as the model sees them: the built-in task's split, or the dataset
    files with the chat template applied (when set) and prompts over max_prompt_length tokens
    dropped (the count is reported with a warning)."""
    if cfg.dataset == "mnns":
        train, held_out = mnns_task(cfg.seed, cfg.task_train_size, cfg.task_eval_size,
                                    cfg.task_digits, *cfg.task_digit_range)
    elif cfg.dataset in BUILTIN_TASKS:
        train, held_out = running_sum_task(cfg.seed, cfg.task_train_size, cfg.task_eval_size,
                                           cfg.task_steps, cfg.task_max_value)
    else:
        train = load_problems(cfg.dataset, cfg.prompt_column, cfg.answer_column)
        held_out = []
    if cfg.eval_dataset is not None:
        held_out = load_problems(cfg.eval_dataset, cfg.prompt_column, cfg.answer_column)
    if cfg.eval_problems is not None:
        held_out = held_out[:cfg.eval_problems]
    return _fit(cfg, tokenizer, train, "dataset"), _fit(cfg, tokenizer, held_out, "eval_dataset")


def teacher(cfg: TrainConfig) -> Callable[[Problem, random.Random], str | list[dict]]:
    """The warm start's target of a built-in task's problem, ``fn(problem, rng)``: the
    running-sum solution with cfg.warm_start_skip; for mnns, "path" (one optimal sign
    choice, drawn per use) or "distribution" (the reachable partial sums per step)."""
    if cfg.dataset != "mnns":
        return lambda p, rng: running_sum_solution(p.prompt, rng, cfg.warm_start_skip)
    if cfg.warm_start_teacher == "distribution":
        return lambda p, rng: mnns_targets(p.prompt)
    return lambda p, rng: mnns_solution(p.prompt, rng)


def _fit(cfg: TrainConfig, tokenizer, items: list[Problem], name: str) -> list[Problem]:
    out = []
    for p in items:
        text = prompt_text(p, tokenizer, cfg.chat_template)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= cfg.max_prompt_length:
            out.append(Problem(text, p.answer, p.solution))
    if len(out) < len(items):
        warnings.warn(f"{name}: dropped {len(items) - len(out)} of {len(items)} prompts longer "
                      f"than max_prompt_length={cfg.max_prompt_length} tokens", stacklevel=2)
    if items and not out:
        raise ValueError(f"{name}: every prompt is longer than max_prompt_length="
                         f"{cfg.max_prompt_length} tokens")
    return out


# ---- rewards ---------------------------------------------------------------------------------
def reward_function(name: str) -> RewardFn:
    """"math": softgrpo.rewards.math_reward (last \\boxed{} equal to the reference through
    math-verify); "exact": softgrpo.rewards.exact_match_reward; otherwise "module:function"
    or "file.py:function" naming ``fn(response: str, reference: str) -> float`` (the decoded
    response without special tokens, the dataset's answer as a string; 1.0 counts as solved)."""
    if name == "math":
        return rewards.math_reward
    if name == "exact":
        return rewards.exact_match_reward
    fn = _import(name, "reward")
    if not callable(fn):
        raise TypeError(f"reward {name!r} is not callable")
    return fn


@dataclass
class RewardScorer:
    """Scores responses; a reward function that raises or returns a non-finite value for a
    sample scores that sample 0 and records the failure (the run goes on)."""

    fn: RewardFn
    failures: list[str] = field(default_factory=list)

    def __call__(self, responses: list[str], answers: list[str]) -> torch.Tensor:
        self.failures = []
        scores = []
        for i, (response, answer) in enumerate(zip(responses, answers, strict=True)):
            try:
                score = float(self.fn(response, answer))
                if not math.isfinite(score):
                    raise ValueError(f"returned {score}")
            except Exception as err:  # noqa: BLE001 - a user's reward must not kill the run
                self.failures.append(f"sample {i}: {type(err).__name__}: {err}")
                score = 0.0
            scores.append(score)
        return torch.tensor(scores, dtype=torch.float32)


# ---- rollout backend -------------------------------------------------------------------------
def rollout_backend(name: str, model: torch.nn.Module, tokenizer, *,
                    progress: bool = False) -> RolloutBackend:
    """The rollout engine: "hf" (the policy itself through softgrpo.adapters.hf), "vllm"
    (softgrpo.adapters.vllm, imported only when asked for), or "module:factory" for any
    factory(model, tokenizer, progress=bool) returning a softgrpo.rollout.RolloutBackend."""
    spec = BACKENDS.get(name, name)
    if ":" not in spec:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)} or 'module:factory', "
                         f"got {name!r}")
    try:
        factory = _import(spec, "backend")
    except ImportError as err:
        raise ImportError(f"rollout backend {name!r} needs {err.name or spec}: {err}") from err
    return factory(model, tokenizer, progress=progress)
