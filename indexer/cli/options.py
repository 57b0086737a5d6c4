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
