"""Soft-thinking rollouts on a vLLM engine, returned as the HF adapter's Rollout record."""

from __future__ import annotations

import uuid

import torch
import vllm
from vllm.inputs import TokensPrompt

from softgrpo.rollout import Rollout, SoftThinkingConfig

from ..hf.generate import DEFAULT_CONFIG, RolloutRecords
from ..hf.inputs import PromptBatch, prepare_prompts
from .engine import attach
from .processor import sampling_options


def eos_token_ids(llm: vllm.LLM, tokenizer) -> list[int]:
    """tokenizer.eos_token_id and the checkpoint's generation_config eos ids (int or list),
    the ids the HF adapter ends a row on."""
    ids = set() if tokenizer.eos_token_id is None else {int(tokenizer.eos_token_id)}
    extra = llm.llm_engine.model_config.try_get_generation_config().get("eos_token_id")
    if extra is not None:
        ids.update(int(i) for i in ([extra] if isinstance(extra, int) else extra))
    return sorted(ids)


def requests_of(batch: PromptBatch, config: SoftThinkingConfig
              ) -> tuple[list[TokensPrompt], list[vllm.SamplingParams], list[str]]:
    """One greedy request per row: the logits processor leaves one finite logit, the text
    token; EOS handling is ours (ignore_eos, stop on the HF adapter's EOS ids)."""
    run = uuid.uuid4().hex
    prompts, params, tags = [], [], []
    for row, (ids, mask) in enumerate(zip(batch.input_ids, batch.attention_mask.bool())):
        tag = f"{run}-{row}"
        prompts.append(TokensPrompt(prompt_token_ids=ids[mask].tolist()))
        params.append(vllm.SamplingParams(**sampling_options(
            config, int(batch.sequence_ids[row]), batch.think_end, batch.eos_ids, tag)))
        tags.append(tag)
    return prompts, params, tags


def rollout_of(batch: PromptBatch, config: SoftThinkingConfig, tokens: list[list[int]],
               taken: dict[str, dict], tags: list[str], tokenizer) -> Rollout:
    """The Rollout of the requests ``tags`` (one per batch row) from the text tokens vLLM
    returned and the records taken from the worker (RuntimeError if they disagree)."""
    steps = max(len(taken[tag]["token"]) for tag in tags)
    records = RolloutRecords(len(tags), steps, config.k, batch.pad_id, torch.device("cpu"),
                             config.kept_width or None)
    eos = torch.tensor(batch.eos_ids, dtype=torch.int64)
    dtypes = dict(token=torch.int64, ids=torch.int64, perturbed=torch.float32,
                  kept=torch.int64, logprob=torch.float32, soft=torch.bool, forced=torch.bool)
    for row, (tag, returned) in enumerate(zip(tags, tokens)):
        if taken[tag]["token"] != list(returned):
            raise RuntimeError(f"softgrpo: the records of request {tag} do not match the "
                               "tokens vLLM returned")
        got = {name: torch.tensor(taken[tag][name], dtype=dtype) for name, dtype in dtypes.items()}
        n = len(got["token"])
        records.response_ids[row, :n] = got["token"]
        records.topk_ids[row, :n] = got["ids"]
        records.perturbed[row, :n] = got["perturbed"]
        if records.kept_ids is not None:  # the multiplex filter's kept sets
            records.kept_ids[row, :n] = got["kept"]
        records.logprobs[row, :n] = got["logprob"]
        records.response_mask[row, :n] = True
        records.thinking_mask[row, :n] = got["soft"]
        records.forced_mask[row, :n] = got["forced"]
        records.finished[row] = n > 0 and bool(torch.isin(got["token"][-1], eos))
    return records.rollout(steps, batch, tokenizer, config)


def generate(llm: vllm.LLM, tokenizer=None, prompts: list[str] | None = None,
             config: SoftThinkingConfig = DEFAULT_CONFIG, *,
             input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
             sequence_ids: torch.Tensor | None = None, progress: bool = False) -> Rollout:
    """Soft-thinking rollouts of a batch of prompts on a vLLM engine (spec sections 1-3);
    the same arguments and Rollout as softgrpo.adapters.hf.generate.

    Args:
        llm: an engine from :func:`create_engine`, or a ``vllm.LLM`` built with
            :func:`engine_options` (checked once; RuntimeError otherwise).
        tokenizer: the checkpoint's Hugging Face tokenizer (default llm.get_tokenizer()); needs
            a pad token. EOS ids: tokenizer.eos_token_id and the checkpoint's
            generation_config eos_token_id.
        prompts: B strings (tokenized like the HF adapter: special tokens, left padding); or
        input_ids, attention_mask: (B, P) int, left-padded.
        config: the rollout settings. sequence_ids: (B,) distinct noise-key sequences
            (default 0..B-1). progress: vLLM's progress bar.

    Returns:
        A CPU :class:`softgrpo.rollout.Rollout`, (B, L) records with L the longest response.

    Raises:
        TypeError / ValueError before any engine work (as the HF adapter, plus
        max_model_len); RuntimeError for an engine that cannot run soft thinking.
    """
    attach(llm)
    tokenizer = llm.get_tokenizer() if tokenizer is None else tokenizer
    model_config = llm.llm_engine.model_config
    batch = prepare_prompts(
        tokenizer, prompts, config, input_ids, attention_mask, sequence_ids,
        vocab_size=model_config.get_vocab_size(),
        max_length=(model_config.max_model_len, "the engine's max_model_len"),
        eos_ids=eos_token_ids(llm, tokenizer), device="cpu")
    prompts_in, params, tags = requests_of(batch, config)
    try:
        outputs = llm.generate(prompts_in, params, use_tqdm=progress)
    finally:
        taken = llm.collective_rpc("softgrpo_take", args=(tags,))[0]
    missing = [tag for tag in tags if tag not in taken]
    if missing:
        raise RuntimeError(f"softgrpo: no records for {len(missing)} requests; the engine did "
                           "not run them through the soft-thinking logits processor")
    return rollout_of(batch, config, [o.outputs[0].token_ids for o in outputs], taken, tags,
                      tokenizer)
