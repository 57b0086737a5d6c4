"""The MedImageInsight architecture, read from a release's ``config.yaml``.

Only the three sections that define the network are read: ``IMAGE_ENCODER`` (DaViT,
its ``SPEC``, input size, mean and std), ``LANG_ENCODER`` (the text transformer) and
``UNICL_MODEL`` (the projection width). The training settings the release also carries
are ignored. Every dimension comes from the file: nothing here assumes 1024.

This module needs no torch; the exporter and the runtime manifest both use it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from indexer.errors import ModelConfigError


@dataclass(frozen=True)
class ImageTowerConfig:
    """DaViT hyper-parameters (``IMAGE_ENCODER`` and its ``SPEC``)."""

    image_size: tuple[int, int]  # (height, width), as the release lists it
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: tuple[int, ...]
    patch_stride: tuple[int, ...]
    patch_padding: tuple[int, ...]
    patch_prenorm: tuple[bool, ...]
    dim_embed: tuple[int, ...]
    num_heads: tuple[int, ...]
    num_groups: tuple[int, ...]
    depths: tuple[int, ...]
    window_size: int
    mlp_ratio: float = 4.0
    conv_at_attn: bool = True
    conv_at_ffn: bool = True
    dynamic_scale: bool = True

    @property
    def dim_out(self) -> int:
        return self.dim_embed[-1]


@dataclass(frozen=True)
class TextTowerConfig:
    """Text transformer hyper-parameters (``LANG_ENCODER``)."""

    context_length: int
    width: int
    heads: int
    layers: int
    vocab_size: int
    autoregressive: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Both towers and the shared projection width."""

    image: ImageTowerConfig
    text: TextTowerConfig
    dim_projection: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        img = dict(data["image"])
        for key in (
            "image_size",
            "mean",
            "std",
            "patch_size",
            "patch_stride",
            "patch_padding",
            "patch_prenorm",
            "dim_embed",
            "num_heads",
            "num_groups",
            "depths",
        ):
            img[key] = tuple(img[key])
        return cls(
            image=ImageTowerConfig(**img),
            text=TextTowerConfig(**data["text"]),
            dim_projection=int(data["dim_projection"]),
        )

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def _require(section: dict[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ModelConfigError(f"config.yaml: {where}.{key} is missing")
    return section[key]


def _ints(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, int) for v in value):
        raise ModelConfigError(f"config.yaml: {where} must be a list of integers, got {value!r}")
    return tuple(int(v) for v in value)


def parse_config(raw: dict[str, Any], vocab_size: int) -> ModelConfig:
    """Build a :class:`ModelConfig` from the parsed YAML of a release.

    ``vocab_size`` comes from the tokenizer (the release config does not carry it).
    """
    enc = _require(raw, "IMAGE_ENCODER", "")
    spec = _require(enc, "SPEC", "IMAGE_ENCODER")
    lang = _require(raw, "LANG_ENCODER", "")
    unicl = _require(raw, "UNICL_MODEL", "")
    name = enc.get("NAME", "davit_v1")
    if name not in ("davit_v1", "cls_davit_v1"):
        raise ModelConfigError(f"config.yaml: IMAGE_ENCODER.NAME {name!r} is not DaViT")
    if lang.get("TOKENIZER", "clip") != "clip":
        raise ModelConfigError(
            f"config.yaml: LANG_ENCODER.TOKENIZER {lang.get('TOKENIZER')!r} "
            "is not the CLIP tokenizer"
        )
    if not spec.get("STANDPARAM", True):
        raise ModelConfigError("config.yaml: muP-parameterised encoders are not supported")

    w = "IMAGE_ENCODER.SPEC"
    depths = _ints(_require(spec, "DEPTHS", w), f"{w}.DEPTHS")
    stages = len(depths)
    image = ImageTowerConfig(
        image_size=_ints(_require(enc, "IMAGE_SIZE", "IMAGE_ENCODER"), "IMAGE_SIZE")[:2],  # type: ignore[arg-type]
        mean=tuple(float(v) for v in enc.get("IMAGE_MEAN", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
        std=tuple(float(v) for v in enc.get("IMAGE_STD", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        patch_size=_ints(_require(spec, "PATCH_SIZE", w), f"{w}.PATCH_SIZE"),
        patch_stride=_ints(_require(spec, "PATCH_STRIDE", w), f"{w}.PATCH_STRIDE"),
        patch_padding=_ints(_require(spec, "PATCH_PADDING", w), f"{w}.PATCH_PADDING"),
        patch_prenorm=tuple(bool(v) for v in _require(spec, "PATCH_PRENORM", w)),
        dim_embed=_ints(_require(spec, "DIM_EMBED", w), f"{w}.DIM_EMBED"),
        num_heads=_ints(_require(spec, "NUM_HEADS", w), f"{w}.NUM_HEADS"),
        num_groups=_ints(_require(spec, "NUM_GROUPS", w), f"{w}.NUM_GROUPS"),
        depths=depths,
        window_size=int(spec.get("WINDOW_SIZE", 7)),
        mlp_ratio=float(spec.get("MLP_RATIO", 4.0)),
        conv_at_attn=bool(spec.get("CONV_AT_ATTN", True)),
        conv_at_ffn=bool(spec.get("CONV_AT_FFN", True)),
        dynamic_scale=bool(spec.get("DYNAMIC_SCALE", True)),
    )
    for field in (
        "patch_size",
        "patch_stride",
        "patch_padding",
        "patch_prenorm",
        "dim_embed",
        "num_heads",
        "num_groups",
    ):
        if len(getattr(image, field)) != stages:
            raise ModelConfigError(
                f"config.yaml: {w}.{field.upper()} has {len(getattr(image, field))} entries, "
                f"DEPTHS has {stages}"
            )
    for i, dim in enumerate(image.dim_embed):
        if dim % image.num_heads[i] or dim % image.num_groups[i]:
            raise ModelConfigError(
                f"config.yaml: stage {i} width {dim} is not divisible by "
                f"its heads ({image.num_heads[i]}) and groups "
                f"({image.num_groups[i]})"
            )
    text = TextTowerConfig(
        context_length=int(_require(lang, "CONTEXT_LENGTH", "LANG_ENCODER")),
        width=int(_require(lang, "WIDTH", "LANG_ENCODER")),
        heads=int(_require(lang, "HEADS", "LANG_ENCODER")),
        layers=int(_require(lang, "LAYERS", "LANG_ENCODER")),
        vocab_size=int(vocab_size),
        autoregressive=bool(lang.get("AUTOGRESSIVE", True)),
    )
    if text.autoregressive:
        raise ModelConfigError(
            "config.yaml: LANG_ENCODER.AUTOGRESSIVE is true; MedImageInsight's "
            "text tower is bidirectional and that is all this exporter builds"
        )
    if text.width % text.heads:
        raise ModelConfigError(
            f"config.yaml: LANG_ENCODER.WIDTH {text.width} is not divisible by HEADS {text.heads}"
        )
    dim_projection = int(_require(unicl, "DIM_PROJECTION", "UNICL_MODEL"))
    return ModelConfig(image=image, text=text, dim_projection=dim_projection)


def load_release_config(path: Path, vocab_size: int) -> ModelConfig:
    """Read ``config.yaml`` of a release (needs PyYAML, part of the ``export`` extra)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelConfigError(f"{path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{path} does not hold a mapping")
    return parse_config(raw, vocab_size)
