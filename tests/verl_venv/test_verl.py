"""softgrpo.adapters.verl on verl 0.9.1's own entry points, on CPU (run with .venv-verl).

Exercised: plugin loading through VERL_USE_EXTERNAL_MODULES (and the verl.plugins entry point
when installed), the registered "softgrpo" policy loss against verl's "vanilla" loss in every
aggregation mode with verl's global-batch normalisation, and verl's TrainingWorker (the
actor/reference worker class, constructed in-process instead of as a Ray actor) on the
registered "softgrpo" FSDP2 engine: actor log-probs of soft rollouts from the HF adapter
(compared with an independent full-logits computation), and PPO updates through verl's
ppo_loss. Not exercised (needs GPUs / Ray): RayPPOTrainer, agent-loop workers, vLLM/SGLang
rollout servers, multi-rank FSDP.
"""

import math
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("VERL_PLATFORM", "cpu")
pytest.importorskip("verl")

import cpu_platform  # noqa: F401  (registers the "cpu" platform before verl picks one)
import torch.distributed as dist
from hf_models import model_and_tokenizer
from verl import DataProto
from verl.trainer.config import CheckpointConfig
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.utils import tensordict_utils as tu
from verl.workers.config import (
    FSDPActorConfig,
    FSDPEngineConfig,
    FSDPOptimizerConfig,
    HFModelConfig,
    TrainingWorkerConfig,
)
from verl.workers.engine_workers import TrainingWorker
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

import softgrpo.adapters.verl as sv
from softgrpo import soft_logprob
from softgrpo.adapters.hf import generate, policy_logprobs
from softgrpo.adapters.hf.embeddings import InputEmbedder
from softgrpo.adapters.verl.agent_loop import soft_config
from softgrpo.rollout import SoftThinkingConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG = SoftThinkingConfig(k=3, max_new_tokens=6, max_thinking_tokens=3, seed=7, tau=0.5)
PROMPTS = ["1 + 2 =", "x = 3 so", "the answer is", "( 4 )"]


def _plugin_check(env: dict) -> subprocess.CompletedProcess:
    code = ("import verl\n"
            "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
            "from verl.workers.engine import EngineRegistry\n"
            "get_policy_loss_fn('softgrpo')\n"
            "assert 'softgrpo' in EngineRegistry._engines\n")
    env = {**os.environ, "VERL_PLATFORM": "", **env}  # a fresh process: no cpu platform there
    return subprocess.run([sys.executable, "-c", code], check=False, env=env,
                          capture_output=True, text=True, timeout=120)


def test_plugin_loads_through_verl_external_modules():
    result = _plugin_check({"VERL_USE_EXTERNAL_MODULES": "softgrpo.adapters.verl",
                            "VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert result.returncode == 0, result.stderr[-2000:]
    bare = _plugin_check({"VERL_USE_EXTERNAL_MODULES": "", "VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert bare.returncode != 0 and "Unsupported loss mode: softgrpo" in bare.stderr


def test_plugin_loads_through_entry_point():
    from importlib.metadata import entry_points

    if not any(ep.value == "softgrpo.adapters.verl" for ep in entry_points(group="verl.plugins")):
        pytest.skip("softgrpo is installed without its verl.plugins entry point")
    result = _plugin_check({"VERL_USE_EXTERNAL_MODULES": "", "VERL_USE_EXTERNAL_PLUGINS": "auto"})
    assert result.returncode == 0, result.stderr[-2000:]


def _actor_config(**overrides) -> FSDPActorConfig:
    settings = dict(strategy="fsdp2", rollout_n=2, ppo_micro_batch_size_per_gpu=1,
                    clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
                    use_torch_compile=False)
    return FSDPActorConfig(**{**settings, **overrides})


@pytest.mark.parametrize("agg", ["token-mean", "token-sum", "seq-mean-token-sum",
                                 "seq-mean-token-sum-norm", "seq-mean-token-mean"])
@pytest.mark.parametrize("info", [{}, {"dp_size": 2, "batch_num_tokens": 37,
                                       "global_batch_size": 11, "loss_scale_factor": 16}])
def test_policy_loss_equals_verl_vanilla(agg, info):
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(5, 8, generator=g, dtype=torch.float64) * 3
    new = (old + torch.randn(5, 8, generator=g, dtype=torch.float64) * 0.4).requires_grad_()
    adv = torch.randn(5, 8, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 8, generator=g) > 0.3
    mask[2] = False  # an empty row
    config = _actor_config(loss_agg_mode=agg)
    config.global_batch_info.update(info)
    results = []
    for mode in ("softgrpo", "vanilla"):
        loss, metrics = get_policy_loss_fn(mode)(old_log_prob=old, log_prob=new, advantages=adv,
                                                 response_mask=mask, loss_agg_mode=agg,
                                                 config=config)
        (grad,) = torch.autograd.grad(loss, new)
        results.append((loss, grad, metrics))
    (loss, grad, ours), (ref_loss, ref_grad, theirs) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert loss.item() != 0.0
    for key in ("actor/pg_clipfrac", "actor/pg_clipfrac_lower"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6)  # verl rounds to fp32


def test_policy_loss_refuses_rollout_weights():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="rollout_correction"):
        get_policy_loss_fn("softgrpo")(old_log_prob=x, log_prob=x, advantages=x,
                                       response_mask=x > -1, config=_actor_config(),
                                       rollout_is_weights=torch.ones(2, 3))


# ---- the actor engine -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def process_group():
    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                          WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("gloo", rank=0, world_size=1)
    yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tokenizer = model_and_tokenizer("qwen2", hidden=32)
    path = tmp_path_factory.mktemp("qwen2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    rollout = generate(model, tokenizer, PROMPTS, CONFIG)
    return model, tokenizer, path, rollout


def _worker(path, **engine) -> TrainingWorker:
    model_config = HFModelConfig(path=str(path), use_remove_padding=True,
                                 enable_gradient_checkpointing=False,
                                 override_config={"attn_implementation": "eager"})
    engine_config = FSDPEngineConfig(
        strategy="fsdp2", use_torch_compile=False, use_dynamic_bsz=False,
        infer_micro_batch_size_per_gpu=1, micro_batch_size_per_gpu=1,
        mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        **engine)
    worker = TrainingWorker(TrainingWorkerConfig(
        model_type=sv.MODEL_TYPE, model_config=model_config, engine_config=engine_config,
        optimizer_config=FSDPOptimizerConfig(lr=3e-2, total_training_steps=10, clip_grad=1.0),
        checkpoint_config=CheckpointConfig()))
    worker.reset()
    return worker


def _pad(rows: list[list[int]], side: str) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, r in enumerate(rows):
        if side == "left":
            out[i, width - len(r):] = torch.tensor(r)
        else:
            out[i, :len(r)] = torch.tensor(r)
    return out


def _batch(outputs, temperature: float = 1.0) -> DataProto:
    """A DataProto laid out as verl's agent-loop workers lay out AgentLoopOutputs."""
    prompts = _pad([o.prompt_ids for o in outputs], "left")
    responses = _pad([o.response_ids for o in outputs], "right")
    attention = torch.cat([_pad([[1] * len(o.prompt_ids) for o in outputs], "left"),
                           _pad([[1] * len(o.response_ids) for o in outputs], "right")], 1)
    non_tensors = {}
    for key in sv.KEYS:
        column = np.empty(len(outputs), dtype=object)
        column[:] = [o.extra_fields[key] for o in outputs]
        non_tensors[key] = column
    return DataProto.from_dict(
        tensors=dict(prompts=prompts, responses=responses, input_ids=torch.cat([prompts, responses], 1),
                     response_mask=_pad([o.response_mask for o in outputs], "right"),
                     attention_mask=attention,
                     position_ids=(attention.cumsum(1) - 1).clamp(min=0)),
        non_tensors=non_tensors, meta_info={"temperature": temperature})


def _actor_log_probs(worker, batch: DataProto) -> torch.Tensor:
    td = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=True, compute_loss=False)
    out = worker.infer_batch(td)
    entropy = no_padding_2_padding(tu.get(out, "entropy"), td)
    # not computed (it would need the full logits): NaN at every response position
    assert torch.isnan(entropy[batch.batch["response_mask"].bool()]).all()
    return no_padding_2_padding(tu.get(out, "log_probs"), td)


def _reference_log_probs(model, rollout) -> torch.Tensor:
    """Spec 4 with full logits: HF forward on the rebuilt embeddings, then soft_logprob."""
    prompt = rollout.prompt_ids.shape[1]
    prompt_records = torch.zeros(*rollout.prompt_ids.shape, CONFIG.k, dtype=torch.int64)
    prompt_records[..., 0] = rollout.prompt_ids
    ids = torch.cat([prompt_records, rollout.topk_ids], 1)
    perturbed = torch.cat([torch.zeros(prompt_records.shape), rollout.perturbed], 1)
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], 1).long()
    with torch.no_grad():
        embeds = InputEmbedder(model).records(ids, perturbed, CONFIG.tau)
        logits = model(inputs_embeds=embeds, attention_mask=mask,
                       position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        lp = soft_logprob(logits[:, prompt - 1:-1], rollout.topk_ids, rollout.perturbed,
                          temperature=CONFIG.temperature)
    return lp * rollout.response_mask


def test_actor_log_probs_match_full_logits(process_group, tiny):
    model, _, path, rollout = tiny
    assert rollout.thinking_mask.any() and (~rollout.thinking_mask & rollout.response_mask).any()
    worker = _worker(path)
    outputs = [sv.agent_loop_output(rollout, row) for row in range(len(PROMPTS))]
    actor = _actor_log_probs(worker, _batch(outputs))
    reference = _reference_log_probs(model, rollout)
    width = actor.shape[1]
    torch.testing.assert_close(actor, reference[:, :width], rtol=1e-5, atol=1e-5)

    # the same tokens as discrete records: ordinary token log-probs, different from the soft
    discrete = [sv.agent_loop_output(rollout, row) for row in range(len(PROMPTS))]
    for out in discrete:
        ids = out.extra_fields[sv.TOPK_IDS].copy()
        ids[:, 1:] = 0
        out.extra_fields[sv.TOPK_IDS] = ids
    plain = _actor_log_probs(worker, _batch(discrete))
    with torch.no_grad():
        logits = model(input_ids=torch.cat([rollout.prompt_ids, rollout.response_ids], 1),
                       attention_mask=torch.cat([rollout.prompt_mask, rollout.response_mask],
                                                1).long()).logits
    prompt = rollout.prompt_ids.shape[1]
    token_lp = torch.log_softmax(logits[:, prompt - 1:-1], -1).gather(
        -1, rollout.response_ids[..., None]).squeeze(-1) * rollout.response_mask
    torch.testing.assert_close(plain, token_lp[:, :width], rtol=1e-5, atol=1e-5)
    soft = rollout.thinking_mask[:, :width]
    assert (plain[soft] - actor[soft]).abs().min() > 1e-3


@pytest.mark.parametrize("likelihood, weight", [("exact", 0.0), ("token", 0.3)])
def test_actor_scores_with_the_records_likelihood(process_group, tiny, likelihood, weight):
    """An unclamped rollout with cut slots, records carrying likelihood and weight: the actor
    gives the HF adapter's policy_logprobs under that likelihood."""
    model, tokenizer, path, _ = tiny
    rollout = generate(model, tokenizer, PROMPTS, CONFIG.replace(noise_clamp=None, top_p=0.5))
    assert (rollout.perturbed == -math.inf).any()
    outputs = [sv.agent_loop_output(rollout, row, likelihood=likelihood,
                                    conditional_weight=weight) for row in range(len(PROMPTS))]
    actor = _actor_log_probs(_worker(path), _batch(outputs))
    with torch.no_grad():
        want = policy_logprobs(model, rollout, likelihood=likelihood, conditional_weight=weight)
    torch.testing.assert_close(actor, want[:, :actor.shape[1]], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="set noise_clamp to None"):
        sv.agent_loop_output(generate(model, tokenizer, PROMPTS[:1], CONFIG), 0,
                             likelihood=likelihood)


def test_actor_rejects_misaligned_records_and_temperature(process_group, tiny):
    _, _, path, rollout = tiny
    worker = _worker(path)
    outputs = [sv.agent_loop_output(rollout, row) for row in range(len(PROMPTS))]
    with pytest.raises(ValueError, match="temperature"):
        _actor_log_probs(worker, _batch(outputs, temperature=0.7))
    shifted = outputs[0].extra_fields[sv.TOPK_IDS]
    outputs[0].extra_fields[sv.TOPK_IDS] = np.roll(shifted, 1, axis=0)
    with pytest.raises(ValueError, match="misaligned"):
        _actor_log_probs(worker, _batch(outputs))


@pytest.mark.parametrize("policy", ["gumbel", "multiplex"])
def test_ppo_update_through_verl_loss(process_group, tiny, policy):
    model, tokenizer, path, rollout = tiny
    if policy == "multiplex":  # scored by the steps' joint log-probs
        rollout = generate(model, tokenizer, PROMPTS, MULTIPLEX["filtered"])
    worker = _worker(path)
    config = _actor_config(policy_loss={"loss_mode": sv.LOSS_MODE}, use_kl_loss=False,
                           ppo_mini_batch_size=len(PROMPTS))
    worker.set_loss_fn(partial(ppo_loss, config=config))
    batch = _batch([sv.agent_loop_output(rollout, row) for row in range(len(PROMPTS))])
    old = _actor_log_probs(worker, batch)
    before = [p.detach().full_tensor().clone() for p in worker.engine.module.parameters()]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    batch.batch["old_log_probs"] = old
    batch.batch["advantages"] = (rewards - rewards.mean())[:, None].expand_as(old).clone()
    losses = []
    for _ in range(2):
        td = left_right_2_no_padding(batch.to_tensordict())
        tu.assign_non_tensor(td, global_batch_size=len(PROMPTS), mini_batch_size=len(PROMPTS),
                             epochs=1, seed=1, dataloader_kwargs={"shuffle": False},
                             calculate_entropy=False, compute_loss=True)
        metrics = tu.get(worker.train_mini_batch(td), "metrics")
        losses.append(metrics["loss"])
        assert all(np.isfinite(np.ravel(metrics["grad_norm"])))
        assert "actor/softgrpo/approx_kl" in metrics
    assert all(np.isfinite(np.ravel(losses)))
    after = [p.detach().full_tensor() for p in worker.engine.module.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    moved = _actor_log_probs(worker, batch)
    assert (moved - old).abs().max() > 1e-4


def test_recipe_config_composes_with_verl_defaults():
    from hydra import compose, initialize_config_dir
    from verl.trainer.config import AlgoConfig
    from verl.utils.config import omega_conf_to_dataclass

    folder = REPO / "adapters" / "verl" / "configs"
    with initialize_config_dir(config_dir=str(folder), version_base=None):
        cfg = compose(config_name="softgrpo_r1_distill_qwen_1.5b")
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    algorithm = omega_conf_to_dataclass(cfg.algorithm, dataclass_type=AlgoConfig)
    assert cfg.actor_rollout_ref.model.model_type == sv.MODEL_TYPE
    assert actor.policy_loss.loss_mode == sv.LOSS_MODE
    assert algorithm.adv_estimator == "grpo"
    # spec section 6: 64 prompts x 8 samples, mini-batch 32 prompts, lr 1e-6, KL 0.001, ...
    assert (cfg.data.train_batch_size, actor.rollout_n, actor.ppo_mini_batch_size) == (64, 8, 32)
    assert (actor.optim.lr, actor.optim.weight_decay, actor.kl_loss_coef) == (1e-6, 0.01, 0.001)
    assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (1024, 8192)
    rollout = cfg.actor_rollout_ref.rollout
    assert (rollout.name, rollout.agent.default_agent_loop) == (sv.ROLLOUT_NAME, sv.AGENT_LOOP)
    assert (rollout.temperature, rollout.top_k, rollout.top_p) == (1.0, 5, 0.95)
    # the agent loop's settings: verl's sampling parameters plus the softgrpo section
    config = soft_config(cfg.softgrpo, {"top_k": rollout.top_k, "top_p": rollout.top_p,
                                        "temperature": rollout.temperature},
                         rollout.response_length)
    assert (config.k, config.tau, config.top_p, config.max_new_tokens) == (5, 0.1, 0.95, 8192)
    assert config.noise_clamp == (-1.5, 3.0) and config.noise_scale == 1.0


def test_agent_loop_settings_are_checked():
    with pytest.raises(ValueError, match="rollout.top_k"):
        soft_config({}, {"top_k": -1, "top_p": 1.0, "temperature": 1.0}, 16)
    with pytest.raises(ValueError, match="come from verl"):
        soft_config({"k": 5}, {"top_k": 5, "top_p": 1.0, "temperature": 1.0}, 16)
    with pytest.raises(ValueError, match="softgrpo section"):
        soft_config({"taus": 0.1}, {"top_k": 5, "top_p": 1.0, "temperature": 1.0}, 16)


def test_rollout_name_is_registered_with_verl():
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    assert sv.ROLLOUT_NAME in RolloutReplicaRegistry._registry
    # the training workers sync weights through verl's own vLLM adapter
    assert _ROLLOUT_REGISTRY[(sv.ROLLOUT_NAME, "async")] == _ROLLOUT_REGISTRY[("vllm", "async")]

    assert _agent_loop_registry[sv.AGENT_LOOP]["_target_"].endswith("SoftThinkingAgentLoop")


# ---- Multiplex Thinking records (spec 10) -----------------------------------------------------
MULTIPLEX = {"release": CONFIG.replace(soft_policy="multiplex", k=3),
             "filtered": CONFIG.replace(soft_policy="multiplex", k=2, multiplex_top_k=5,
                                        multiplex_top_p=0.9, multiplex_weighting="uniform")}


@pytest.mark.parametrize("name", MULTIPLEX)
@pytest.mark.parametrize("likelihood", ["filtered", "full"])
def test_actor_scores_multiplex_records_by_their_joint_log_prob(process_group, tiny, name,
                                                                likelihood):
    """The actor's log-prob of a multiplex step is the sum of its draws' log-probs, as the HF
    adapter computes them (kept sets travel with the records)."""
    model, tokenizer, path, _ = tiny
    rollout = generate(model, tokenizer, PROMPTS, MULTIPLEX[name])
    assert rollout.thinking_mask.any()
    outputs = [sv.agent_loop_output(rollout, row, likelihood=likelihood)
               for row in range(len(PROMPTS))]
    actor = _actor_log_probs(_worker(path), _batch(outputs))
    with torch.no_grad():
        want = policy_logprobs(model, rollout, multiplex_logprob=likelihood).sum(-1)
    torch.testing.assert_close(actor, want[:, :actor.shape[1]], rtol=1e-5, atol=1e-5)


def test_multiplex_settings_are_checked(tiny):
    model, tokenizer, _, _ = tiny
    rollout = generate(model, tokenizer, PROMPTS[:1], MULTIPLEX["release"])
    with pytest.raises(ValueError, match="filtered"):
        sv.agent_loop_output(rollout, 0, likelihood="release")
    # the policy's default likelihood, with or without an explicit one
    assert sv.record_fields(rollout.topk_ids[0], rollout.perturbed[0], rollout.config)[
        sv.LIKELIHOOD] == "filtered"
    # the softgrpo_vllm server serves multiplex requests: K from rollout.top_k, the filter
    # from the section (end to end in tests/verl_vllm)
    section = {"soft_policy": "multiplex", "multiplex_top_k": 4}
    config = soft_config(section, {"top_k": 3, "top_p": 1.0, "temperature": 1.0}, 16)
    assert config.multiplex and config.k == 3 and config.kept_width == 4
    with pytest.raises(ValueError, match="multiplex_top_p"):
        soft_config(section, {"top_k": 3, "top_p": 0.9, "temperature": 1.0}, 16)
