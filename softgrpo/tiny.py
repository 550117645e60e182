"""The built-in tasks' model: a tiny Qwen2 causal LM and a word-level tokenizer, created
locally (no downloads), and the short supervised warm start that teaches it the answer format
"... </think> \\boxed{ answer }" (softgrpo.tasks explains the tasks). The warm start takes
worked solutions, or per-word target distributions (CoT2's continuous supervision) whose
soft embeddings are fed back as the next inputs.

The warm start is deliberately short: the model comes out right on part of the held-out
problems when sampling, so reinforcement learning has visible room to improve it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from softgrpo import _checks, soft_embedding
from softgrpo.tasks import Problem

# a teacher's target for one problem: a worked solution (text), or one {word: probability}
# per response word (a distribution over single-token words)
Target = str | list[dict[str, float]]

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


def _word_id(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"a target distribution's word must be one known token, got {word!r}")
    return ids[0]


def _steps(tokenizer, target: Target) -> list[list[tuple[int, float]]]:
    """(id, probability) pairs per response position, EOS last."""
    if isinstance(target, str):
        steps = [[(i, 1.0)] for i in tokenizer(target, add_special_tokens=False)["input_ids"]]
    else:
        steps = [[(_word_id(tokenizer, w), float(p)) for w, p in step.items()] for step in target]
    return [*steps, [(tokenizer.eos_token_id, 1.0)]]


def _sft_batch(tokenizer, pairs: list[tuple[str, Target]]) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt + target + EOS as (B, T, K) ids and weights (one-hot rows for
    prompt, text and padding tokens), the attention mask (B, T) and the response positions
    (B, T) bool, where the loss counts."""
    rows = []
    for prompt_text, target in pairs:
        prompt = [[(i, 1.0)] for i in tokenizer(prompt_text, add_special_tokens=False)["input_ids"]]
        rows.append((prompt, _steps(tokenizer, target)))
    width = max(len(p) + len(r) for p, r in rows)
    k = max(len(step) for p, r in rows for step in p + r)
    pad = [(tokenizer.pad_token_id, 1.0)]  # padding: the pad token's own embedding (masked)
    cells = [[step + [(tokenizer.pad_token_id, 0.0)] * (k - len(step))
              for step in p + r + [pad] * (width - len(p) - len(r))] for p, r in rows]
    ids = torch.tensor([[[i for i, _ in step] for step in row] for row in cells])
    weights = torch.tensor([[[w for _, w in step] for step in row] for row in cells])
    positions = torch.arange(width)
    prompts = torch.tensor([len(p) for p, _ in rows])[:, None]
    ends = prompts + torch.tensor([len(r) for _, r in rows])[:, None]
    mask = positions < ends
    response = mask & (positions >= prompts)
    return ids, weights, mask, response


def sft_loss(model: torch.nn.Module, ids: torch.Tensor, weights: torch.Tensor,
             mask: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """The mean over response positions of KL(target || model) = sum_j w_j (log w_j -
    log p(id_j)) (the usual token cross-entropy for one-hot targets), with every position's
    input the soft embedding of its target, sum_j w_j E[id_j] (softgrpo.soft_embedding)."""
    table = model.get_input_embeddings().weight
    inputs = soft_embedding(table, ids, weights)
    logits = model(inputs_embeds=inputs, attention_mask=mask.long()).logits[:, :-1]
    logp = torch.log_softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
    logp = logp.gather(-1, ids[:, 1:])
    target = weights[:, 1:]
    loss = (torch.xlogy(target, target) - target * logp).sum(-1)  # 0 log 0 = 0: empty slots
    return loss[response[:, 1:]].mean()


def warm_start(model: torch.nn.Module, tokenizer, problems: list[Problem], *, steps: int,
               batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
               solution: Callable[[Problem, random.Random], Target] | None = None
               ) -> list[float]:
    """Supervised fine-tuning on teacher targets (:func:`sft_loss` on the response
    positions), AdamW with a linear warm-up over the first 10% of steps. Deterministic given
    ``seed``; the global RNG is left untouched. Returns the loss of every step.

    solution(problem, rng) writes the target of a problem each time it is drawn: a worked
    solution (text; e.g. an imperfect teacher, tasks.running_sum_solution with skip), or one
    {word: probability} per response word (tasks.mnns_targets: CoT2's continuous
    supervision; each position's input is then the soft embedding of its target, so the
    model learns to read mixtures). Default problem.solution. The model's input embedding
    must be a plain table lookup (build_model's is).

    Raises:
        ValueError: a problem without a solution, a target word that is not one known token,
            or bad steps / batch_size / lr.
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
        loss = sft_loss(model, *_sft_batch(tokenizer, [(p.prompt, solution(p, rng))
                                                       for p in batch]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses
