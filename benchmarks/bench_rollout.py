"""Rollout throughput of the Hugging Face adapter on a small random Qwen2 model.

ours: softgrpo.adapters.hf.generate, soft thinking (k=5, top-p 0.95, tau 0.1): inputs_embeds
every step, one soft_sample per step, soft input embeddings, the full Rollout record.
eager: the same model, batch and length through plain ``model.generate`` with sampling
(top-k 5, top-p 0.95), the discrete decoding a soft rollout replaces.
Neither can stop early (the tokenizer and model have no EOS), so every call produces
B x L tokens: tokens per second = B * L / time (the shape text gives B * L).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import Case

SHAPES = {  # (batch, new tokens, prompt tokens, hidden, layers, vocab)
    "cuda": [(64, 128, 64, 1024, 8, 32768), (256, 128, 64, 1024, 8, 32768)],
    "cpu": [(8, 32, 16, 256, 4, 4096)],
}


def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "</think>": 1, **{f"w{i}": i for i in range(2, vocab)}}
    core = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>")


def _setup(device: str, batch: int, steps: int, prompt: int, hidden: int, layers: int,
           vocab: int) -> dict[str, Any]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from softgrpo import SoftThinkingConfig

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64,
                         num_key_value_heads=max(1, hidden // 256), max_position_embeddings=1024,
                         pad_token_id=0, bos_token_id=None, eos_token_id=None)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Qwen2ForCausalLM(config).to(device, dtype).eval()
    input_ids = torch.randint(2, vocab, (batch, prompt), device=device)
    lengths = torch.randint(prompt // 2, prompt + 1, (batch,), device=device)
    attention_mask = (torch.arange(prompt, device=device) >= prompt - lengths[:, None]).long()
    return dict(model=model, tokenizer=_tokenizer(vocab), input_ids=input_ids,
                attention_mask=attention_mask,
                config=SoftThinkingConfig(max_new_tokens=steps, seed=1))


def ours(d: dict[str, Any]):
    from softgrpo.adapters.hf import generate

    return generate(d["model"], d["tokenizer"], config=d["config"], input_ids=d["input_ids"],
                    attention_mask=d["attention_mask"])


def eager(d: dict[str, Any]) -> torch.Tensor:
    config = d["config"]
    return d["model"].generate(d["input_ids"], attention_mask=d["attention_mask"],
                               do_sample=True, top_k=config.after_top_k,
                               top_p=config.after_top_p, temperature=config.temperature,
                               max_new_tokens=config.max_new_tokens, pad_token_id=0)


def cases(device: str) -> list[Case]:
    out = []
    for batch, steps, prompt, hidden, layers, vocab in SHAPES[device]:
        shape = (f"B={batch} L={steps} ({batch * steps} tokens) P={prompt} Qwen2 H={hidden} "
                 f"layers={layers} V={vocab}")

        def setup(args=(device, batch, steps, prompt, hidden, layers, vocab)):
            return _setup(*args)

        out.append(Case(op="hf_rollout", shape=shape, setup=setup, ours=ours, eager=eager))
    return out
