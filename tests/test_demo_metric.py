"""The metric-learning row of the full demo (PAD Table 4 analogue) on tiny SynthFaces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facekd.demo import EXPERIMENTS
from facekd.demo.context import DemoContext
from facekd.demo.settings import DemoSettings


@pytest.fixture
def tiny_ctx(tmp_path):
    torch.set_num_threads(1)
    net = {"embedding_size": 16, "epochs": 1, "batch_size": 16, "warmup_epochs": 0}
    settings = DemoSettings(
        tier="full",
        seeds=[0, 1],
        data_preset="quick",
        data={
            "image_size": 16,
            "num_train_identities": 6,
            "max_images_per_identity": 10,
            "num_test_identities": 4,
            "test_images_per_identity": 4,
            "num_genuine_pairs": 8,
            "num_impostor_pairs": 16,
            "hard_pair_fraction": None,
        },
        teacher={"arch": "iresnet_mini", **net},
        student={"arch": "iresnet_mini", **net},
        eval_flip=False,
    )
    return DemoContext(tmp_path, settings, progress=False)


def test_metric_row_is_registered_in_the_full_tier_only():
    e = EXPERIMENTS["metric.retrieval"]
    assert e.tier == "full"


@pytest.mark.slow
def test_metric_row_trains_retrieval_students_and_reports_recall(tiny_ctx):
    from facekd.demo import metric

    ctx = tiny_ctx
    result = json.loads(json.dumps(metric.run(ctx)))
    assert list(result["methods"]) == ["scratch", "L2", "DarkRank", "RKD", "PAD"]
    assert all(len(rows) == 2 for rows in result["methods"].values())
    for rows in [*result["methods"].values(), [result["teacher"]]]:
        for r in rows:
            assert 0 <= r["R@1"] <= r["R@2"] <= r["R@4"] <= r["R@8"] <= 1
    # the students are task metric on P×K batches, evaluated on identities they never saw
    cfg = metric.metric_config(ctx, 0, metric.methods(16)["RKD"])
    assert cfg.task == "metric" and cfg.sampler.name == "pk" and cfg.train.batch_size == 16
    assert cfg.distill is not None and cfg.distill.normalize is False and cfg.teacher is not None
    run = ctx.train(cfg, "again")
    assert run.directory == ctx.store.run_dir(cfg) and (run.directory / "done").is_file()
    assert metric.recall(ctx, run.model) == result["methods"]["RKD"][0]
    text = EXPERIMENTS["metric.retrieval"].report(ctx, result)
    assert "| PAD (n=2) |" in text and "R@1 − scratch" in text


def test_paired_interval():
    from facekd.demo.metric import paired

    a, b = [0.5, 0.6, 0.7], [0.4, 0.55, 0.6]
    d = np.array(a) - np.array(b)
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert paired(a, b) == f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]"
