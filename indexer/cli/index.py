"""``medsearch index ...``: build and add (:mod:`indexer.cli.build`), reembed
(:mod:`indexer.cli.reembed`), remove, stats, verify, rebuild, search."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from indexer.cli import build, curate, duplicates, reembed, watch
from indexer.cli.options import IndexOpt, ModelOpt

if TYPE_CHECKING:
    from indexer.store.catalog import Catalog


class Level(StrEnum):
    images = "images"
    series = "series"
    study = "study"


app = typer.Typer(no_args_is_help=True, help="Build and query an index (catalog + FAISS).")

app.command()(build.build)
app.command()(build.add)
app.command()(watch.watch)
app.command()(reembed.reembed)
app.command()(curate.outliers)
app.command()(curate.label)
app.command()(duplicates.duplicates)


@app.command()
def remove(
    index: IndexOpt,
    uid: Annotated[
        list[str] | None, typer.Option("--uid", help="SOP, Series or Study Instance UID")
    ] = None,
    source_prefix: Annotated[str | None, typer.Option(help="source URI prefix")] = None,
) -> None:
    """Remove items by UID or source URI prefix, and publish the updated index."""
    from indexer.pipeline.runner import open_catalog
    from indexer.store.sync import sync_index

    if not uid and not source_prefix:
        raise typer.BadParameter("give --uid or --source-prefix")
    catalog = open_catalog(index, create=False)
    try:
        removed = catalog.remove(uids=uid or [], source_prefix=source_prefix)
        manifest = sync_index(catalog, index, catalog.required_binding())
    finally:
        catalog.close()
    typer.echo(f"removed {removed}; index {manifest['version']} holds {manifest['count']}")


@app.command()
def rebuild(
    index: IndexOpt,
    compress: Annotated[
        str | None,
        typer.Option(help="none, sq8 or pq (IVF codes + exact re-ranking); default: keep"),
    ] = None,
) -> None:
    """Rebuild and publish the vector index from the catalog alone (no model needed)."""
    from indexer.pipeline.runner import open_catalog
    from indexer.store.sync import sync_index

    catalog = open_catalog(index, create=False)
    try:
        binding = catalog.required_binding()
        if compress not in (None, "none", "sq8", "pq"):
            raise typer.BadParameter("--compress must be none, sq8 or pq")
        manifest = sync_index(
            catalog,
            index,
            binding,
            rebuild=True,
            compress=None if compress is None else compress,  # type: ignore[arg-type]
        )
    finally:
        catalog.close()
    typer.echo(f"rebuilt index {manifest['version']}: {manifest['count']} vectors")


@app.command()
def stats(index: IndexOpt, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Counts, the model, the published index's build facts (incl. measured recall), and
    the thumbnail policy that MEDSEARCH_THUMBNAIL_POLICY sets, with the active items that
    ``safe`` masks or withholds."""
    from indexer.imaging.burned_in import policy_from_env
    from indexer.pipeline.runner import open_catalog
    from indexer.store.sync import index_store

    try:
        policy = policy_from_env(dict(os.environ))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="MEDSEARCH_THUMBNAIL_POLICY") from None
    catalog = open_catalog(index, read_only=True)
    try:
        out = catalog.stats()
        binding = catalog.binding()
        out["model"] = binding.__dict__ if binding else None
        out["thumbnails"] = {"policy": policy.value, "at_risk": _at_risk(catalog)}
    finally:
        catalog.close()
    manifest = index_store(index).current()
    out["index"] = manifest.model_dump(mode="json") if manifest else None
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    typer.echo(f"items: {out['items']}")
    typer.echo(f"failures: {out['failures']}")
    typer.echo(f"modalities: {out['modalities']}")
    at_risk = out["thumbnails"]["at_risk"]
    typer.echo(
        f"thumbnails: policy {policy.value}; {at_risk} active items at risk of burned-in "
        "text (safe: masked where a text region is known, else withheld)"
    )
    if manifest is not None:
        f = manifest.facts
        typer.echo(
            f"index {manifest.version}: {manifest.count} vectors, {f.kind}, nlist {f.nlist}, "
            f"nprobe {f.nprobe}, recall@10 {f.recall_at_10:.3f}"
        )
    else:
        typer.echo("index: none published")


def _at_risk(catalog: Catalog) -> int:
    """Active items whose pixels may show identifying text (``burned_in.risk``)."""
    from sqlalchemy import func, select

    from indexer.imaging.burned_in import risk
    from indexer.store.models import ItemRow

    columns = (ItemRow.modality, ItemRow.sop_class_uid, ItemRow.burned_in_annotation)
    query = select(*columns, func.count()).where(ItemRow.status == "active").group_by(*columns)
    with catalog.session() as s:
        groups = s.execute(query).all()
    return sum(int(n) for modality, sop, burned, n in groups if risk(modality, sop, burned))


@app.command()
def verify(
    index: IndexOpt,
    probes: Annotated[int, typer.Option(min=0, help="probe queries")] = 20,
) -> None:
    """Check that the catalog and the published index agree; exit 1 if not."""
    from indexer.pipeline.runner import open_catalog
    from indexer.store.verify import verify as run_verify

    catalog = open_catalog(index, read_only=True)
    try:
        report = run_verify(index, catalog, probes=probes)
    finally:
        catalog.close()
    typer.echo(json.dumps({"ok": report.ok, "problems": report.problems, **report.facts}))
    if not report.ok:
        raise typer.Exit(1)


class OutputFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


@app.command("search")
def search_cmd(
    index: IndexOpt,
    model: ModelOpt,
    text: Annotated[str | None, typer.Option(help="a text query")] = None,
    image: Annotated[Path | None, typer.Option(help="an image file (DICOM, PNG, ...)")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=1000)] = 10,
    modality: Annotated[list[str] | None, typer.Option(help="filter (repeatable)")] = None,
    body_part: Annotated[
        list[str] | None, typer.Option(help="BodyPartExamined, e.g. CHEST (repeatable)")
    ] = None,
    view_position: Annotated[
        list[str] | None, typer.Option(help="ViewPosition, e.g. AP (repeatable)")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(help="COLUMN=VALUE of the sidecar CSV (repeatable: all must match)"),
    ] = None,
    source_prefix: Annotated[
        str | None, typer.Option(help="only sources under this URI, e.g. file:///data/a/")
    ] = None,
    study_date_from: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
    study_date_to: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
    level: Annotated[
        Level, typer.Option(help="images, or DICOM series, or studies (pooled vectors)")
    ] = Level.images,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="JSON lines, or CSV with a header")
    ] = OutputFormat.jsonl,
) -> None:
    """Nearest neighbours of a text or an image, without the server, one line each, best
    first: images, or with ``--level series|study`` series and studies. ``--format csv``
    for pandas (``pd.read_csv``). The filters are the service's (``filters`` of a
    search request): every one given must match, a repeated one matches any value."""
    from indexer.cli.embed import open_images
    from indexer.encoders.encoder import Encoder
    from indexer.pipeline.runner import open_catalog
    from indexer.settings import EncoderSettings
    from indexer.store.searcher import Searcher

    if (text is None) == (image is None):
        raise typer.BadParameter("give exactly one of --text or --image")
    filters = _filters(
        modality=modality or None, body_part_examined=body_part or None,
        view_position=view_position or None, labels=_labels(label),
        source_prefix=source_prefix, study_date_from=study_date_from,
        study_date_to=study_date_to,
    )  # fmt: skip
    catalog = open_catalog(index, read_only=True)
    try:
        searcher = Searcher(index, catalog)
        encoder = Encoder.load(model, EncoderSettings())
        searcher.check_model(encoder.fingerprint)
        if text is not None:
            vector = encoder.embed_texts([text])[0]
        else:
            assert image is not None
            recipe = encoder.recipe(searcher.binding.recipe)
            vector = encoder.embed_inputs(open_images([image], recipe), recipe.name)[0]
        if level == Level.images:
            rows = [
                {
                    "id": hit.id,
                    "score": round(hit.score, 6),
                    "source_uri": hit.item.source_uri,
                    "sop_instance_uid": hit.item.sop_instance_uid,
                    "frame": hit.item.frame,
                    "modality": hit.item.modality,
                }
                for hit in searcher.search(vector, k, filters=filters)
            ]
        else:
            rows = _series_rows(searcher, vector, k, filters, level)
    finally:
        catalog.close()
    _emit(rows, output)


def _labels(pairs: list[str] | None) -> dict[str, str] | None:
    from indexer.store.filters import label_pairs

    try:
        return label_pairs(pairs)
    except ValueError as exc:
        raise typer.BadParameter(f"--label: {exc}") from None


def _filters(**given: Any) -> Any:
    """The search filters, or the CLI's usage error naming what is wrong."""
    from pydantic import ValidationError

    from indexer.store.filters import Filters

    options = {"body_part_examined": "body_part", "labels": "label"}
    try:
        return Filters(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            option = options.get(field, field).replace("_", "-")
            problems.append(f"--{option}: {error['msg']}")
        raise typer.BadParameter("; ".join(problems)) from None


def _emit(rows: list[dict[str, Any]], output: OutputFormat) -> None:
    if output == OutputFormat.jsonl:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    from indexer.store.export import csv_lines

    header = list(rows[0]) if rows else []
    flat = ({k: " ".join(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    for line in csv_lines(header, flat):
        typer.echo(line, nl=False)


def _series_rows(
    searcher: Any, vector: Any, k: int, filters: Any, level: Level
) -> list[dict[str, Any]]:
    from indexer.store.series_search import SeriesQuery, SeriesSearcher

    series = SeriesSearcher(searcher)
    if level == Level.study:
        return [
            {
                "study_instance_uid": study.study_instance_uid,
                "score": round(study.score, 6),
                "series": [s.series.series_instance_uid for s in study.series],
            }
            for study in series.search_studies(SeriesQuery(vector), k, filters=filters)
        ]
    rows = []
    for hit in series.search(SeriesQuery(vector), k, filters=filters):
        best = hit.best_items[0].item if hit.best_items else None
        record = hit.series
        rows.append(
            {
                "series_instance_uid": record.series_instance_uid,
                "study_instance_uid": record.study_instance_uid,
                "modality": record.modality,
                "instances": record.members,
                "score": round(hit.score, 6),
                "best_source_uri": best.source_uri if best else None,
            }
        )
    return rows
