"""Options that several ``medsearch`` commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

IndexOpt = Annotated[
    Path, typer.Option("--index", help="index directory (catalog + FAISS versions)")
]
ModelOpt = Annotated[
    Path,
    typer.Option("--model", help="exported model directory", envvar="MEDSEARCH_MODEL_DIR"),
]


def output_file(path: Path | None, option: str) -> None:
    """Refuse an output file that cannot be written before any work is done (a usage
    error, exit 2): its folder must exist, and it must not be a folder itself."""
    if path is None:
        return
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory, not a file", param_hint=option)
    if not path.parent.is_dir():
        raise typer.BadParameter(f"{path.parent}: no such directory", param_hint=option)
