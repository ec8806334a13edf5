"""Plots of one run (PNG): training curves, and a t-SNE of real vs generated unseen features.

    python -m simulations.report.plots outputs/20260101-120000          # curves.png, scores.png
    python -m simulations.report.plots outputs/20260101-120000 --tsne   # + tsne.png (owner side)
    python -m simulations.report.plots outputs/20260101-120000 --stats  # + feature_stats.json

Curves and scores come from results.json alone. The t-SNE and ``--stats`` (how far
generated unseen-class features are from real ones, in numbers) need real features, which only
an owner holds: this command plays that owner, as the simulation launcher does. It loads
the owner's partition with the owners' loader (``azsl_flower.owner.data``) and the run's
``generator.pt``, and plots both here; nothing is sent anywhere. Use it in simulation
only, on data you hold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["feature_stats", "plot_curves", "plot_scores", "plot_tsne", "main"]

SCORES = ("zsl", "u", "s", "h")


class PlotError(ValueError):
    """A run folder without what a plot needs; the message says what is missing."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def load_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise PlotError(f"{path} not found: give a run folder (it holds results.json)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise PlotError(f"{path} is not valid JSON: {exc}") from None


def plot_curves(results: dict[str, Any], out: Path) -> Path:
    """One panel per quantity logged each generator round (teacher CE, R, agreement...)."""
    history = results.get("history") or []
    if not history:
        raise PlotError("results.json has no history (rounds=0?): no training curves to plot")
    keys = sorted(
        {k for h in history for k, v in h.items() if k != "round" and isinstance(v, int | float)}
    )
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        pts = [(h.get("round", i + 1), h[key]) for i, h in enumerate(history) if key in h]
        ax.plot(*zip(*pts, strict=True), marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("generator round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(_title(results))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_scores(results: dict[str, Any], out: Path) -> Path:
    """ZSL T1, u, s, H of the teacher (upper bound) and the evaluated model(s), in %."""
    models = {"teacher": results["teacher"], "student": results["student"]}
    models |= results.get("other_models", {})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(models)
    x = np.arange(len(SCORES))
    for i, (name, m) in enumerate(models.items()):
        ax.bar(x + i * width, [100 * m[k] for k in SCORES], width, label=name)
    ax.set_xticks(x + width * (len(models) - 1) / 2, ["ZSL T1", "u", "s", "H"])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title(_title(results), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _title(results: dict[str, Any]) -> str:
    cfg = results.get("config", {})
    label = cfg.get("experiment") or results.get("dataset", "")
    return (
        f"{label}: {results.get('scenario')}, {results.get('teacher_setting')} teacher, "
        f"seed {results.get('seed')}"
    )


# owner side: (real x, real y, generated x, generated y, class names)
Sample = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]


def owner_and_generated(
    run_dir: Path,
    partition_id: int = 0,
    per_class: int = 100,
    data_dir: str | None = None,
    seed: int = 0,
) -> Sample:
    """Owner side, in simulation: (real x, real y, generated x, generated y, class names)
    for the unseen classes, at most ``per_class`` real samples per class."""
    import torch

    from azsl_flower.common.config import DEFAULTS, parse_run_config
    from azsl_flower.common.models import Generator
    from azsl_flower.common.semantics import load_class_side
    from azsl_flower.owner.data import load_owner_data

    results = load_results(run_dir)
    weights = Path(run_dir) / "generator.pt"
    if not weights.is_file():
        raise PlotError(f"{weights} not found: the t-SNE needs the run's generator")
    raw = {k: v for k, v in results.get("config", {}).items() if k in DEFAULTS}
    if data_dir is not None:
        raw["data-dir"] = data_dir
    cfg = parse_run_config(raw)
    owners = int(results.get("num_owners", 1))
    if not 0 <= partition_id < owners:
        raise PlotError(f"--partition-id {partition_id}: the run had owners 0..{owners - 1}")
    data = load_owner_data(
        cfg.dataset,
        cfg.data_dir,
        cfg.feature_file,
        cfg.teacher,
        partition_id,
        owners,
        cfg.partition,
        cfg.seed,
        cfg.dirichlet_beta,
        cfg.owner_classes,
    )
    xs = np.concatenate([data.train_x, data.test_unseen_x])
    ys = np.concatenate([data.train_y, data.test_unseen_y])
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for c in data.unseen_classes:
        idx = np.flatnonzero(ys == c)
        keep.append(rng.permutation(idx)[:per_class])
    pick = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    if pick.size == 0:
        raise PlotError(f"owner {partition_id} holds no sample of an unseen class")
    real_x, real_y = xs[pick], ys[pick]
    classes = np.unique(real_y)

    side = load_class_side(cfg.dataset, cfg.data_dir, cfg.semantics)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    gen = Generator(side.semantics.shape[1], cfg.noise_dim, data.dim)
    try:
        gen.load_state_dict(state)
    except RuntimeError as exc:
        raise PlotError(f"{weights} does not fit this run's settings: {exc}") from None
    gen.eval()
    gen_y = np.repeat(classes, per_class)
    torch_rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        a = torch.from_numpy(side.semantics[gen_y])
        z = torch.randn(gen_y.size, cfg.noise_dim, generator=torch_rng)
        gen_x = gen(a, z).numpy()
    return real_x, real_y, gen_x, gen_y, side.names


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _mean_off_diagonal(m: np.ndarray) -> float:
    k = m.shape[0]
    return float((m.sum() - np.trace(m)) / (k * (k - 1))) if k > 1 else float("nan")


def feature_stats(
    real_x: np.ndarray, real_y: np.ndarray, gen_x: np.ndarray, gen_y: np.ndarray
) -> dict[str, float]:
    """Numbers behind the t-SNE: do generated class means point where real ones do, are
    they as distinct from each other, and do they classify real features (nearest mean)?"""
    classes = np.unique(real_y)
    real_m = _unit(np.stack([real_x[real_y == c].mean(0) for c in classes]))
    gen_m = _unit(np.stack([gen_x[gen_y == c].mean(0) for c in classes]))
    pred = classes[(_unit(real_x) @ gen_m.T).argmax(1)]
    per_class = [float(np.mean(pred[real_y == c] == c)) for c in classes]
    return {
        "classes": int(classes.size),
        "cos_generated_vs_real_mean": float((real_m * gen_m).sum(1).mean()),
        "cos_between_real_means": _mean_off_diagonal(real_m @ real_m.T),
        "cos_between_generated_means": _mean_off_diagonal(gen_m @ gen_m.T),
        "norm_real": float(np.linalg.norm(real_x, axis=1).mean()),
        "norm_generated": float(np.linalg.norm(gen_x, axis=1).mean()),
        "nearest_generated_mean_acc": float(np.mean(per_class)),
    }


def plot_tsne(
    sample: Sample, out: Path, partition_id: int = 0, seed: int = 0, threads: int = 1
) -> Path:
    """t-SNE of real (dots) and generated (crosses) unseen-class features, one colour a class;
    ``sample`` is what :func:`owner_and_generated` returns."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    real_x, real_y, gen_x, gen_y, names = sample
    x = np.concatenate([real_x, gen_x]).astype(np.float32)
    perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
    # OpenMP threads that spin against torch's (or a busy machine's) cost 100x here
    with threadpool_limits(threads):
        emb = TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)
    real_e, gen_e = emb[: real_y.size], emb[real_y.size :]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20")
    classes = np.unique(real_y)
    for i, c in enumerate(classes):
        colour = cmap(i % 20)
        label = names[c] if len(classes) <= 20 else None
        r, g = real_y == c, gen_y == c
        ax.scatter(*real_e[r].T, s=8, color=colour, marker="o", label=label)
        ax.scatter(*gen_e[g].T, s=14, color=colour, marker="x", alpha=0.6)
    ax.scatter([], [], s=8, color="grey", marker="o", label="real (owner)")
    ax.scatter([], [], s=14, color="grey", marker="x", label="generated")
    ax.legend(fontsize=6, markerscale=1.5, loc="best", ncol=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of unseen classes, owner {partition_id}: real vs generated")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dir", type=Path, help="a run folder (holds results.json)")
    ap.add_argument("--out", type=Path, help="where the PNGs go (default: <run folder>/plots)")
    ap.add_argument("--tsne", action="store_true", help="also the owner-side t-SNE")
    ap.add_argument("--stats", action="store_true", help="also feature_stats.json (owner side)")
    ap.add_argument("--partition-id", type=int, default=0, help="which simulated owner")
    ap.add_argument("--per-class", type=int, default=100, help="samples per class, each kind")
    ap.add_argument("--data-dir", help="the owner's data folder if not the run's data-dir")
    ap.add_argument("--seed", type=int, default=0, help="t-SNE and generator noise seed")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for the t-SNE")
    args = ap.parse_args(argv)
    try:
        results = load_results(args.run_dir)
        out = args.out or args.run_dir / "plots"
        out.mkdir(parents=True, exist_ok=True)
        made = [plot_scores(results, out / "scores.png")]
        if results.get("history"):
            made.append(plot_curves(results, out / "curves.png"))
        if args.tsne or args.stats:  # one owner-side sample serves both
            if args.per_class < 1:
                raise PlotError("--per-class must be >= 1")
            sample = owner_and_generated(
                args.run_dir, args.partition_id, args.per_class, args.data_dir, args.seed
            )
            if args.stats:
                stats = feature_stats(*sample[:4])
                print(json.dumps(stats, indent=1))
                (out / "feature_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
                made.append(out / "feature_stats.json")
            if args.tsne:
                tsne = out / "tsne.png"
                made.append(plot_tsne(sample, tsne, args.partition_id, args.seed, args.threads))
    except PlotError as exc:
        raise SystemExit(f"plots: {exc}") from None
    for path in made:
        print(path)
    return made


if __name__ == "__main__":
    main()
