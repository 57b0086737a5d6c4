"""``medsearch model``: export a released checkpoint, inspect an exported model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated

import typer

EXPORT_MODULES = ("torch", "safetensors", "yaml", "onnx", "onnxscript", "onnxconverter_common")

app = typer.Typer(no_args_is_help=True, help="Export and inspect MedImageInsight models.")


@app.command("export")
def export(
    source: Annotated[
        Path, typer.Argument(help="release directory (config.yaml, vision_model/, language_model/)")
    ],
    out: Annotated[Path, typer.Argument(help="new model directory to write")],
    fp16: Annotated[bool, typer.Option("--fp16", help="also write fp16 variants for GPUs")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 18,
    allow_unexpected_keys: Annotated[
        bool, typer.Option(help="ignore (and list) checkpoint keys the architecture does not use")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
) -> None:
    """Export a MedImageInsight release to ONNX with a verified manifest."""
    # the `export` extra, imported only deep inside the export: checked now, not after a
    # traceback halfway through loading the checkpoint
    missing = [m for m in EXPORT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise typer.BadParameter(
            f"export needs the export extra (pip install 'medsearch[export]'): "
            f"{', '.join(missing)} not installed"
        )
    from indexer.model.export import export_release

    manifest = export_release(
        source,
        out,
        fp16=fp16,
        opset=opset,
        allow_unexpected_keys=allow_unexpected_keys,
        overwrite=overwrite,
    )
    typer.echo(
        json.dumps(
            {
                "model_dir": str(out),
                "fingerprint": manifest.fingerprint,
                "embedding_dim": manifest.embedding_dim,
                "variants": sorted(manifest.variants),
            },
            indent=1,
        )
    )


@app.command("info")
def info(model_dir: Annotated[Path, typer.Argument(help="exported model directory")]) -> None:
    """Verify an exported model (hashes, self-test) and print its manifest summary.

    MEDSEARCH_VERIFY_HASHES=false and MEDSEARCH_SELF_TEST=false skip those checks."""
    from indexer.encoders.encoder import Encoder
    from indexer.settings import EncoderSettings

    settings = EncoderSettings()
    encoder = Encoder.load(model_dir, settings)
    m = encoder.manifest
    typer.echo(
        json.dumps(
            {
                "fingerprint": m.fingerprint,
                "embedding_dim": m.embedding_dim,
                "input_size": m.input_size,
                "logit_scale": m.logit_scale,
                "opset": m.opset,
                "variants": sorted(m.variants),
                "default_recipe": m.preprocessing.default,
                "recipes": sorted(m.preprocessing.recipes),
                "provider": encoder.provider,
                "precision": encoder.precision,
                "hashes": "verified" if settings.verify_hashes else "skipped",
                "self_test": "passed" if settings.self_test else "skipped",
                "source": m.source.model_dump(),
            },
            indent=1,
        )
    )
