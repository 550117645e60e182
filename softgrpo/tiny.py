"""The built-in default's model: a tiny Qwen2 causal LM and a word-level tokenizer, created
locally (no downloads), and the short supervised warm start that teaches it the answer format
"... </think> \\boxed{ answer }" (softgrpo.tasks explains the task).

The warm start is deliberately short: the model comes out right on part of the held-out
problems when sampling, so reinforcement learning has visible room to improve it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from softgrpo import _checks
from softgrpo.tasks import Problem

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def build_tokenizer(words: list[str]):
    """A PreTrainedTokenizerFast over ``words`` plus pad/eos/unk, splitting on whitespace only;
    decode joins tokens with single spaces, so decode(encode(text)) == text for text written
    with single spaces. Padding on the left (as generation wants)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([PAD, EOS, UNK, *words])}
    if len(vocab) != len(words) + 3:
        raise ValueError("words must be distinct and must not contain <pad>, <eos> or <unk>")
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS,
                                   unk_token=UNK, padding_side="left")


def build_model(tokenizer, *, hidden_size: int = 128, layers: int = 2, heads: int = 4,
                seed: int = 0) -> torch.nn.Module:
    """A randomly initialised Qwen2ForCausalLM sized for ``tokenizer`` (fp32, tied embeddings;
    about 0.5M parameters at the defaults). Deterministic given ``seed``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _checks.integer("hidden_size", hidden_size, 8)
    _checks.integer("layers", layers, 1)
    _checks.integer("heads", heads, 1)
    if hidden_size % heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of heads ({heads})")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=128, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _sft_batch(tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt + solution + EOS, and labels that count only the response."""
    rows, labels = [], []
    for prompt_text, solution in pairs:
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        response = tokenizer(solution, add_special_tokens=False)["input_ids"]
        response.append(tokenizer.eos_token_id)
        rows.append(prompt + response)
        labels.append([-100] * len(prompt) + response)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, :len(r)] = torch.tensor(r)
        lab[i, :len(lb)] = torch.tensor(lb)
    return ids, ids != tokenizer.pad_token_id, lab


def warm_start(model: torch.nn.Module, tokenizer, problems: list[Problem], *, steps: int,
               batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
               solution: Callable[[Problem, random.Random], str] | None = None) -> list[float]:
    """Supervised fine-tuning on worked solutions (cross-entropy on the response tokens),
    AdamW with a linear warm-up over the first 10% of steps. Deterministic given ``seed``;
    the global RNG is left untouched. Returns the loss of every step.

    solution(problem, rng) writes the target of a problem each time it is drawn (e.g. an
    imperfect teacher, tasks.running_sum_solution with skip); default problem.solution.

    Raises:
        ValueError: a problem without a solution, or bad steps / batch_size / lr.
    """
    _checks.integer("steps", steps, 0)
    _checks.integer("batch_size", batch_size, 1)
    _checks.real("lr", lr, low=0.0, low_open=True)
    if solution is None:
        if any(p.solution is None for p in problems):
            raise ValueError("warm_start needs problems with a worked solution")
        solution = lambda p, rng: p.solution
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    losses = []
    for step in range(steps):
        batch = rng.sample(problems, batch_size)
        ids, mask, labels = _sft_batch(tokenizer, [(p.prompt, solution(p, rng)) for p in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses
