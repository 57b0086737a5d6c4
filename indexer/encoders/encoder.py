"""Embed images and text with an exported MedImageInsight model (ONNX Runtime).

``Encoder.load(model_dir, settings)`` reads and verifies the manifest and the sha256 of
the files it will use, opens the sessions, and runs the self-test: the built-in image
and text must reproduce the golden embeddings in the manifest (cosine >= 0.9999 in fp32,
>= 0.999 in fp16), or the model is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from indexer.encoders.manifest import Manifest, read_manifest, verify_files
from indexer.encoders.preprocess import (
    Recipe,
    builtin_test_image,
    manifest_recipe,
    normalise,
    prepare,
)
from indexer.encoders.sessions import CUDA, SessionOptions, create_session, run_session
from indexer.encoders.tokenizer import ClipTokenizer
from indexer.errors import ManifestError, SelfTestError, TextInputError
from indexer.settings import EncoderSettings

logger = logging.getLogger(__name__)

SELF_TEST_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999}
ImageInput = Image.Image | npt.NDArray[Any]
Embeddings = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EncoderInfo:
    fingerprint: str
    embedding_dim: int
    precision: str
    provider: str
    default_recipe: str
    logit_scale: float


class Encoder:
    """Both ONNX encoders of one exported model, with its tokenizer and recipes."""

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        image_session: Any,
        text_session: Any,
        tokenizer: ClipTokenizer,
        precision: str,
        provider: str,
        batch_size: int,
    ) -> None:
        self.model_dir = model_dir
        self.manifest = manifest
        self._image = image_session
        self._text = text_session
        self.tokenizer = tokenizer
        self.precision = precision
        self.provider = provider
        self.batch_size = batch_size

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, model_dir: Path | str, settings: EncoderSettings | None = None) -> Encoder:
        settings = settings or EncoderSettings()
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        options = SessionOptions(
            settings.provider, settings.intra_op_threads, settings.inter_op_threads
        )
        precision = _choose_precision(manifest, settings)
        variant = manifest.variants[precision]
        used = {variant.image_encoder, variant.text_encoder, *manifest.tokenizer.values()}
        if settings.verify_hashes:
            verify_files(model_dir, manifest, used)
        image, provider = create_session(model_dir / variant.image_encoder, options)
        text, _ = create_session(model_dir / variant.text_encoder, options)
        tokenizer = ClipTokenizer(
            model_dir / manifest.tokenizer["vocab"],
            model_dir / manifest.tokenizer["merges"],
            manifest.context_length,
        )
        encoder = cls(
            model_dir, manifest, image, text, tokenizer, precision, provider, settings.batch_size
        )
        logger.info(
            "loaded model %s (dim %d, %s on %s)",
            manifest.short_fingerprint,
            manifest.embedding_dim,
            precision,
            provider,
        )
        if settings.self_test:
            encoder.self_test()
        return encoder

    @property
    def info(self) -> EncoderInfo:
        m = self.manifest
        return EncoderInfo(
            m.fingerprint,
            m.embedding_dim,
            self.precision,
            self.provider,
            m.preprocessing.default,
            m.logit_scale,
        )

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def logit_scale(self) -> float:
        return self.manifest.logit_scale

    def recipe(self, name: str | None = None) -> Recipe:
        return manifest_recipe(self.manifest, name)

    # ---------------------------------------------------------------- embedding

    def embed_pixels(self, pixel_values: npt.NDArray[np.float32]) -> Embeddings:
        """Embed preprocessed (B, 3, H, W) input, in batches of ``batch_size``."""
        out = []
        for start in range(0, len(pixel_values), self.batch_size):
            chunk = np.ascontiguousarray(pixel_values[start : start + self.batch_size])
            out.append(
                run_session(self._image, self.provider, "image_embeds", {"pixel_values": chunk})
            )
        return _stack(out, self.manifest.embedding_dim)

    def embed_images(self, images: Sequence[ImageInput], recipe: str | None = None) -> Embeddings:
        """L2-normalised embeddings (N, D) of images of any mode (see ``preprocess``)."""
        rec = self.recipe(recipe)
        return self.embed_inputs([prepare(image, rec) for image in images], rec.name)

    def embed_inputs(
        self, inputs: Sequence[npt.NDArray[np.uint8]], recipe: str | None = None
    ) -> Embeddings:
        """Embeddings of prepared inputs (``uint8`` at the input size, grey or RGB; see
        :func:`~indexer.encoders.preprocess.prepare`), as decoder workers hand them over."""
        rec = self.recipe(recipe)
        out = []
        for start in range(0, len(inputs), self.batch_size):
            out.append(self.embed_pixels(normalise(inputs[start : start + self.batch_size], rec)))
        return _stack(out, self.manifest.embedding_dim)

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """L2-normalised embeddings (N, D); each batch runs over its real tokens only."""
        for text in texts:
            if not isinstance(text, str):
                raise TextInputError(f"text must be a string, got {type(text).__name__}")
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size])
            feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            out.append(run_session(self._text, self.provider, "text_embeds", feeds))
        return _stack(out, self.manifest.embedding_dim)

    # ---------------------------------------------------------------- self-test

    def self_test(self) -> None:
        golden = self.manifest.golden
        image = self.embed_images([builtin_test_image()], golden.recipe)[0]
        text = self.embed_texts([golden.text_input])[0]
        floor = SELF_TEST_MIN_COSINE[self.precision]
        for name, got, want in (("image", image, golden.image), ("text", text, golden.text)):
            cos = float(np.dot(got, np.asarray(want, dtype=np.float32)))
            if not np.isfinite(cos) or cos < floor:
                raise SelfTestError(
                    f"model {self.manifest.short_fingerprint} ({self.precision} on "
                    f"{self.provider}) fails its self-test: {name} embedding of the built-in "
                    f"input has cosine {cos:.6f} to the golden one (needs >= {floor}); "
                    "the files or the runtime changed since export"
                )
        logger.info("self-test passed (%s, %s)", self.precision, self.provider)


def _choose_precision(manifest: Manifest, settings: EncoderSettings) -> str:
    if settings.precision != "auto":
        if settings.precision not in manifest.variants:
            raise ManifestError(
                f"this export has no {settings.precision} variant (it has "
                f"{', '.join(manifest.variants)}); export with --fp16"
            )
        return settings.precision
    from indexer.encoders.sessions import resolve_provider

    on_gpu = resolve_provider(settings.provider) == CUDA
    return "fp16" if on_gpu and "fp16" in manifest.variants else "fp32"


def _stack(parts: list[npt.NDArray[np.float32]], dim: int) -> Embeddings:
    if not parts:
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
