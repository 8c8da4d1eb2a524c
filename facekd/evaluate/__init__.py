"""Evaluation: 1:1 verification (TAR@FAR in the strict and insightface conventions, insightface's
10-fold `.bin` accuracy, ROC plots, per-group TAR), IJB-B/C templates, re-ID CMC / mAP / mINP and
Recall@K, classification top-k / per-class accuracy, and streaming TAR@FAR over all-to-all pair
sets (ICCV21-MFR style).

Import the submodules directly (`facekd.evaluate.verification`, `.ijb`, `.reid`, `.classification`,
`.streaming`, `.model_eval`); the most used names are re-exported here.
"""

from facekd.evaluate.classification import ClassificationResult, classification_accuracy
from facekd.evaluate.reid import ReidResult, compute_distance, evaluate_reid, evaluate_reid_features, recall_at_k
from facekd.evaluate.verification import (
    RankedScores,
    Roc,
    TarAtFar,
    VerificationAccuracy,
    accuracy_flip,
    evaluate_pairs,
    format_insightface_line,
    plot_roc,
    roc,
    tar_at_far,
    verification_accuracy,
)

__all__ = [
    "ClassificationResult",
    "RankedScores",
    "ReidResult",
    "Roc",
    "TarAtFar",
    "VerificationAccuracy",
    "accuracy_flip",
    "classification_accuracy",
    "compute_distance",
    "evaluate_pairs",
    "evaluate_reid",
    "evaluate_reid_features",
    "format_insightface_line",
    "plot_roc",
    "recall_at_k",
    "roc",
    "tar_at_far",
    "verification_accuracy",
]
