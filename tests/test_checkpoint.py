"""Atomic checkpoints: layout, latest pointer, pruning, a failing write, pre-flight checks."""

import random

import numpy as np
import pytest
import torch

from softgrpo import checkpoint
from softgrpo.tiny import build_model, build_tokenizer


class _DiskFull:
    """Pickling this raises OSError like a full disk would, in the middle of torch.save."""

    def __reduce__(self):
        raise OSError(28, "No space left on device")


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer(["a", "b", "</think>"])
    return build_model(tokenizer, hidden_size=16, layers=1, heads=2), tokenizer


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model" / "model.safetensors"))


def test_save_latest_resolve_and_prune(tmp_path, tiny):
    model, tokenizer = tiny
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        path = checkpoint.save(root, step, model, tokenizer, {"step": step}, keep=2)
        assert path.name == f"step-{step:08d}"
    assert sorted(p.name for p in root.iterdir()) == [
        "latest", "step-00000002", "step-00000003"]
    assert checkpoint.latest(root) == path
    assert checkpoint.resolve(tmp_path) == path  # a run's output_dir
    assert checkpoint.resolve(root) == path
    assert checkpoint.resolve(path) == path
    assert checkpoint.load_state(path) == {"step": 3}
    saved = _weights(path)
    for name, value in model.state_dict().items():
        if name in saved:
            assert torch.equal(saved[name], value)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.resolve(tmp_path / "nothing")


def test_failed_save_leaves_the_last_good_checkpoint(tmp_path, tiny):
    model, tokenizer = tiny
    root = tmp_path / "checkpoints"
    good = checkpoint.save(root, 1, model, tokenizer, {"step": 1})
    before = _weights(good)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    try:
        with pytest.raises(OSError, match="No space left"):
            checkpoint.save(root, 2, model, tokenizer, {"step": 2, "blob": _DiskFull()})
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1.0)
    assert checkpoint.latest(root) == good
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001"]  # no temp left
    after = _weights(good)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert checkpoint.load_state(good) == {"step": 1}


def test_stale_temporary_directories_are_cleaned(tmp_path, tiny):
    model, tokenizer = tiny
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000005-x").mkdir(parents=True)
    (root / ".tmp-step-00000005-x" / "partial.bin").write_bytes(b"\0" * 10)
    checkpoint.save(root, 6, model, tokenizer, {})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000006"]


def test_latest_pointing_to_an_incomplete_checkpoint_is_an_error(tmp_path):
    (tmp_path / "latest").write_text("step-00000009")
    with pytest.raises(FileNotFoundError, match="incomplete or missing"):
        checkpoint.latest(tmp_path)


def test_preflight_checks(tmp_path, tiny):
    checkpoint.check_writable(tmp_path / "new" / "dir", 1)
    assert (tmp_path / "new" / "dir").is_dir() and not any((tmp_path / "new" / "dir").iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        checkpoint.check_writable(blocker / "sub", 1)
    with pytest.raises(OSError, match="GiB free"):
        checkpoint.check_writable(tmp_path, 2**62)
    model, _ = tiny
    params = sum(p.numel() for p in model.parameters())
    assert checkpoint.size_estimate(model) == 3 * 4 * params


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    checkpoint.set_rng_state(state)
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


class _Payload:
    """Unpickling this calls os.mkdir(path): code a tampered trainer.pt would run on load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return os.mkdir, (self.path,)


def test_rng_state_is_plain_data(tmp_path):
    """Every RNG state (NumPy's included) loads with torch.load(weights_only=True)."""
    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    state = torch.load(tmp_path / "rng.pt", weights_only=True)
    np.random.rand(5)
    checkpoint.set_rng_state(state)
    expected = np.random.rand(3)
    checkpoint.set_rng_state(state)
    assert np.array_equal(np.random.rand(3), expected)


def test_a_trainer_state_carrying_code_is_refused_and_nothing_runs(tmp_path, tiny, capsys):
    from softgrpo.cli import main

    model, tokenizer = tiny
    marker = tmp_path / "payload-ran"
    torch.save({"x": _Payload(marker)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)  # the payload is live code ...
    assert marker.is_dir()
    marker.rmdir()

    run = tmp_path / "run"
    path = checkpoint.save(run / "checkpoints", 1, model, tokenizer,
                           {"step": 1, "config": {}, "rng": _Payload(marker)})
    with pytest.raises(ValueError, match=r"refused to load .*trainer.pt.*posix.mkdir"):
        checkpoint.load_state(path)
    assert main(["eval", "--model", str(run)]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert main(["train", "--resume", "--output_dir", str(run)]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()  # ... and it never ran
