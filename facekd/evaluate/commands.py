"""CLI commands of the evaluation area (thin wrappers): `facekd eval-ijb`, `facekd eval-reid` and
`facekd eval-retrieval`, and the task dispatch of `facekd eval` (`eval_task`, `eval_student`):
face students are verified (in facekd.cli), classification and metric students evaluated by
`facekd.evaluate.students`."""

from __future__ import annotations

from pathlib import Path

import typer


def _load_npy(path: Path, what: str):
    from facekd.utils import load_npy

    return load_npy(path, what)


def eval_ijb(
    features: Path | None = typer.Option(None, help="Raw per-image features .npy, rows in <t>_face_tid_mid.txt order."),
    checkpoint: Path | None = typer.Option(
        None, help="Instead of --features: embed the release with this backbone (file or run dir)."
    ),
    arch: str | None = typer.Option(None, help="Architecture of --checkpoint (facekd.models.list_models())."),
    onnx: Path | None = typer.Option(
        None, help="Instead of --features / --checkpoint: embed the release with this ONNX recognition model."
    ),
    meta: Path = typer.Option(
        ..., help="IJB release folder holding meta/<t>_*.txt (and loose_crop/ with --checkpoint)."
    ),
    target: str = typer.Option("IJBC", help="IJBC or IJBB (selects the meta file prefix)."),
    features_flip: Path | None = typer.Option(None, help="Raw features of the mirrored images (.npy)."),
    halves: bool = typer.Option(False, help="`features` holds [orig | flip] column halves, as eval_ijbc's img_feats."),
    flip: str = typer.Option("sum", help="sum (F1, default) | concat | none (F0)."),
    norm_score: bool = typer.Option(True, help="N1: keep the feature norm as a quality weight (no pre-normalising)."),
    detector_score: bool = typer.Option(True, help="D1: multiply each image feature by its faceness score."),
    batch_size: int = typer.Option(256, min=1, help="Images per batch with --checkpoint."),
    num_workers: int = typer.Option(0, min=0, help="DataLoader workers with --checkpoint."),
    device: str = typer.Option("auto", help="With --checkpoint: auto (the local GPU if any) | cpu | cuda:N."),
    out: Path = typer.Option(
        Path("ijb_results"),
        help="Output folder: <target>.npy scores, .json, _roc.png "
        "(with --checkpoint also <target>_features.npy / _features_flip.npy).",
    ),
) -> None:
    """IJB-B/C 1:1 verification (arcface_torch eval_ijbc.py protocol) from precomputed features or a checkpoint.

    With --checkpoint/--arch or --onnx the faces of `meta`/loose_crop are aligned at the model's input
    size, embedded with their mirrors, the raw features saved to `out`, and evaluated exactly as
    --features.
    """
    from facekd.data.ijb import read_ijb_meta
    from facekd.evaluate.ijb import evaluate_ijb, write_ijb_outputs

    if sum(x is not None for x in (features, checkpoint, onnx)) != 1:
        raise typer.BadParameter("give exactly one of --features, --checkpoint or --onnx")
    if checkpoint is not None or onnx is not None:
        if checkpoint is not None and arch is None:
            raise typer.BadParameter("--checkpoint needs --arch")
        if features_flip is not None or halves:
            raise typer.BadParameter("--features-flip / --halves apply to --features, not to a model")
        from facekd.build import load_network
        from facekd.dist import resolve_device

        model = load_network(None if onnx else arch, checkpoint, onnx, device=str(resolve_device(device)))
        features, features_flip = _embed_ijb_to(out, model, meta, target, batch_size, num_workers)
    assert features is not None  # one of --features / --checkpoint, checked above
    x = _load_npy(features, "features")
    xf = _load_npy(features_flip, "features_flip") if features_flip is not None else None
    if halves:
        if x.ndim != 2 or x.shape[1] % 2:
            raise ValueError(f"{features}: --halves needs an (N, 2d) array, got shape {x.shape}")
        x, xf = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]
    m = read_ijb_meta(meta, target)
    if x.shape[0] != len(m.templates):
        raise ValueError(f"{features}: {x.shape[0]} rows but {target} meta lists {len(m.templates)} images")
    res = evaluate_ijb(
        x,
        m.templates,
        m.medias,
        m.pairs_t1,
        m.pairs_t2,
        m.pairs_label,
        features_flip=xf,
        faceness=m.faceness,
        flip=flip,
        norm_score=norm_score,
        detector_score=detector_score,
    )
    write_ijb_outputs(res, out, target.upper())
    typer.echo(
        f"{target.upper()} {res.settings['code']}: {int(res.labels.sum())} genuine / "
        f"{int((~res.labels).sum())} impostor template pairs\n{res.table()}"
    )


def _embed_ijb_to(out: Path, model, meta: Path, target: str, batch_size: int, num_workers: int) -> tuple[Path, Path]:
    """Embed the release with `model`; write raw features (+ flip) as .npy in `out`; return their paths."""
    from facekd.evaluate.model_eval import embed_ijb
    from facekd.utils import save_npy

    feats, feats_flip = embed_ijb(model, meta, target, batch_size=batch_size, num_workers=num_workers)
    paths = out / f"{target.upper()}_features.npy", out / f"{target.upper()}_features_flip.npy"
    save_npy(paths[0], feats)
    save_npy(paths[1], feats_flip)
    name = getattr(model, "path", None) or type(model).__name__
    typer.echo(f"embedded {feats.shape[0]} faces with {name} ({feats.shape[1]}-d) -> {paths[0]}, {paths[1]}")
    return paths


def _load_reid_split(path: Path) -> tuple:
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: re-ID features file not found")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("features", "pids", "camids") if k not in z.files]
        if missing:
            raise ValueError(
                f"{path}: missing arrays {missing}; expected an .npz with features (N, d), pids (N,), camids (N,)"
            )
        return z["features"], z["pids"], z["camids"]


def eval_reid(
    query: Path = typer.Option(..., help=".npz with features (Q, d), pids (Q,), camids (Q,)."),
    gallery: Path = typer.Option(..., help=".npz with features (G, d), pids (G,), camids (G,)."),
    metric: str = typer.Option("cosine", help="cosine (fast-reid) or euclidean (squared, reid-strong-baseline)."),
    normalize: bool = typer.Option(True, help="L2-normalise features first (FEAT_NORM=yes)."),
    max_rank: int = typer.Option(50, help="CMC length."),
    out: Path | None = typer.Option(None, help="Also write the metrics as JSON here."),
) -> None:
    """Market-1501-protocol re-ID metrics: CMC rank-1/5/10, mAP, mINP."""
    from facekd.evaluate.reid import evaluate_reid_features
    from facekd.utils import save_json

    qf, qp, qc = _load_reid_split(query)
    gf, gp, gc = _load_reid_split(gallery)
    res = evaluate_reid_features(qf, gf, qp, gp, qc, gc, metric=metric, normalize=normalize, max_rank=max_rank)
    d = res.to_dict()
    typer.echo(
        f"rank1 {100 * d['rank1']:.2f}  rank5 {100 * d.get('rank5', float('nan')):.2f}  "
        f"rank10 {100 * d.get('rank10', float('nan')):.2f}  mAP {100 * d['mAP']:.2f}  mINP {100 * d['mINP']:.2f}"
        f"  ({d['num_valid_queries']}/{d['num_queries']} queries with a match)"
    )
    if out is not None:
        save_json(out, d | {"cmc": res.cmc.tolist(), "metric_name": metric})


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--ks: expected comma-separated integers like 1,2,4,8, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise typer.BadParameter(f"--ks: every K must be >= 1, got {text!r}")
    return ks


def eval_retrieval(
    cache: Path = typer.Argument(..., help="Embedding cache directory (facekd embed): embeddings.npy + labels.npy."),
    ks: str = typer.Option("1,2,4,8", help="Comma-separated K values of Recall@K."),
    out: Path | None = typer.Option(None, help="Also write the metrics as JSON here."),
) -> None:
    """Leave-one-out Recall@K (CUB-200 protocol): each image queries all the others by cosine
    similarity; a hit is an image of its class among the K nearest."""
    from facekd.embed import EmbeddingCache
    from facekd.evaluate.reid import recall_at_k
    from facekd.utils import save_json

    k_values = _parse_ks(ks)
    c = EmbeddingCache.open(cache)
    res = recall_at_k(c.embeddings, c.labels, k_values)
    typer.echo("  ".join(f"R@{k} {100 * v:.2f}" for k, v in res.items()) + f"  ({len(c)} images, {cache})")
    if out is not None:
        save_json(out, {"n": len(c), "cache": str(cache), **{f"recall@{k}": v for k, v in res.items()}})


def eval_task(checkpoint: Path | None, task: str | None) -> str:
    """The task `facekd eval` evaluates: `--task`, else the run's (`checkpoint/config.yaml`), else face."""
    from facekd.evaluate.students import run_config_of, task_of

    return task_of(run_config_of(checkpoint) if checkpoint is not None else None, task)


def eval_student(
    checkpoint: Path | None,
    arch: str | None,
    task: str,
    split: str,
    data_cfg,
    head: Path | None,
    ks: str,
    batch_size: int,
    device: str,
    out: Path | None,
) -> dict:
    """`facekd eval` of a classification or metric student: the model of `checkpoint` (a run
    directory or a backbone file with `arch`) on `data_cfg` (the DataConfig of --kind / --data /
    --split), else on `split` of the run's data; prints one line and writes `out/eval.json`."""
    from facekd.dist import resolve_device
    from facekd.evaluate.students import REID_KINDS, evaluate_student, format_result, load_student, split_config
    from facekd.utils import save_json

    if checkpoint is None:
        raise typer.BadParameter(f"--task {task} evaluates a trained student: give --checkpoint (a run directory)")
    student = load_student(checkpoint, arch, task, head)
    if data_cfg is None:
        if student.cfg is None:
            raise typer.BadParameter(f"{checkpoint} has no config.yaml: give the data with --kind and --data")
        data = student.cfg.data
        data_cfg = split_config(data, "query" if data.kind in REID_KINDS else split)  # re-ID: query vs gallery
    student.model.to(resolve_device(device))
    if student.head is not None:
        student.head.to(resolve_device(device))
    res = evaluate_student(student, task, data_cfg, ks=_parse_ks(ks), batch_size=batch_size)
    typer.echo(format_result(res))
    if out is not None:
        save_json(out / "eval.json", {"checkpoint": str(checkpoint), "data": _plain_data(data_cfg), **res})
    return res


def _plain_data(data_cfg) -> dict:
    """The data block evaluated on, without the keys left at their defaults."""
    return {"kind": data_cfg.kind, "split": data_cfg.split, **data_cfg.model_dump(mode="json", exclude_defaults=True)}


def register(app: typer.Typer) -> None:
    """Add `eval-ijb`, `eval-reid` and `eval-retrieval` to the facekd app."""
    app.command("eval-ijb")(eval_ijb)
    app.command("eval-reid")(eval_reid)
    app.command("eval-retrieval")(eval_retrieval)
