"""``medsearch index duplicates``: groups of near-duplicate images in an index."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from indexer.cli.options import IndexOpt


class By(StrEnum):
    phash = "phash"
    embedding = "embedding"


def duplicates(
    index: IndexOpt,
    by: Annotated[
        By, typer.Option(help="perceptual hash (copies of one image) or embedding (cosine)")
    ] = By.phash,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="phash: most differing bits (default 10); embedding: least cosine (0.98)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
) -> None:
    """Groups of near-duplicates (a PNG export of a DICOM, a re-encoded or resized copy, a
    re-sent series), largest first, with each member's distance to the group's first.
    Two instances of one DICOM series are never grouped."""
    from indexer.pipeline.runner import open_catalog
    from indexer.store.duplicates import near_duplicate_groups

    catalog = open_catalog(index, read_only=True)
    try:
        groups = near_duplicate_groups(catalog, by=by.value, threshold=threshold)
    finally:
        catalog.close()
    listed = [
        [{"id": m.id, "source_uri": m.source_uri, "distance": m.distance} for m in g.members]
        for g in groups
    ]
    if as_json:
        typer.echo(json.dumps({"by": by.value, "groups": listed}))
        return
    for n, members in enumerate(listed, 1):
        typer.echo(f"group {n}: {len(members)} items")
        for m in members:
            typer.echo(f"  {m['id']:>8}  {m['distance']:>8g}  {m['source_uri']}")
    typer.echo(f"{len(listed)} groups")
