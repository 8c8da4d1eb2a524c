"""The loss and weighting registries: declared properties, option schemas, extension by one class."""

from __future__ import annotations

import pytest
import torch

from facekd.losses.distill import LOSSES, DistillLoss, Features, register_loss
from facekd.losses.distiller import Distiller
from facekd.losses.registry import OptionsModel
from facekd.losses.weighting import WEIGHTINGS, Term, get_weighting

torch.set_num_threads(1)


def test_registries_list_every_builtin_with_its_declarations():
    assert {"l2", "cosine", "hkd", "fitnet", "at", "rkd", "cc", "sp", "pkt", "darkrank", "vid"} <= set(LOSSES)
    assert {"uniform", "warmup", "soft_exp", "soft_poly", "hard_mining", "hard_discarding", "pad"} <= set(WEIGHTINGS)
    assert {n for n, c in LOSSES.items() if c.pad_compatible} >= {"l2", "fitnet", "at"}
    assert LOSSES["hkd"].reads == "logits" and LOSSES["at"].reads == "maps" and LOSSES["l2"].reads == "embedding"
    assert LOSSES["l2"].projects and not LOSSES["rkd"].projects
    assert LOSSES["hkd"].Options().model_dump() == {"temperature": 4.0}
    assert LOSSES["fitnet"].Options().layers == [-1] and LOSSES["at"].Options().layers is None
    assert WEIGHTINGS["pad"].uses_variance and WEIGHTINGS["warmup"].requires_warmup
    with pytest.raises(ValueError, match="unknown distillation loss 'l3'"):
        LOSSES.lookup("l3")


def test_option_schemas_validate_types_and_bounds_with_one_line():
    with pytest.raises(ValueError, match=r"distillation loss 'hkd': bad options \(temperature"):
        Distiller("hkd", temperature=0)
    with pytest.raises(ValueError, match=r"kernel"):
        Distiller("cc", kernel="poly")
    with pytest.raises(ValueError, match="dim_reduce"):
        Distiller("l2", student_dim=4, teacher_dim=4, dim_reduce="max")
    with pytest.raises(ValueError, match="apply only to weighting 'hard_mining' or 'soft_exp'"):
        Distiller("l2", "uniform", student_dim=4, teacher_dim=4, T=0.5)
    assert Distiller("hkd", temperature="2.5").loss.options.temperature == 2.5  # YAML / --set strings
    assert get_weighting("soft_exp", T=2).T == 2.0


class _Options(OptionsModel):
    scale: float = 1.0


def test_a_new_loss_is_one_registered_class():
    """What a contributor writes: one class; the Distiller, weightings and λ apply unchanged."""

    @register_loss("test_abs")
    class AbsDistill(DistillLoss):
        Options = _Options
        options: _Options
        projects = True
        needs_labels = True

        def forward(self, student, teacher, mask=None):
            return [Term(self.options.scale * (student.embedding - teacher.embedding).abs())]

    try:
        s, t, y = torch.randn(6, 3), torch.randn(6, 5), torch.arange(6)
        d = Distiller.from_config(
            {"loss": "test_abs", "weighting": "soft_exp", "lambda": 2.0, "options": {"scale": 3}}, 3, 5
        )
        assert d.projection is not None and d.needs_labels and not d.needs_maps
        loss, _logs = d(Features(s, labels=y), Features(t), step=0)
        s_cmp, t_cmp = d.embedding_pair(Features(s), Features(t))
        gap = 3.0 * (s_cmp - t_cmp).abs().sum(dim=1)
        w = torch.softmax(-gap, dim=0)
        assert loss.item() == pytest.approx(2.0 * (w * gap).sum().item(), rel=1e-6)
        with pytest.raises(ValueError, match="needs the batch labels"):
            d(Features(s), Features(t))
        with pytest.raises(ValueError, match="pad"):
            Distiller("test_abs", "pad", student_dim=3, teacher_dim=5)
    finally:
        LOSSES._classes.pop("test_abs")


def test_loss_and_weighting_options_may_not_share_a_name():
    class Clash(OptionsModel):
        T: float = 1.0

    @register_loss("test_clash")
    class ClashDistill(DistillLoss):
        Options = Clash

    try:
        Distiller("test_clash", "uniform")  # no clash with uniform's options
        with pytest.raises(ValueError, match="declared twice"):
            Distiller("test_clash", "soft_exp")
    finally:
        LOSSES._classes.pop("test_clash")
