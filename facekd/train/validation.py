"""Validation while training, as arcface_torch's CallBackVerification: insightface `.bin` sets
evaluated every `val.every` optimizer steps on rank 0, insightface's log lines, and `best.pt`.

The sets are decoded once (at the student's input size) by `facekd.data.binset.load_bin`; each
round embeds the images and their mirrors with `facekd.evaluate.model_eval.embed_raw_flip` and
scores them with `facekd.evaluate.verification.accuracy_flip` (the 10-fold protocol, XNorm),
the same code as `facekd eval --bin`. `best.pt` is the student's state_dict (insightface key
names, loadable as a backbone) at the round with the highest mean Accuracy-Flip over `best_by`
(default: every set); `best.json` says which round it was. The highest values survive a resume
(they travel in last.pt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from facekd.data.binset import load_bin
from facekd.evaluate.model_eval import embed_raw_flip, model_image_size
from facekd.evaluate.verification import accuracy_flip, format_insightface_line
from facekd.train.config import ValConfig
from facekd.utils import atomic_path, save_json


class Validator:
    """The `.bin` sets of `cfg`, decoded once for a student of input side `image_size`."""

    def __init__(self, cfg: ValConfig, student: nn.Module, image_size: int):
        self.cfg = cfg
        size = model_image_size(student, default=image_size)
        self.sets: dict[str, tuple[np.ndarray, np.ndarray]] = {
            name: load_bin(path, image_size=size) for name, path in zip(cfg.names, cfg.bin)
        }
        self.best_by = cfg.best_by or cfg.names
        self.highest: dict[str, float] = {}
        self.best: dict = {"score": None, "step": None}

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.cfg.every == 0 or step == total_steps

    def evaluate(self, student: nn.Module, step: int) -> tuple[dict[str, dict], str, bool]:
        """One round: ({set: {xnorm, accuracy_flip, std, highest}}, insightface's lines, whether
        the `best_by` mean beat every earlier round)."""
        results, lines = {}, []
        for name, (images, issame) in self.sets.items():
            orig, flip = embed_raw_flip(student, images, self.cfg.batch_size)
            acc = accuracy_flip(orig, flip, issame)
            self.highest[name] = max(self.highest.get(name, 0.0), acc.mean)
            results[name] = {"xnorm": acc.xnorm, "accuracy_flip": acc.mean, "std": acc.std}
            results[name]["highest"] = self.highest[name]
            lines.append(
                format_insightface_line(name, step, acc.mean, acc.std, xnorm=acc.xnorm, highest=self.highest[name])
            )
        score = float(np.mean([results[n]["accuracy_flip"] for n in self.best_by]))
        better = self.best["score"] is None or score > self.best["score"]
        if better:
            self.best = {"score": score, "step": step, "best_by": list(self.best_by), "results": results}
        return results, "\n".join(lines), better

    def save_best(self, run_dir: Path, student: nn.Module) -> None:
        """best.pt (the student's state_dict) and best.json (round, score, results), atomically."""
        with atomic_path(run_dir / "best.pt") as tmp:
            torch.save(student.state_dict(), tmp)
        save_json(run_dir / "best.json", self.best)

    def state_dict(self) -> dict:
        return {"highest": dict(self.highest), "best_score": self.best["score"], "best_step": self.best["step"]}

    def load_state_dict(self, state: dict) -> None:
        self.highest = {k: float(v) for k, v in state.get("highest", {}).items()}
        self.best = {"score": state.get("best_score"), "step": state.get("best_step")}


__all__ = ["Validator"]
