"""``medsearch preview``: write what the model will see, so a user can check the rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from PIL import Image

from indexer.cli.options import output_file
from indexer.errors import ImageInputError


def _out_path(out: Path, frame: int | None, many: bool) -> Path:
    if not many or frame is None:
        return out
    return out.with_name(f"{out.stem}-frame{frame:04d}{out.suffix}")


def preview(
    file: Annotated[Path, typer.Argument(help="DICOM, PNG, JPEG, TIFF or BMP file")],
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG to write")] = Path("preview.png"),
    all_frames: Annotated[
        bool | None,
        typer.Option(
            "--all-frames/--middle-frame",
            help="every frame of a multi-frame object, or its middle one "
            "(default: MEDSEARCH_FRAMES, middle)",
        ),
    ] = None,
) -> None:
    """Render FILE as the index will (after windowing, before resizing and normalisation).

    Writes an 8-bit RGB PNG and prints the rendering facts as JSON (rendering policy, the
    VOI used, frame, size). Multi-frame objects give their middle frame unless
    --all-frames is given or MEDSEARCH_FRAMES is all (then OUT-frameNNNN.png per frame).
    """
    from indexer.imaging.guard import decode_files_guarded
    from indexer.settings import ImagingSettings

    if not file.is_file():
        raise ImageInputError(f"{file}: no such file")
    output_file(out, "--out")
    if all_frames is None:
        settings = ImagingSettings()
    else:
        settings = ImagingSettings(frames="all" if all_frames else "middle")
    (result,) = decode_files_guarded([file], settings)  # a crashing codec is a refusal
    if not result.ok:
        why = f"{result.reason}: {result.detail}".rstrip(": ")
        raise ImageInputError(f"{file}: not rendered: {why}")
    written = []
    many = len(result.images) > 1
    for image in result.images:
        target = _out_path(out, image.metadata.frame, many)
        Image.fromarray(image.pixels).save(target, format="PNG")
        meta = image.metadata
        written.append(
            {
                "file": str(target),
                "render_policy": meta.render_policy,
                "voi": meta.voi,
                "frame": meta.frame,
                "number_of_frames": meta.number_of_frames,
                "width": meta.width,
                "height": meta.height,
                "format": meta.format,
                "photometric_interpretation": meta.photometric_interpretation,
            }
        )
    typer.echo(json.dumps(written if many else written[0], indent=2))
