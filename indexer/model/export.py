"""Export a MedImageInsight release to an ONNX model directory (``medsearch model export``).

Steps: find and check the release files; build the PyTorch model from ``config.yaml``
and load the checkpoint (refusing missing, unexpected or mis-shaped weights); export
``image_encoder.onnx`` (dynamic batch) and ``text_encoder.onnx`` (dynamic batch and
sequence length) with the dynamo exporter; check ONNX Runtime against PyTorch on the
built-in input (cosine >= 0.9999); optionally write fp16 variants (checked at >= 0.999
against fp32); compute golden embeddings; write ``manifest.json`` with every file's
sha256.

Everything is written to a temporary directory beside ``OUT``, fsynced, and renamed into
place at the end, so an interrupted or refused export leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer import __version__
from indexer.encoders.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Golden,
    Manifest,
    Preprocessing,
    RecipeSpec,
    Source,
    Variant,
    model_fingerprint,
    sha256_file,
)
from indexer.encoders.preprocess import RECIPES, builtin_test_image, make_recipe, preprocess
from indexer.encoders.tokenizer import ClipTokenizer
from indexer.errors import ModelError
from indexer.model.checkpoint import ReleaseFiles, find_release_files, load_model

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
GOLDEN_TEXT = "x-ray chest anteroposterior Atelectasis"
CHECK_TEXTS = (GOLDEN_TEXT, "", "CT ABDOMEN, w/ contrast (3.5 mm)!")
MIN_COSINE_FP32 = 0.9999
MIN_COSINE_FP16 = 0.999


class ExportError(ModelError):
    """The exported graphs do not reproduce the PyTorch model."""


def export_release(
    source: Path,
    out: Path,
    *,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    allow_unexpected_keys: bool = False,
    overwrite: bool = False,
) -> Manifest:
    """Export the release in ``source`` to a new model directory ``out``."""
    if out.exists() and not overwrite:
        raise ModelError(f"{out} already exists; choose a new directory or pass --overwrite")
    files = find_release_files(source)
    model = load_model(files, allow_unexpected=allow_unexpected_keys)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        manifest = _export_into(model, files, tmp, fp16=fp16, opset=opset)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _fsync_tree(tmp)
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s to %s (fingerprint %s)", source, out, manifest.short_fingerprint)
    return manifest


def _export_into(model: Any, files: ReleaseFiles, tmp: Path, *, fp16: bool, opset: int) -> Manifest:
    import torch

    cfg = model.config
    (tmp / "tokenizer").mkdir()
    for src in (files.vocab, files.merges):
        shutil.copyfile(src, tmp / "tokenizer" / src.name)
    tokenizer = ClipTokenizer.from_dir(tmp / "tokenizer", cfg.text.context_length)
    if tokenizer.vocab_size != cfg.text.vocab_size:
        raise ModelError(
            f"tokenizer has {tokenizer.vocab_size} tokens, the text tower {cfg.text.vocab_size}"
        )

    _export_image(model, tmp / "image_encoder.onnx", opset)
    _export_text(model, tmp / "text_encoder.onnx", opset)
    model.eval()  # the exporter may leave modules in training mode

    size = (int(cfg.image.image_size[0]), int(cfg.image.image_size[1]))
    recipes = {name: make_recipe(name, size, cfg.image.mean, cfg.image.std) for name in RECIPES}
    pixels = preprocess(builtin_test_image(), recipes["reference"])[None]
    batch = tokenizer(list(CHECK_TEXTS))
    with torch.no_grad():
        want_img = model.encode_image(torch.from_numpy(pixels)).numpy()
        want_txt = model.encode_text(
            torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
        ).numpy()
    got_img, got_txt = _run_onnx(
        tmp / "image_encoder.onnx",
        tmp / "text_encoder.onnx",
        pixels,
        batch.input_ids,
        batch.attention_mask,
    )
    _check_close("fp32 ONNX vs PyTorch", got_img, want_img, got_txt, want_txt, MIN_COSINE_FP32)

    variants = {
        "fp32": Variant(
            precision="fp32", image_encoder="image_encoder.onnx", text_encoder="text_encoder.onnx"
        )
    }
    if fp16:
        from indexer.model.fp16 import convert_to_fp16

        for name in ("image_encoder", "text_encoder"):
            convert_to_fp16(tmp / f"{name}.onnx", tmp / f"{name}.fp16.onnx")
        variants["fp16"] = Variant(
            precision="fp16",
            image_encoder="image_encoder.fp16.onnx",
            text_encoder="text_encoder.fp16.onnx",
        )
        h_img, h_txt = _run_onnx(
            tmp / "image_encoder.fp16.onnx",
            tmp / "text_encoder.fp16.onnx",
            pixels,
            batch.input_ids,
            batch.attention_mask,
        )
        _check_close("fp16 ONNX vs fp32", h_img, got_img, h_txt, got_txt, MIN_COSINE_FP16)

    names = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    entries = [
        FileEntry(path=n, sha256=sha256_file(tmp / n), size=(tmp / n).stat().st_size) for n in names
    ]
    tok_hashes = [e.sha256 for e in entries if e.path.startswith("tokenizer/")]
    checkpoint_sha = sha256_file(files.checkpoint)
    architecture = cfg.to_dict()
    manifest = Manifest(
        fingerprint=model_fingerprint(architecture, checkpoint_sha, tok_hashes),
        architecture=architecture,
        embedding_dim=cfg.dim_projection,
        input_size=size,
        mean=cfg.image.mean,
        std=cfg.image.std,
        logit_scale=float(model.logit_scale.detach().item()),
        context_length=cfg.text.context_length,
        opset=opset,
        preprocessing=Preprocessing(
            default="reference", recipes={k: RecipeSpec(**r.to_dict()) for k, r in recipes.items()}
        ),
        tokenizer={"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt"},
        variants=variants,
        files=entries,
        golden=Golden(
            image_input="builtin:v1",
            recipe="reference",
            text_input=GOLDEN_TEXT,
            image=[float(v) for v in got_img[0]],
            text=[float(v) for v in got_txt[0]],
        ),
        source=Source(
            checkpoint=files.checkpoint.name,
            checkpoint_sha256=checkpoint_sha,
            config_sha256=sha256_file(files.config),
            exporter=f"medsearch {__version__}",
            torch=torch.__version__,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ),
    )
    (tmp / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return manifest


def _export_image(model: Any, path: Path, opset: int) -> None:
    import torch

    from indexer.model.torch_model import ImageEncoderGraph

    h, w = model.config.image.image_size
    example = torch.zeros(2, 3, h, w)
    batch = torch.export.Dim("batch", min=1, max=4096)
    _onnx_export(
        ImageEncoderGraph(model).eval(),
        (example,),
        path,
        opset,
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_shapes={"pixel_values": {0: batch}},
    )


def _export_text(model: Any, path: Path, opset: int) -> None:
    import torch

    from indexer.model.torch_model import TextEncoderGraph

    ctx = model.config.text.context_length
    ids = torch.full((2, 8), 320, dtype=torch.int64)
    ids[:, 0], ids[:, -1] = 49406 % model.config.text.vocab_size, model.config.text.vocab_size - 1
    mask = torch.ones_like(ids)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=2, max=ctx)
    _onnx_export(
        TextEncoderGraph(model).eval(),
        (ids, mask),
        path,
        opset,
        input_names=["input_ids", "attention_mask"],
        output_names=["text_embeds"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
    )


def _onnx_export(module: Any, args: tuple[Any, ...], path: Path, opset: int, **kwargs: Any) -> None:
    import torch

    # the exporter reports through warnings and stdout; keep our CLI output clean
    with torch.no_grad(), open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            external_data=False,
            verbose=False,
            **kwargs,
        )
        if program is None:
            raise ExportError(f"torch.onnx.export returned no program for {path.name}")
        program.save(str(path), external_data=False)


def _run_onnx(
    image_path: Path,
    text_path: Path,
    pixels: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    mask: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    from indexer.encoders.sessions import SessionOptions, create_session

    options = SessionOptions(provider="cpu")
    image, _ = create_session(image_path, options)
    text, _ = create_session(text_path, options)
    img = image.run(["image_embeds"], {"pixel_values": pixels})[0]
    txt = text.run(["text_embeds"], {"input_ids": ids, "attention_mask": mask})[0]
    return np.asarray(img, dtype=np.float32), np.asarray(txt, dtype=np.float32)


def _check_close(
    what: str,
    got_img: npt.NDArray[np.float32],
    want_img: npt.NDArray[np.float32],
    got_txt: npt.NDArray[np.float32],
    want_txt: npt.NDArray[np.float32],
    floor: float,
) -> None:
    cos = np.concatenate([(got_img * want_img).sum(-1), (got_txt * want_txt).sum(-1)])
    worst = float(np.min(cos)) if np.all(np.isfinite(cos)) else float("nan")
    if not worst >= floor:
        raise ExportError(
            f"{what}: worst cosine {worst:.6f} < {floor}; the exported graph does "
            "not reproduce the model"
        )
    logger.info("%s: worst cosine %.7f over %d inputs", what, worst, len(cos))


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    for directory in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    old = None
    if out.exists() and overwrite:
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
