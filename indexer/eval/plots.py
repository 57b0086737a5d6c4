"""Figures of an evaluation (matplotlib, the ``plot`` extra: ``pip install 'medsearch[plot]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.errors import MedsearchError
from indexer.eval.retrieval import RetrievalScores
from indexer.eval.zero_shot import ZeroShotScores


def pyplot() -> Any:
    """``matplotlib.pyplot`` (files only), or an error that says how to install it; the CLI
    calls it before a long evaluation, not after."""
    try:
        import matplotlib
    except ImportError:
        raise MedsearchError(
            "--plot needs matplotlib: pip install 'medsearch[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_precision_curve(scores: RetrievalScores, path: Path, title: str = "") -> None:
    """precision@k for k = 1 .. max(k): overall (bold) and per label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = range(1, len(scores.precision_curve) + 1)
    for name, metrics in scores.per_label.items():
        ax.plot(ks, metrics.precision_curve, linewidth=1, alpha=0.8, label=name)
    ax.plot(ks, scores.precision_curve, color="black", linewidth=2.5, label="all")
    ax.set(xlabel="k", ylabel="precision@k", ylim=(0, 1.02), title=title or "precision@k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if len(scores.per_label) > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(scores: ZeroShotScores, path: Path, title: str = "") -> None:
    """The confusion matrix, each row normalised to the label's items, counts annotated."""
    plt = pyplot()
    size = max(4.0, 0.6 * len(scores.labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    counts = scores.confusion
    shares = [[c / max(sum(row), 1) for c in row] for row in counts]
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(scores.labels))
    ax.set_xticks(ticks, scores.labels, rotation=45, ha="right")
    ax.set_yticks(ticks, scores.labels)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title or f"zero-shot: accuracy {scores.accuracy:.3f}")
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            dark = shares[i][j] > 0.5
            ax.text(j, i, str(count), ha="center", va="center", color="white" if dark else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
