"""``manifest.json`` of an exported model directory: schema, hashing and verification.

An exported model directory::

    manifest.json
    image_encoder.onnx          pixel_values (B, 3, H, W) float32 -> image_embeds (B, D)
    text_encoder.onnx           input_ids, attention_mask (B, L) int64 -> text_embeds (B, D)
    image_encoder.fp16.onnx     optional GPU variant (float32 inputs and outputs)
    text_encoder.fp16.onnx
    tokenizer/vocab.json, tokenizer/merges.txt

Outputs are L2-normalised. The manifest records the architecture, input size, mean/std,
embedding dimension, ``logit_scale``, opset, the preprocessing recipes, the sha256 of
every file, golden embeddings of a built-in input, and the model fingerprint.

The fingerprint identifies the model, not the file format: sha256 over the architecture,
the source checkpoint's sha256 and the tokenizer files' sha256. The fp32 and fp16
variants of one export share it; the index stores it and refuses to mix models.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.errors import ManifestError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
Precision = Literal["fp32", "fp16"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileEntry(_Frozen):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Variant(_Frozen):
    precision: Precision
    image_encoder: str
    text_encoder: str


class Golden(_Frozen):
    """Embeddings of the built-in input, computed by the fp32 export."""

    image_input: str  # "builtin:v1", see indexer.encoders.preprocess.builtin_test_image
    recipe: str
    text_input: str
    image: list[float]
    text: list[float]


class RecipeSpec(_Frozen):
    name: str
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    squash: int | None = None
    jpeg_quality: int | None = None


class Preprocessing(_Frozen):
    default: str
    recipes: dict[str, RecipeSpec]


class Source(_Frozen):
    checkpoint: str
    checkpoint_sha256: str
    config_sha256: str
    exporter: str
    torch: str
    created: str


class Manifest(_Frozen):
    format_version: int = FORMAT_VERSION
    model_name: str = "MedImageInsight"
    fingerprint: str
    architecture: dict[str, object]
    embedding_dim: int = Field(gt=0)
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale: float
    context_length: int = Field(gt=2)
    opset: int
    preprocessing: Preprocessing
    tokenizer: dict[str, str]
    variants: dict[str, Variant]
    files: list[FileEntry]
    golden: Golden
    source: Source

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:16]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(
    architecture: dict[str, object], checkpoint_sha256: str, tokenizer_sha256: list[str]
) -> str:
    payload = json.dumps(
        {
            "architecture": architecture,
            "checkpoint": checkpoint_sha256,
            "tokenizer": tokenizer_sha256,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def read_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{model_dir} is not an exported model directory: {MANIFEST_NAME} "
            "is missing (export one with `medsearch model export`)"
        )
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ManifestError(
            f"{path} is not a valid medsearch manifest: "
            f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']} "
            f"at {'.'.join(str(p) for p in exc.errors()[0]['loc'])}"
        ) from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format version {manifest.format_version} is not supported "
            f"(this medsearch reads {FORMAT_VERSION}); export the model again"
        )
    return manifest


def verify_files(model_dir: Path, manifest: Manifest, paths: set[str] | None = None) -> None:
    """Check size and sha256 of the listed files (all, or only ``paths``)."""
    bad: list[str] = []
    for entry in manifest.files:
        if paths is not None and entry.path not in paths:
            continue
        file = model_dir / entry.path
        if not file.is_file():
            bad.append(f"{entry.path} is missing")
        elif file.stat().st_size != entry.size:
            bad.append(f"{entry.path} has {file.stat().st_size} bytes, manifest says {entry.size}")
        elif sha256_file(file) != entry.sha256:
            bad.append(f"{entry.path} does not match its sha256 in the manifest")
    if bad:
        raise ManifestError(f"model directory {model_dir} failed verification: " + "; ".join(bad))
