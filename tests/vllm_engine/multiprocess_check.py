"""Run by test_multiprocess.py in a fresh process (vLLM caches its environment once an
in-process engine ran): an engine in vLLM's own engine-core and worker processes
(create_engine(in_process=False)), so requests, records and weights cross process
boundaries. Usage: python multiprocess_check.py CHECKPOINT OTHER_CHECKPOINT; prints OK."""

import sys


def main(checkpoint: str, other_checkpoint: str) -> None:
    from hf_models import make_tokenizer
    from transformers import AutoModelForCausalLM
    from vllm_helpers import assert_same_rollout

    from softgrpo.adapters import hf
    from softgrpo.adapters import vllm as sv
    from softgrpo.rollout import SoftThinkingConfig

    prompts = ["1 + 2 =", "x y", "the answer is"]
    llm = sv.create_engine(checkpoint, in_process=False, dtype="float32", max_model_len=64,
                           kv_cache_memory_bytes=2**21)
    tokenizer = make_tokenizer()  # the checkpoints' tokenizer (conftest.checkpoints)
    config = SoftThinkingConfig(max_new_tokens=12, seed=1)
    for path in (checkpoint, other_checkpoint):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        if path != checkpoint:
            sv.load_weights(llm, model)
        assert_same_rollout(sv.generate(llm, tokenizer, prompts, config),
                            hf.generate(model, tokenizer, prompts, config), atol=1e-2)
    print("OK")


if __name__ == "__main__":
    main(*sys.argv[1:])
