"""Each epoch's sample list is saved in the run directory (samples/epoch_000.npy, ...), exactly as
drawn, without changing what the run trains on."""

from __future__ import annotations

import numpy as np
import torch

from facekd.build import build_run, run_training
from facekd.config import RunConfig
from facekd.data.sampler import IndexListSampler
from facekd.sample_log import RecordedSampler, epoch_file
from facekd.train import train


def _arrays(tmp_path, n=40, classes=4, size=12):
    g = np.random.default_rng(0)
    labels = np.arange(n) % classes
    images = g.integers(0, 255, size=(n, size, size, 3)).astype(np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)


def _cfg(tmp_path, name, **blocks) -> RunConfig:
    return RunConfig.model_validate(
        {
            "task": "classification",
            "data": {"kind": "arrays", "path": str(tmp_path / "data.npz")},
            "model": {"arch": "small_cnn", "embedding_size": 8, "options": {"width": 4}},
            "head": {"name": "softmax"},
            "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "seed": 3},
            "run_dir": str(tmp_path / name),
            **blocks,
        }
    )


def test_uniform_epochs_are_saved_as_drawn_and_training_is_unchanged(tmp_path):
    torch.set_num_threads(1)
    _arrays(tmp_path)
    cfg = _cfg(tmp_path, "recorded")
    task = run_training(cfg, progress=False)
    for epoch in (0, 1):
        saved = np.load(epoch_file(cfg.run_dir / "samples", epoch))
        expect = IndexListSampler.shuffled(40, seed=3).epoch_indices(epoch)
        assert saved.dtype == np.int64 and saved.tolist() == expect.tolist()
    assert not np.array_equal(np.load(cfg.run_dir / "samples" / "epoch_000.npy"), expect)
    # the same run trained by train() directly, without the recording wrapper: the same weights
    plain = build_run(_cfg(tmp_path, "plain"))
    plain_task = train(plain.task, plain.dataset, plain.cfg.train, plain.cfg.run_dir, progress=False)
    for (k, a), (_, b) in zip(task.state_dict().items(), plain_task.state_dict().items()):
        assert torch.equal(a, b), k
    assert not (plain.cfg.run_dir / "samples").exists()


def test_a_sample_list_file_is_saved_as_given(tmp_path):
    _arrays(tmp_path)
    rows = np.random.default_rng(1).integers(0, 40, size=24).astype(np.int64)
    np.save(tmp_path / "list.npy", rows)
    cfg = _cfg(tmp_path, "file", sampler={"name": "file", "path": str(tmp_path / "list.npy")})
    run_training(cfg, progress=False)
    for epoch in (0, 1):
        assert np.load(epoch_file(cfg.run_dir / "samples", epoch)).tolist() == rows.tolist()


class _Fixed(torch.utils.data.Sampler):
    """A sampler without epoch_indices(): its rows are recorded as iterated."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter([self.epoch, 5, 7, self.epoch + 1])

    def __len__(self):
        return 4


def test_a_sampler_without_a_whole_epoch_is_recorded_as_iterated(tmp_path):
    rec = RecordedSampler(_Fixed(), tmp_path / "s")
    for epoch in (0, 3):
        rec.set_epoch(epoch)
        assert list(rec) == [epoch, 5, 7, epoch + 1] and len(rec) == 4
        assert np.load(epoch_file(tmp_path / "s", epoch)).tolist() == [epoch, 5, 7, epoch + 1]
