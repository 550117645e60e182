"""Run by test_verl_rollout.py in a fresh process: verl's own rollout server and agent-loop
worker on CPU. A local Ray cluster runs the "softgrpo_vllm" server (verl's vLLMHttpServer
actor, its AsyncLLM engine and worker process), verl's load balancer and LLMServerClient; an
AgentLoopWorker (verl's class, here in this process) runs the "softgrpo_single_turn" agent
loop on a batch of chat prompts. Checks: the records reach the batch's non_tensor_batch
aligned with verl's responses, and they are the Hugging Face adapter's rollout for the same
prompts, settings and noise-key sequence ids.
Usage: python verl_rollout_check.py CHECKPOINT RECIPE_DIR POLICY; prints OK. POLICY: gumbel
(the recipe's settings) or multiplex (the recipe switched to Multiplex Thinking: K = 3 draws
from rollout.top_k, rollout.top_p 1, a top-k 6 filter whose kept sets travel with the
records, the "filtered" likelihood). CHECKPOINT: conftest's
Llama checkpoint (its tokenizer splits </think>; verl's token builder for model_type qwen2
would expect a Qwen tokenizer)."""

import asyncio
import os
import sys

import numpy as np

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
PROMPTS = ["1 + 2 =", "x = 3 so", "the answer is"]
POLICIES = {"gumbel": [],
            "multiplex": ["+softgrpo.soft_policy=multiplex", "+softgrpo.multiplex_top_k=6",
                          "softgrpo.likelihood=filtered", "actor_rollout_ref.rollout.top_k=3",
                          "actor_rollout_ref.rollout.top_p=1.0"]}


def compose(checkpoint: str, recipe: str, policy: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    overrides = [
        f"actor_rollout_ref.model.path={checkpoint}",
        "data.max_prompt_length=16", "data.max_response_length=12",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.dtype=float32", "actor_rollout_ref.rollout.load_format=auto",
        "actor_rollout_ref.rollout.max_model_len=64",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.1",
        "actor_rollout_ref.rollout.max_num_seqs=8",
        "actor_rollout_ref.rollout.max_num_batched_tokens=64",
        "actor_rollout_ref.rollout.free_cache_engine=False",
        "+actor_rollout_ref.rollout.enable_sleep_mode=False",  # a CUDA feature
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "softgrpo.seed=5", "+softgrpo.max_thinking_tokens=4", *POLICIES[policy],
    ]
    with initialize_config_dir(config_dir=recipe, version_base=None):
        config = hydra_compose(config_name="softgrpo_r1_distill_qwen_1.5b", overrides=overrides)
    with open_dict(config):  # the tiny tokenizer has no chat template of its own
        config.actor_rollout_ref.model.custom_chat_template = TEMPLATE
    return config


async def rollout(config):
    import ray
    from verl import DataProto
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.replica import RolloutMode
    from verl.workers.rollout.router import get_router_handle

    from softgrpo.adapters.verl.rollout import SoftGRPOvLLMHttpServer

    server = ray.remote(SoftGRPOvLLMHttpServer).options(name="softgrpo_vllm_server_0_0").remote(
        config=config.actor_rollout_ref.rollout, model_config=config.actor_rollout_ref.model,
        rollout_mode=RolloutMode.STANDALONE, workers=[], replica_rank=0, node_rank=0,
        gpus_per_node=1, nnodes=1, cuda_visible_devices="")
    await server.launch_server.remote()
    host, port = await server.get_server_address.remote()
    balancer = get_router_handle(servers={f"{host}:{port}": server})
    worker = AgentLoopWorker(config, LLMServerClient(config, balancer))
    messages = np.empty(len(PROMPTS), dtype=object)
    messages[:] = [[{"role": "user", "content": p}] for p in PROMPTS]
    batch = DataProto.from_dict(non_tensors={
        "raw_prompt": messages, "index": np.arange(len(PROMPTS)),
        "uid": np.array([str(i) for i in range(len(PROMPTS))], dtype=object)})
    return await worker.generate_sequences(batch)


def main(checkpoint: str, recipe: str, policy: str) -> None:
    import ray
    import torch
    from hf_models import make_tokenizer
    from transformers import AutoModelForCausalLM

    import softgrpo.adapters.verl as sv
    from softgrpo.adapters import hf
    from softgrpo.adapters.verl.agent_loop import soft_config

    config = compose(checkpoint, recipe, policy)
    env = {"VERL_USE_EXTERNAL_MODULES": "softgrpo.adapters.verl", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": env})
    try:
        out = asyncio.run(rollout(config))
    finally:
        ray.shutdown()

    rollout_cfg = config.actor_rollout_ref.rollout
    soft = soft_config(config.softgrpo, {"top_k": rollout_cfg.top_k, "top_p": rollout_cfg.top_p,
                                         "temperature": rollout_cfg.temperature},
                       rollout_cfg.response_length)
    responses, masks = out.batch["responses"], out.batch["response_mask"]
    ids, perturbed = out.non_tensor_batch[sv.TOPK_IDS], out.non_tensor_batch[sv.PERTURBED]
    kept = out.non_tensor_batch[sv.KEPT]
    assert all(float(t) == soft.tau for t in out.non_tensor_batch[sv.TAU])
    assert set(out.non_tensor_batch[sv.POLICY]) == {soft.soft_policy}
    assert set(out.non_tensor_batch[sv.LIKELIHOOD]) == {config.softgrpo.likelihood}
    for row in range(len(PROMPTS)):
        length = len(ids[row])
        assert ids[row].shape == perturbed[row].shape == (length, soft.k)
        assert kept[row].shape == (length, soft.kept_width)
        assert torch.equal(responses[row, :length], torch.as_tensor(ids[row][:, 0]))
        assert int(masks[row].sum()) <= length and not masks[row, length:].any()

    # the Hugging Face adapter's rollout of the same prompts, settings and sequence ids
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    prompts = out.batch["prompts"]
    prompt_mask = out.batch["attention_mask"][:, :prompts.shape[1]]
    sequence_ids = torch.tensor([int(s) for s in out.non_tensor_batch[sv.SEQUENCE_ID]])
    reference = hf.generate(model, make_tokenizer(split_think_end=True), config=soft, input_ids=prompts,
                            attention_mask=prompt_mask, sequence_ids=sequence_ids)
    assert reference.thinking_mask.any(), "no soft rows: the check would prove nothing"
    for row in range(len(PROMPTS)):
        length = int(reference.response_mask[row].sum())
        assert len(ids[row]) == length, (len(ids[row]), length)
        assert torch.equal(torch.as_tensor(ids[row]), reference.topk_ids[row, :length])
        if soft.kept_width:
            assert torch.equal(torch.as_tensor(kept[row]), reference.kept_ids[row, :length])
        torch.testing.assert_close(torch.as_tensor(perturbed[row]),
                                   reference.perturbed[row, :length], rtol=0, atol=1e-3)
        forced = reference.forced_mask[row, :length]
        assert torch.equal(masks[row, :length].bool(), ~forced)
    print("OK")


if __name__ == "__main__":
    main(*sys.argv[1:])
