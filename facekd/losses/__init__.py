"""Losses: classification (per-sample CE / Focal / CB / LDAM), distillation (per-sample losses in
`distill`, weighting schemes in `weighting`, the `Distiller` that combines them) and metric losses."""
