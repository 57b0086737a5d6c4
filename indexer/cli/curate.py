"""``medsearch index outliers`` and ``index label``: curation of an index's items.

``outliers`` ranks the active items by their mean cosine distance to their ``k`` nearest
other items (see :mod:`indexer.store.outliers`), the most unusual first. ``label`` gives
every active item a zero-shot label (see :mod:`indexer.encoders.zero_shot`) from a CSV of
prompts, stored as a label column (see :mod:`indexer.store.label_columns`) that search
filters select on.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer

from indexer.cli.options import IndexOpt, ModelOpt
from indexer.errors import SourceError

MAX_PROMPTS = 1000


def outliers(
    index: IndexOpt,
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="neighbours per item")] = 10,
    top: Annotated[int | None, typer.Option(min=1, help="print the first N only")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Items most unlike their nearest neighbours first: score = mean cosine distance to the
    k nearest other items; percentile = share of items scoring lower or equal (exact,
    O(items^2): a curation job)."""
    from indexer.pipeline.runner import open_catalog
    from indexer.store.outliers import neighbours_for, rank_outliers

    catalog = open_catalog(index, read_only=True)
    try:
        ranked = rank_outliers(catalog, k, top)
        used = neighbours_for(k, catalog.count())
    finally:
        catalog.close()
    if as_json:
        rows = [
            {
                "id": o.id,
                "source_uri": o.source_uri,
                "score": round(o.score, 6),
                "percentile": round(o.percentile, 6),
            }
            for o in ranked
        ]
        typer.echo(json.dumps({"k": used, "outliers": rows}, indent=2))
        return
    typer.echo(f"{'score':>8} {'pct':>6} {'id':>8}  source")
    for o in ranked:
        typer.echo(f"{o.score:8.4f} {o.percentile:6.3f} {o.id:8d}  {o.source_uri}")


def read_prompts(path: Path) -> dict[str, list[str]]:
    """``label,prompt`` rows (UTF-8, a header row): the prompts of each label, labels in
    the order they first appear. A label may have several rows (prompt ensembling)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fp:
            reader = csv.DictReader(fp)
            if reader.fieldnames is None or not {"label", "prompt"} <= set(reader.fieldnames):
                raise SourceError(f"{path}: the header must name the columns label,prompt")
            prompts: dict[str, list[str]] = {}
            for line, row in enumerate(reader, start=2):
                label, prompt = (row.get("label") or "").strip(), (row.get("prompt") or "").strip()
                if not label and not prompt:
                    continue
                if not label or not prompt:
                    raise SourceError(f"{path}, line {line}: a row needs a label and a prompt")
                prompts.setdefault(label, []).append(prompt)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{path}: not a readable UTF-8 CSV ({type(exc).__name__})") from None
    if len(prompts) < 2:
        raise SourceError(f"{path}: give at least two labels to choose between")
    if sum(len(p) for p in prompts.values()) > MAX_PROMPTS:
        raise SourceError(f"{path}: at most {MAX_PROMPTS} prompts")
    return prompts


def label(
    index: IndexOpt,
    model: ModelOpt,
    prompts: Annotated[Path, typer.Option(help="CSV with the columns label,prompt")],
    name: Annotated[str, typer.Option(help="the label column to write, e.g. organ")],
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="items per commit")] = 1000,
) -> None:
    """Zero-shot label every active item: NAME gets the most probable label and
    NAME_probability its probability (softmax(exp(logit_scale) * cosine) over the labels;
    several prompts of a label are averaged). A rerun overwrites both columns."""
    import numpy as np
    import numpy.typing as npt

    from indexer.encoders.zero_shot import index_encoder, probabilities, prompt_label_vectors
    from indexer.pipeline.runner import open_catalog
    from indexer.store.label_columns import check_column_name, write_label_column

    try:
        check_column_name(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--name") from None
    table = read_prompts(prompts)
    catalog = open_catalog(index, create=False)
    try:
        binding = catalog.required_binding()
        encoder = index_encoder(model, binding)
        names, vectors = prompt_label_vectors(encoder, table)
        scale = encoder.logit_scale

        def classify(items: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
            return probabilities(items @ vectors.T, scale)

        counts = write_label_column(catalog, name, names, classify, batch=batch_size)
    finally:
        catalog.close()
    typer.echo(json.dumps({"column": name, "items": sum(counts.values()), "labels": counts}))
