"""Parity with the reference implementation (``medimageinsights==0.1.1``).

The reference is built with seeded random weights at small size, its state dict saved
in the release layout, exported by our exporter, and both are run on the same real
images (pydicom test files rendered to PNG, odd sizes, RGB, JPEG) and prompts. The
reference runs its own path end to end: base64 image -> its decoder -> its torchvision
transform -> ``encode_image``; text -> its ``CLIPTokenizer`` padded to 77 -> ``encode_text``.
The full-size comparison runs in ``benchmarks/bench_encoders.py``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from indexer.encoders.encoder import Encoder
from indexer.settings import EncoderSettings
from tests.conftest import needs_reference
from tests.encoders.test_tokenizer import PROMPTS

pytestmark = [needs_reference, pytest.mark.slow]

SEED = 1234


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def parity_images(real_images: dict[str, Image.Image]) -> dict[str, bytes]:
    ct = real_images["CT_small.dcm"]
    files = {f"{name}.png": _encode(img, "PNG") for name, img in real_images.items()}
    files["CT_small_crop_37x53.png"] = _encode(ct.crop((5, 9, 42, 62)), "PNG")
    files["CT_small_1x300.png"] = _encode(ct.resize((300, 1)), "PNG")
    files["US1_UNCR.jpg"] = _encode(real_images["US1_UNCR.dcm"], "JPEG")
    files["MR_small.jpg"] = _encode(real_images["MR_small.dcm"], "JPEG")
    return files


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, test_model_dir: Path
) -> tuple[Any, dict[str, Any], Path]:
    from indexer.model.export import export_release
    from indexer.model.synthetic import small_config, write_release
    from tests.model.reference import build_reference

    raw = small_config()
    ref, opt = build_reference(raw, SEED)
    root = tmp_path_factory.mktemp("parity")
    tok = test_model_dir / "tokenizer"
    release = write_release(
        root / "release", raw, ref.state_dict(), tok / "vocab.json", tok / "merges.txt"
    )
    export_release(release, root / "model", fp16=True)
    return ref, opt, root / "model"


def test_images_match_the_reference(
    exported: tuple[Any, dict[str, Any], Path], real_images: dict[str, Image.Image]
) -> None:
    import torch
    from MedImageInsights.ImageDataLoader import build_transforms
    from MedImageInsights.Models.medimageinsightmodel import MedImageInsight

    ref, opt, model_dir = exported
    transform = build_transforms(opt, False)
    ours = Encoder.load(model_dir, EncoderSettings(provider="cpu"))
    files = parity_images(real_images)
    worst = {}
    for name, data in files.items():
        ref_img = MedImageInsight.decode_base64_image(base64.b64encode(data).decode())
        with torch.no_grad():
            want = ref.encode_image(transform(ref_img)[None]).numpy()[0]
        got = ours.embed_images([Image.open(io.BytesIO(data))])[0]
        worst[name] = float(got @ want)
    assert min(worst.values()) >= 0.9999, worst


def test_texts_match_the_reference(exported: tuple[Any, dict[str, Any], Path]) -> None:
    import torch

    ref, _, model_dir = exported
    ours = Encoder.load(model_dir, EncoderSettings(provider="cpu"))
    prompts = [*PROMPTS, "X-RAY CHEST PA: NO ACUTE FINDINGS.", "MRI 3T, 2 lesions (4mm, 7mm)"]
    tokens = ref.tokenizer(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    for row, prompt in enumerate(prompts):
        real = tokens["input_ids"][row][tokens["attention_mask"][row] == 1].tolist()
        assert ours.tokenizer.ids(prompt) == real, prompt
    with torch.no_grad():
        want = ref.encode_text(dict(tokens)).numpy()
    got = ours.embed_texts(prompts)
    cos = (got * want).sum(1)
    assert cos.min() >= 0.9999, dict(zip(prompts, cos.round(6).tolist(), strict=True))


def test_fp16_agrees_with_fp32(
    exported: tuple[Any, dict[str, Any], Path], real_images: dict[str, Image.Image]
) -> None:
    _, _, model_dir = exported
    fp32 = Encoder.load(model_dir, EncoderSettings(provider="cpu", precision="fp32"))
    fp16 = Encoder.load(model_dir, EncoderSettings(provider="cpu", precision="fp16"))
    images = list(real_images.values())
    assert (fp16.embed_images(images) * fp32.embed_images(images)).sum(1).min() >= 0.999
    assert (fp16.embed_texts(PROMPTS) * fp32.embed_texts(PROMPTS)).sum(1).min() >= 0.999


def test_logit_scale_is_carried(exported: tuple[Any, dict[str, Any], Path]) -> None:
    ref, _, model_dir = exported
    ours = Encoder.load(model_dir, EncoderSettings(provider="cpu"))
    assert ours.logit_scale == pytest.approx(float(ref.logit_scale), abs=1e-6)
