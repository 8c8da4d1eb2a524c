"""Dataset presets and their check against a RecordIO header."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facekd.data.presets import PRESETS, DatasetPreset, check_against_header, get_preset
from facekd.data.recordio import RecordIODataset, write_recordio


def test_counts_from_arcface_torch_configs():
    table = {k: (p.num_classes, p.num_images) for k, p in PRESETS.items()}
    assert table == {
        "ms1mv2": (85742, 5822653),
        "ms1mv3": (93431, 5179510),
        "glint360k": (360232, 17091657),
        "webface42m": (2059906, 42474557),
    }
    assert get_preset("MS1MV3") is get_preset("ms1m-retinaface-t1") is PRESETS["ms1mv3"]
    with pytest.raises(ValueError, match="unknown dataset preset 'casia'"):
        get_preset("casia")


def test_check_against_recordio_header(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    write_recordio([(buf.getvalue(), 0), (buf.getvalue(), 1), (buf.getvalue(), 2)], f"{tmp_path}/d/")
    ds = RecordIODataset(tmp_path / "d")
    tiny = DatasetPreset("tiny", "d", 3, 3)
    assert check_against_header(tiny, ds) == []
    with pytest.warns(UserWarning, match="preset ms1mv2 expects"):
        problems = check_against_header("ms1mv2", ds)
    assert len(problems) == 2 and "3 classes, preset ms1mv2 expects 85742" in problems[0]
    with pytest.raises(ValueError, match="3 images, preset tiny2 expects 4"):
        check_against_header(DatasetPreset("tiny2", "d", 3, 4), ds, strict=True)
