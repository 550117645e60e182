"""Atomic training checkpoints.

Layout under ``<output_dir>/checkpoints``::

    step-00000050/model/          the policy (save_pretrained + tokenizer): usable on its own
    step-00000050/trainer.pt      optimizer, scheduler, RNG states, data position, step, config
    latest                        text file naming the newest complete checkpoint

A checkpoint is written into a temporary directory, flushed to disk, then renamed into place;
only then is ``latest`` replaced (again write-then-rename). A crash or a full disk at any
moment leaves the previous complete checkpoint and ``latest`` untouched; leftover temporary
directories are removed by the next save. Older checkpoints beyond ``keep`` are deleted only
after the new one is in place.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

LATEST = "latest"
_TMP_PREFIX = ".tmp-"


def _fsync_tree(path: Path) -> None:
    """Flush every file under path (and the directories) to disk before the rename."""
    for p in sorted(path.rglob("*")) + [path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, as plain tuples, lists, numbers,
    strings and tensors (what torch.load(weights_only=True) reads back)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": str(kind), "key": [int(v) for v in key], "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["key"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(root: str | Path, step: int, model: torch.nn.Module, tokenizer, state: dict,
         keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it; returns its path.

    Args:
        root: the checkpoints directory (created if needed).
        model, tokenizer: saved with save_pretrained into <checkpoint>/model.
        state: everything else (torch.save'd to trainer.pt).
        keep: how many newest checkpoints to keep (>= 1).
    Raises:
        OSError (e.g. disk full): the temporary directory is removed and the previous
        checkpoint and ``latest`` are left as they were.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{_TMP_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{_TMP_PREFIX}{final.name}-"))
    try:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(state, tmp / "trainer.pt")
        _fsync_tree(tmp)
        if final.exists():  # left by a run killed after its rename, before `latest` moved
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(root / LATEST, final.name)
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / "trainer.pt").is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is incomplete or missing")
    return path


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint, a checkpoints directory or a run's
    output_dir (its latest checkpoint)."""
    path = Path(path)
    if (path / "trainer.pt").is_file():
        return path
    for root in (path, path / "checkpoints"):
        if (root / LATEST).is_file():
            return latest(root)
    raise FileNotFoundError(f"no checkpoint found at {str(path)!r}")


def load_state(checkpoint: str | Path) -> dict:
    """The trainer state saved with a checkpoint (optimizer, scheduler, RNG, data, config).

    Read with torch.load(weights_only=True): tensors and plain Python data only, so a
    trainer.pt made by someone else cannot run code when it is loaded.

    Raises:
        ValueError: the file holds anything else (a pickled function or class, e.g. a
            tampered file, or one written by an older softgrpo that stored NumPy arrays);
            nothing in it was run.
    """
    path = Path(checkpoint) / "trainer.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is mostly advice to pass weights_only=False: keep only what it found
        found = [line for line in str(err).splitlines() if "nsupported" in line]
        reason = found[0].strip().rstrip(".") if found else type(err).__name__
        raise ValueError(
            f"refused to load {str(path)!r}: it holds more than tensors and plain data "
            f"({reason}); loading that could run arbitrary code, so nothing in it was run. "
            "The checkpoints softgrpo writes hold nothing else: this file was written by other "
            "code (or by an older softgrpo), or tampered with.") from None


def size_estimate(model: torch.nn.Module, optimizer_slots: int = 2) -> int:
    """Bytes of one checkpoint: the weights plus fp32 optimizer slots per parameter."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    return weights + optimizer_slots * sum(p.numel() * 4 for p in params)


def check_writable(directory: str | Path, need_bytes: int) -> None:
    """Fail before training when directory cannot be written or lacks ``need_bytes`` free.

    Raises:
        PermissionError / OSError: the directory cannot be created or written.
        OSError: too little free space (says how much is free and needed).
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=_TMP_PREFIX):
            pass
    except OSError as err:
        raise PermissionError(f"output directory {str(directory)!r} is not writable: "
                              f"{err.strerror or err}") from err
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise OSError(f"only {free / 2**30:.2f} GiB free under {str(directory)!r}, checkpoints "
                      f"need about {need_bytes / 2**30:.2f} GiB; free space, choose another "
                      "output_dir, or set min_free_disk_gb")
