"""Soft-thinking rollouts with a Hugging Face causal LM (spec sections 1-3).

One loop over response positions: a KV cache (DynamicCache), the model fed ``inputs_embeds``
every step, and one softgrpo.soft_sample call per step for all live rows. Rows think (soft
rows) until their text tokens end with the full token sequence of config.think_end; that
step is stored as a discrete row (to_discrete) and later steps are ordinary samples with the
after-thinking filter. Finished rows (EOS) are dropped from the batch and the cache, so they
do no more work. Noise: row of sequence s at response position t uses
seed = noise_key(config.seed, s), offset = t, so a rollout replays exactly and a row does not
depend on the batch it ran in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from softgrpo.ops.sampling import SoftSample
from softgrpo.rollout import Rollout, SoftThinkingConfig, ThinkingPhase

from .embeddings import InputEmbedder
from .inputs import PromptBatch, output_vocab_size, prepare

DEFAULT_CONFIG = SoftThinkingConfig()  # the published runs' settings (spec section 6)


@dataclass
class RolloutTrace:
    """Debug record of a rollout: pass ``trace=RolloutTrace()`` to :func:`generate`.

    inputs (B, P+L, H): the input embeddings fed to the model (the prompt prefill, then each
    generated token's input; zeros where nothing was fed, i.e. a row's last token and after).
    fed (B, P+L) bool: where inputs holds a fed embedding. logits (B, L, V) fp32: the
    next-token logits each step sampled from (zeros after a row ended). Costs B*L*V floats.
    """

    inputs: torch.Tensor | None = None
    fed: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def start(self, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, steps: int,
              vocab: int) -> None:
        rows, prompt, hidden = prompt_embeds.shape
        self.inputs = prompt_embeds.new_zeros(rows, prompt + steps, hidden)
        self.inputs[:, :prompt] = prompt_embeds
        self.fed = torch.zeros(rows, prompt + steps, dtype=torch.bool, device=prompt_mask.device)
        self.fed[:, :prompt] = prompt_mask.bool()
        self.logits = torch.zeros(rows, steps, vocab, device=prompt_embeds.device)

    def trim(self, prompt: int, steps: int) -> None:
        self.inputs, self.fed = self.inputs[:, :prompt + steps], self.fed[:, :prompt + steps]
        self.logits = self.logits[:, :steps]


class RolloutRecords:
    """The Rollout's per-position buffers, written row-wise for the live rows each step."""

    def __init__(self, rows: int, steps: int, k: int, pad_id: int, device: torch.device,
                 kept: int | None = None):
        self.response_ids = torch.full((rows, steps), pad_id, dtype=torch.int64, device=device)
        # the multiplex filter's kept sets (kept = its top-k width), -1 where none
        self.kept_ids = None if kept is None else torch.full((rows, steps, kept), -1,
                                                             dtype=torch.int64, device=device)
        self.topk_ids = torch.zeros(rows, steps, k, dtype=torch.int64, device=device)
        self.perturbed = torch.zeros(rows, steps, k, device=device)
        self.logprobs = torch.zeros(rows, steps, device=device)
        flags = dict(dtype=torch.bool, device=device)
        self.response_mask = torch.zeros(rows, steps, **flags)
        self.thinking_mask = torch.zeros(rows, steps, **flags)
        self.forced_mask = torch.zeros(rows, steps, **flags)
        self.finished = torch.zeros(rows, **flags)

    def write(self, live: torch.Tensor, t: int, sample: SoftSample, soft: torch.Tensor,
              forced: torch.Tensor, done: torch.Tensor,
              kept: torch.Tensor | None = None) -> None:
        self.response_ids[live, t] = sample.token
        if self.kept_ids is not None:
            self.kept_ids[live, t] = kept
        self.topk_ids[live, t] = sample.ids
        self.perturbed[live, t] = sample.perturbed
        self.logprobs[live, t] = sample.logprob
        self.response_mask[live, t] = True
        self.thinking_mask[live, t] = soft
        self.forced_mask[live, t] = forced
        self.finished[live] = done

    def rollout(self, steps: int, batch: PromptBatch, tokenizer,
                config: SoftThinkingConfig) -> Rollout:
        cut = {name: getattr(self, name)[:, :steps] for name in (
            "response_ids", "topk_ids", "perturbed", "logprobs", "response_mask",
            "thinking_mask", "forced_mask")}
        texts = tokenizer.batch_decode(
            [ids[mask].tolist() for ids, mask in zip(cut["response_ids"], cut["response_mask"])],
            skip_special_tokens=True)
        prompt_mask = batch.attention_mask.bool()
        kept = None if self.kept_ids is None else self.kept_ids[:, :steps]
        return Rollout(prompt_ids=batch.input_ids.masked_fill(~prompt_mask, batch.pad_id),
                       prompt_mask=prompt_mask, finished=self.finished,
                       sequence_ids=batch.sequence_ids.to(self.finished.device), texts=texts,
                       config=config, kept_ids=kept, **cut)


def _run(model: torch.nn.Module, embedder: InputEmbedder, batch: PromptBatch,
         config: SoftThinkingConfig, progress: bool, trace: RolloutTrace | None
         ) -> tuple[RolloutRecords, int]:
    rows, prompt = batch.input_ids.shape
    device = batch.input_ids.device
    records = RolloutRecords(rows, config.max_new_tokens, config.k, batch.pad_id, device,
                             config.kept_width or None)
    state = ThinkingPhase(batch.think_end, rows, config, device)
    eos = torch.tensor(batch.eos_ids, dtype=torch.int64, device=device)
    live = torch.arange(rows, device=device)
    mask = batch.attention_mask
    embeds = embedder.tokens(batch.input_ids)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    next_position = mask.sum(-1, keepdim=True)
    cache = DynamicCache(config=model.config)
    if trace is not None:
        trace.start(embeds, mask, config.max_new_tokens, output_vocab_size(model))
    with tqdm(total=config.max_new_tokens, disable=not progress, desc="soft rollout") as bar:
        for t in range(config.max_new_tokens):
            logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                           past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            sample, soft, forced = state.step(logits, batch.keys[live], live, t)
            done = torch.isin(sample.token, eos)
            records.write(live, t, sample, soft, forced, done, state.kept)
            if trace is not None:
                trace.logits[live, t] = logits.float()
            bar.update(1)
            keep = (~done).nonzero().squeeze(1)
            if t + 1 == config.max_new_tokens or keep.numel() == 0:
                break
            if keep.numel() < live.numel():  # drop finished rows from the batch and the cache
                live, mask, next_position = live[keep], mask[keep], next_position[keep]
                cache.batch_select_indices(keep)
            embeds = embedder.records_of(sample.ids[keep], sample.perturbed[keep], config)
            embeds = embeds[:, None]
            if trace is not None:
                trace.inputs[live, prompt + t] = embeds[:, 0]
                trace.fed[live, prompt + t] = True
            mask = torch.cat([mask, mask.new_ones(live.numel(), 1)], dim=1)
            positions, next_position = next_position, next_position + 1
    if trace is not None:
        trace.trim(prompt, t + 1)
    return records, t + 1


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompts: list[str] | None = None,
             config: SoftThinkingConfig = DEFAULT_CONFIG, *,
             input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
             sequence_ids: torch.Tensor | None = None, progress: bool = False,
             trace: RolloutTrace | None = None) -> Rollout:
    """Soft-thinking rollouts of a batch of prompts (spec sections 1-3).

    Args:
        model: a Hugging Face causal LM (transformers 5) whose forward accepts inputs_embeds,
            a DynamicCache and logits_to_keep. Run in eval mode (restored afterwards).
        tokenizer: its tokenizer; needs a pad token. EOS ids: tokenizer.eos_token_id and
            model.generation_config.eos_token_id.
        prompts: B strings, tokenized with left padding; or instead
        input_ids, attention_mask: (B, P) int, left-padded (mask default all ones).
        config: the rollout settings (k, temperature, top_p, tau, noise, after-thinking filter,
            think_end, max_new_tokens, max_thinking_tokens, seed, mode).
        sequence_ids: (B,) int64 noise-key sequences (default 0..B-1); the trainer passes
            global ids so that a replay is exact.
        progress: show a tqdm progress bar over response positions.
        trace: a :class:`RolloutTrace` to fill with the fed embeddings and step logits (tests).

    Returns:
        A :class:`softgrpo.rollout.Rollout` on the model's device: (B, L) records with
        L = the longest response, texts decoded without special tokens.

    Raises:
        TypeError / ValueError before any model work, see :func:`inputs.prepare_prompts`;
        ValueError
        for an input-embedding module whose output is not a scaled row of its table.
    """
    batch = prepare(model, tokenizer, prompts, config, input_ids, attention_mask, sequence_ids)
    embedder = InputEmbedder(model)
    was_training = model.training
    model.eval()  # dropout off; in train mode gradient checkpointing would also disable the cache
    try:
        records, steps = _run(model, embedder, batch, config, progress, trace)
    finally:
        model.train(was_training)
    return records.rollout(steps, batch, tokenizer, config)
