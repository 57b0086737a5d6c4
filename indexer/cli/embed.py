"""``medsearch embed``: embeddings as JSON in the Azure MedImageInsight response shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import typer

from indexer.encoders.preprocess import Recipe
from indexer.errors import ImageInputError


def open_images(paths: list[Path], recipe: Recipe) -> list[npt.NDArray[np.uint8]]:
    """The model's inputs for ``recipe`` of DICOM, PNG, JPEG, TIFF or BMP files (the
    middle frame of a multi-frame object), decoded and prepared in a guarded worker."""
    from indexer.imaging.guard import decode_files_guarded
    from indexer.settings import ImagingSettings

    for path in paths:
        if not path.is_file():
            raise ImageInputError(f"{path}: no such file")
    # MEDSEARCH_FRAMES=all or not, one embedding per file: its middle frame
    settings = ImagingSettings().model_copy(update={"frames": "middle"})
    results = decode_files_guarded(paths, settings, recipe)
    for path, result in zip(paths, results, strict=True):
        if not result.ok:
            raise ImageInputError(f"{path}: {result.reason}: {result.detail}".rstrip(": "))
    return [result.images[0].pixels for result in results]


def embed(
    model: Annotated[
        Path, typer.Option("--model", help="exported model directory", envvar="MEDSEARCH_MODEL_DIR")
    ],
    image: Annotated[
        list[Path] | None, typer.Option("--image", help="image file (repeatable)")
    ] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="text (repeatable)")] = None,
    recipe: Annotated[
        str | None, typer.Option(help="preprocessing recipe (default: the model's)")
    ] = None,
    provider: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda (default: MEDSEARCH_PROVIDER, auto)")
    ] = None,
) -> None:
    """Print {image_features, text_features, scaling_factor} for the given inputs."""
    from indexer.encoders.encoder import Encoder
    from indexer.settings import EncoderSettings

    image, text = image or [], text or []
    if not image and not text:
        raise typer.BadParameter("give at least one --image or --text")
    if provider not in (None, "auto", "cpu", "cuda"):
        raise typer.BadParameter("--provider must be auto, cpu or cuda")
    chosen: dict[str, Any] = {} if provider is None else {"provider": provider}
    encoder = Encoder.load(model, EncoderSettings(**chosen))  # else MEDSEARCH_PROVIDER
    chosen_recipe = encoder.recipe(recipe)
    images = open_images(image, chosen_recipe) if image else []
    out = {
        "image_features": (
            encoder.embed_inputs(images, chosen_recipe.name).tolist() if images else []
        ),
        "text_features": encoder.embed_texts(text).tolist() if text else [],
        "scaling_factor": encoder.logit_scale,
    }
    typer.echo(json.dumps(out))
