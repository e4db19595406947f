"""Checkpoints: atomic writes, weights-only loading that refuses pickled objects, RNG round trip, latest lookup."""

import pickle
import random

import numpy as np
import pytest
import torch

from cluster.run_config import load_run_config
from data_pipeline.errors import UserInputError
from pretrain.checkpoint import (
    CheckpointError,
    atomic_save,
    find_latest_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_method,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pretrain.methods import build_method


class Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def _cfg():
    return load_run_config(None, ["model.encoder=bb_convnet_tiny", "data.train=unused"])


def test_roundtrip_and_latest(tmp_path):
    cfg = _cfg()
    method = build_method(cfg)
    for step in (5, 10):
        save_checkpoint(tmp_path / f"checkpoint_{step}", rank=0, method_state={"model": method.state_dict()},
                        step=step, stream={"epoch": 1, "batch": step}, config=cfg.model_dump(mode="json"))
    latest = find_latest_checkpoint(tmp_path)
    assert latest.name == "checkpoint_10"
    state, rng = load_checkpoint(latest)
    assert state["step"] == 10 and state["stream"] == {"epoch": 1, "batch": 10} and rng is not None
    loaded, loaded_cfg = load_method(tmp_path)
    assert loaded_cfg == cfg and not loaded.training
    for (k, a), b in zip(method.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_refuses_pickled_objects(tmp_path):
    d = tmp_path / "checkpoint_x"
    d.mkdir()
    torch.save({"format": 1, "step": 1, "payload": Evil()}, d / "state.pt")
    with pytest.raises(ValueError, match="weights-only"):
        load_checkpoint(d)


def test_truncated_file_is_a_clear_error(tmp_path):
    d = tmp_path / "checkpoint_t"
    save_checkpoint(d, rank=0, method_state={"model": {"w": torch.ones(1000)}}, step=1,
                    stream={"epoch": 0, "batch": 1}, config={})
    data = (d / "state.pt").read_bytes()
    (d / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="state.pt"):
        load_checkpoint(d)


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "state.pt"
    atomic_save({"v": torch.zeros(3)}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        atomic_save({"v": lambda: 0}, path)  # fails mid-write
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind


def test_rng_state_roundtrip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    atomic_save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no bigbatch checkpoint"):
        find_latest_checkpoint(tmp_path)


class FakeCudaRNG:
    """torch.cuda's generator bookkeeping for ``count`` visible GPUs, ``current`` selected: byte-tensor states per
    index, and the IndexError torch raises for an index past the visible GPUs. No arithmetic is faked."""

    def __init__(self, count: int, current: int) -> None:
        self.count, self.current, self.reads = count, current, 0
        self.states = {i: torch.full((16,), 10 * count + i, dtype=torch.uint8) for i in range(count)}

    def _index(self, device) -> int:
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        index = self.current if device.index is None else device.index
        if index >= self.count:
            raise IndexError(f"tuple index out of range (cuda:{index} with {self.count} visible GPUs)")
        return index

    def get_rng_state(self, device="cuda"):
        self.reads += 1
        return self.states[self._index(device)].clone()

    def set_rng_state(self, state, device="cuda"):
        self.states[self._index(device)] = state.clone()

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        for module in (torch.cuda, torch.cuda.random):
            monkeypatch.setattr(module, "get_rng_state", self.get_rng_state)
            monkeypatch.setattr(module, "set_rng_state", self.set_rng_state)
            monkeypatch.setattr(module, "device_count", lambda: self.count)
            monkeypatch.setattr(module, "current_device", lambda: self.current)
        return self


@pytest.fixture
def tiny_trainer(tmp_path, digits_shards):
    from pretrain.trainer import LocalHooks, Trainer

    cfg = load_run_config(None, ["model.encoder=bb_convnet_tiny", "model.proj_hidden=32", "data.image_size=16",
                                 f"data.train={digits_shards['train']}", "batch_size=64", "cluster.workers=1"])
    return lambda device: _on(Trainer(cfg, rank=0, world_size=1, device=torch.device("cpu"),
                                      hooks=LocalHooks(tmp_path, 1)), device)


def _on(trainer, device: torch.device):
    trainer.device = device  # the RNG bookkeeping only: the model stays on CPU
    return trainer


def test_cuda_rng_is_the_ranks_own_gpu_and_restores_on_a_smaller_node(tmp_path, monkeypatch, tiny_trainer):
    """Saved on cuda:1 of a node with 2 visible GPUs; restored by a group that sees one GPU: the rank's generator
    (whatever its index now) gets the state, and nothing indexes past the visible GPUs."""
    two = FakeCudaRNG(count=2, current=1).install(monkeypatch)
    tiny_trainer(torch.device("cuda", 1))._write(tmp_path / "ckpt")
    rng = torch.load(tmp_path / "ckpt" / "rng-rank0.pt", weights_only=True)
    assert isinstance(rng["cuda"], torch.Tensor) and torch.equal(rng["cuda"], two.states[1])

    one = FakeCudaRNG(count=1, current=0).install(monkeypatch)
    tiny_trainer(torch.device("cuda", 0)).restore(tmp_path / "ckpt")
    assert torch.equal(one.states[0], two.states[1])


def test_old_checkpoint_with_a_list_of_cuda_states_loads(tmp_path, monkeypatch, tiny_trainer):
    FakeCudaRNG(count=1, current=0).install(monkeypatch)
    trainer = tiny_trainer(torch.device("cuda", 0))
    trainer._write(tmp_path / "old")
    path = tmp_path / "old" / "rng-rank0.pt"
    rng = torch.load(path, weights_only=True)
    saved = [torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 8, dtype=torch.uint8)]
    atomic_save({**rng, "cuda": saved}, path)  # the former format: one state per GPU visible at save time
    one = FakeCudaRNG(count=1, current=0).install(monkeypatch)
    tiny_trainer(torch.device("cuda", 0)).restore(tmp_path / "old")
    assert torch.equal(one.states[0], saved[0])
    one = FakeCudaRNG(count=3, current=2).install(monkeypatch)
    with pytest.warns(UserWarning, match="none for cuda:2"):
        tiny_trainer(torch.device("cuda", 2)).restore(tmp_path / "old")


def test_cpu_run_on_a_gpu_host_never_touches_cuda_generators(tmp_path, monkeypatch, tiny_trainer):
    fake = FakeCudaRNG(count=2, current=0).install(monkeypatch)
    tiny_trainer(torch.device("cpu"))._write(tmp_path / "cpu")
    assert "cuda" not in torch.load(tmp_path / "cpu" / "rng-rank0.pt", weights_only=True) and fake.reads == 0


def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_readable_one(tmp_path, capsys):
    cfg = _cfg()
    method = build_method(cfg)
    for step in (5, 10, 15):
        save_checkpoint(tmp_path / f"checkpoint_{step:02d}", rank=0, method_state={"model": method.state_dict()},
                        step=step, stream={"epoch": 0, "batch": step}, config=cfg.model_dump(mode="json"))
    newest = tmp_path / "checkpoint_15" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a truncated write
    latest, state = latest_checkpoint(tmp_path)
    assert latest.name == "checkpoint_10" and state["step"] == 10
    err = capsys.readouterr().err
    assert "skipping unreadable checkpoint checkpoint_15" in err and "using checkpoint_10 (step 10)" in err
    for d in ("checkpoint_05", "checkpoint_10"):
        (tmp_path / d / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable bigbatch checkpoint") as exc:
        find_latest_checkpoint(tmp_path)
    assert isinstance(exc.value, UserInputError) and "checkpoint_05/state.pt" in str(exc.value)
    with pytest.raises(CheckpointError, match="checkpoint_15/state.pt"):  # a checkpoint named directly: no fallback
        load_method(tmp_path / "checkpoint_15")


def test_a_pickled_rng_file_is_refused_naming_it(tmp_path):
    """A malicious rng-rank0.pt is refused by weights_only as a CheckpointError naming the file (a user error)."""
    d = tmp_path / "checkpoint_r"
    save_checkpoint(d, rank=0, method_state={"model": {}}, step=1, stream={"epoch": 0, "batch": 1}, config={})
    torch.save({"torch": Evil()}, d / "rng-rank0.pt")
    with pytest.raises(CheckpointError, match=r"rng-rank0\.pt: cannot be loaded as a weights-only"):
        load_checkpoint(d)


@pytest.mark.parametrize("other", [["loss.name=binary"], ["model.proj_dim=16"]])
def test_a_checkpoint_of_another_model_or_optimiser_is_one_line_naming_it(tmp_path, digits_shards, other):
    """Resuming with a config the checkpoint was not written with (binary NCE's scalars add a parameter group and
    two parameters; another projector width changes a shape) is a CheckpointError naming the directory."""
    from pretrain.trainer import LocalHooks, Trainer

    base = ["model.encoder=bb_convnet_tiny", "model.proj_hidden=32", "data.image_size=16",
            f"data.train={digits_shards['train']}", "batch_size=64", "cluster.workers=1"]

    def trainer(*extra: str) -> Trainer:
        return Trainer(load_run_config(None, [*base, *extra]), rank=0, world_size=1, device=torch.device("cpu"),
                       hooks=LocalHooks(tmp_path, 1))

    trainer()._write(tmp_path / "ckpt")
    trainer().restore(tmp_path / "ckpt")  # the same config resumes
    with pytest.raises(CheckpointError, match=r"ckpt: does not fit this run's model or optimiser \(") as err:
        trainer(*other).restore(tmp_path / "ckpt")
    assert "\n" not in str(err.value)
