"""Run metrics: one JSON line per record in ``<output_dir>/metrics.jsonl`` (deterministic: the
same run on the same machine writes the same file), wall-clock times in ``timing.jsonl``,
TensorBoard scalars when the tensorboard package is installed, the one-line console summary
of a step, and a PNG plot of reward and thinking length against step
(``softgrpo plot <output_dir>``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from softgrpo.rollout import Rollout

METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "timing.jsonl"
PLOT_FILE = "training.png"

# (record key, console label, format) of the one-line step summary
_LINE = (("reward_mean", "reward", ".3f"), ("pass_rate", "pass", ".3f"),
         ("response_length", "resp", ".1f"), ("thinking_length", "think", ".1f"),
         ("kl", "kl", ".2e"), ("approx_kl", "kl_old", ".2e"), ("clip_frac", "clip", ".3f"), ("grad_norm", "gnorm", ".3f"),
         ("step_time", "time", ".2f"))


def thinking_lengths(rollout: Rollout, think_end: list[int]) -> torch.Tensor:
    """(B,) float: response tokens before the first think-end token sequence (all response
    tokens when a row never ends thinking). The same count for soft and discrete rollouts."""
    ids, mask = rollout.response_ids, rollout.response_mask
    lengths = mask.sum(1)
    width = len(think_end)
    if ids.shape[1] < width:
        return lengths.float().cpu()
    windows = ids.unfold(1, width, 1)  # (B, L - width + 1, width)
    pattern = torch.tensor(think_end, dtype=ids.dtype, device=ids.device)
    hit = (windows == pattern).all(-1) & mask[:, width - 1:]
    first = torch.where(hit.any(1), hit.int().argmax(1), lengths)
    return first.float().cpu()


def read(output_dir: str | Path, name: str = METRICS_FILE) -> list[dict]:
    """Every record of a run's metrics.jsonl (or timing.jsonl; empty when there is none)."""
    path = Path(output_dir) / name
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _reopen(output_dir: Path, name: str, start_step: int):
    """``name`` for appending, holding only the records up to ``start_step``."""
    path = output_dir / name
    kept = [r for r in read(output_dir, name) if r.get("step", 0) <= start_step] if start_step \
        else []
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return path.open("a")


class RunLog:
    """Appends records to metrics.jsonl and wall-clock times to timing.jsonl (and both to
    TensorBoard). On resume from ``start_step`` the records of later steps (written by the
    interrupted run after its checkpoint) are dropped, so the files read as one run."""

    def __init__(self, output_dir: str | Path, start_step: int = 0, tensorboard: bool = True):
        self.output_dir = Path(output_dir)
        self.file = _reopen(self.output_dir, METRICS_FILE, start_step)
        self.timing = _reopen(self.output_dir, TIMING_FILE, start_step)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only
                pass
            else:
                self.writer = SummaryWriter(str(self.output_dir / "tensorboard"),
                                            purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, record: dict, kind: str = "train") -> None:
        """Append {"step", "kind", **record}; numbers also go to TensorBoard as kind/key."""
        self._write(self.file, step, record, kind)

    def time(self, step: int, **seconds: float) -> None:
        """Append {"step", "kind": "time", **seconds} to timing.jsonl."""
        self._write(self.timing, step, seconds, "time")

    def _write(self, file, step: int, record: dict, kind: str) -> None:
        file.write(json.dumps({"step": step, "kind": kind, **record}) + "\n")
        file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        self.timing.close()
        if self.writer is not None:
            self.writer.close()


def step_line(step: int, steps: int, record: dict) -> str:
    """The console summary of one step: reward mean, pass rate, response and thinking
    length, KL to the reference (when there is one) and to the rollout policy, clip
    fraction, grad norm and step time."""
    parts = [f"step {step}/{steps}"]
    for key, label, fmt in _LINE:
        if record.get(key) is not None:
            parts.append(f"{label} {record[key]:{fmt}}")
    return " | ".join(parts)


def plot(output_dir: str | Path) -> Path:
    """Draw reward (and held-out Pass@1, one line per decoding mode) and thinking length
    against step into <output_dir>/training.png (written atomically); returns its path.

    Raises:
        FileNotFoundError: the run has no metrics yet. ImportError: matplotlib is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read(output_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        raise FileNotFoundError(f"no metrics in {str(Path(output_dir) / METRICS_FILE)!r}")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot([r["step"] for r in train], [r["reward_mean"] for r in train], label="reward mean")
    for mode in dict.fromkeys(r.get("mode") for r in evals):  # one line per decoding mode
        points = [r for r in evals if r.get("mode") == mode]
        top.plot([r["step"] for r in points], [r["pass@1"] for r in points], "o-",
                 label=f"held-out Pass@1 ({mode})")
    top.set_ylabel("reward")
    top.legend()
    bottom.plot([r["step"] for r in train], [r["thinking_length"] for r in train],
                label="thinking length")
    bottom.plot([r["step"] for r in train], [r["response_length"] for r in train],
                label="response length")
    bottom.set_xlabel("step")
    bottom.set_ylabel("tokens")
    bottom.legend()
    fig.tight_layout()
    out = Path(output_dir) / PLOT_FILE
    tmp = out.with_name(".tmp-" + out.name)
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
