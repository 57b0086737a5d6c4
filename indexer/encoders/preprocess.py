"""Image preprocessing recipes: from any PIL image or array to the encoder's input.

A recipe is part of an index's identity: the manifest names the default one, an index
records the one it was built with, and queries are preprocessed the same way.

``reference``
    The reference implementation's inference transform: RGB, PIL bicubic resize to the
    model's input size (no crop, aspect not kept), scale to [0, 1], normalise with the
    model's mean/std (ImageNet). The default.
``azure``
    What the hosted Azure endpoint does first: squash to 512x512 (PIL bicubic) and
    re-encode as JPEG quality 75; then the ``reference`` path. Use it to match embeddings
    obtained from the hosted endpoint.

Every input mode becomes 8-bit RGB first (:func:`to_rgb`), unlike the reference forks,
which only convert grey images and break on the rest:

- ``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion
  (palette with its transparency is composited like RGBA).
- ``LA``, ``RGBA``, ``PA`` and palette transparency: alpha-composited onto black, the
  background of a radiograph.
- ``I;16*`` (16-bit grey, e.g. PNG exports): scaled by the type's range, ``v * 255 / 65535``
  as an image viewer shows it, never clamped at 255 as Pillow's ``convert("L")`` does.
- ``I`` (32-bit) and ``F`` (float): min-max scaled to 0..255 (they have no fixed range).
- NumPy arrays (H, W), (H, W, 1), (H, W, 3) or (H, W, 4): ``uint8`` as is; ``uint16`` scaled
  by 65535 (16-bit RGB PNGs decode to this via :func:`image_from_array`); other integer
  and float types min-max scaled.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from indexer.errors import ImageInputError, ManifestError

if TYPE_CHECKING:
    from indexer.encoders.manifest import Manifest

RecipeName = Literal["reference", "azure"]
RECIPES: tuple[RecipeName, ...] = ("reference", "azure")

_BICUBIC = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class Recipe:
    """A named preprocessing recipe with the parameters it was defined with."""

    name: RecipeName
    size: tuple[int, int]  # (height, width) of the encoder input
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    squash: int | None = None  # first resize to squash x squash (azure: 512)
    jpeg_quality: int | None = None  # then re-encode as JPEG at this quality (azure: 75)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_recipe(
    name: str,
    size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> Recipe:
    if name == "reference":
        return Recipe("reference", size, mean, std)
    if name == "azure":
        return Recipe("azure", size, mean, std, squash=512, jpeg_quality=75)
    raise ImageInputError(f"unknown preprocessing recipe {name!r}; known: {', '.join(RECIPES)}")


def _scale_to_uint8(arr: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return np.round(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    data = arr.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        raise ImageInputError("image has no finite pixel values")
    lo, hi = float(data[finite].min()), float(data[finite].max())
    data[~finite] = lo
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((data - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def image_from_array(arr: npt.NDArray[Any]) -> Image.Image:
    """An 8-bit RGB image from a (H, W[, C]) array of any numeric type (see module doc)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageInputError(f"cannot read an image from an array of shape {arr.shape}")
    if arr.size == 0:
        raise ImageInputError("image is empty")
    if arr.ndim == 3 and arr.shape[2] == 4:
        rgb = arr[:, :, :3].astype(np.float64)
        alpha = arr[:, :, 3].astype(np.float64)
        amax = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else 1.0
        arr = (rgb * (np.clip(alpha / amax, 0.0, 1.0))[:, :, None]).astype(arr.dtype)
    u8 = _scale_to_uint8(arr)
    img = Image.fromarray(u8)
    return img.convert("RGB") if img.mode != "RGB" else img


def to_rgb(image: Image.Image | npt.NDArray[Any]) -> Image.Image:
    """Convert any supported image to 8-bit RGB, as the encoder expects."""
    if isinstance(image, np.ndarray):
        return image_from_array(image)
    if image.width == 0 or image.height == 0:
        raise ImageInputError("image is empty")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return image_from_array(np.asarray(image))
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageInputError(f"cannot convert image mode {mode!r} to RGB: {exc}") from exc


def _squash_jpeg(img: Image.Image, size: int, quality: int) -> Image.Image:
    small = img.resize((size, size), _BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as jpeg:
        return jpeg.convert("RGB")


GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


def is_grey(image: Image.Image | npt.NDArray[Any]) -> bool:
    """Whether ``image`` has one colour channel (kept as one until normalisation)."""
    if isinstance(image, np.ndarray):
        return image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    return image.mode in GREY_MODES or image.mode.startswith("I;16")


def prepare(
    image: Image.Image | npt.NDArray[Any], recipe: Recipe, *, grey: bool | None = None
) -> npt.NDArray[np.uint8]:
    """The model's input before normalisation: ``uint8`` at the recipe's size.

    (H, W) for a grey image, (H, W, 3) otherwise. A grey image stays one channel through
    the resize: PIL's bicubic filter treats channels independently, so this equals
    resizing its RGB replica, at a third of the work and of the bytes that cross between
    processes. ``grey=True`` says that an (H, W, 3) array is a grey image replicated
    to RGB (the renderer's output), so its first channel is used. The ``azure`` recipe's
    JPEG step needs RGB (the codec's chroma handling differs), so it always gets RGB.
    """
    grey = is_grey(image) if grey is None else grey
    if grey and recipe.jpeg_quality is None:
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.dtype == np.uint8:
            img = Image.fromarray(np.ascontiguousarray(image[:, :, 0]))
        else:
            img = to_rgb(image).convert("L")
    else:
        img = to_rgb(image)
        if recipe.squash is not None:
            img = _squash_jpeg(img, recipe.squash, recipe.jpeg_quality or 75)
    height, width = recipe.size
    img = img.resize((width, height), _BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def normalise(inputs: Sequence[npt.NDArray[np.uint8]], recipe: Recipe) -> npt.NDArray[np.float32]:
    """Prepared inputs (see :func:`prepare`) to the encoder's (B, 3, H, W) ``float32``.

    The reference's ToTensor + Normalize, ``(v / 255 - mean) / std``, in float32 and in the
    same order (so the same bits), written straight into the output with NumPy ufuncs,
    which release the GIL: the pipeline's other threads keep their decoders fed meanwhile.
    A grey input is scaled once and replicated to three channels here, at the last step.
    """
    height, width = recipe.size
    out = np.empty((len(inputs), 3, height, width), dtype=np.float32)
    mean = np.asarray(recipe.mean, dtype=np.float32)
    std = np.asarray(recipe.std, dtype=np.float32)
    scaled = np.empty((height, width), dtype=np.float32)
    for n, arr in enumerate(inputs):
        if arr.shape[:2] != (height, width) or arr.dtype != np.uint8:
            raise ImageInputError(
                f"prepared input of shape {arr.shape} ({arr.dtype}), expected "
                f"{height}x{width} uint8"
            )
        for c in range(3):
            if c == 0 or arr.ndim == 3:
                channel = arr if arr.ndim == 2 else arr[:, :, c]
                np.divide(channel, np.float32(255.0), out=scaled, dtype=np.float32)
            np.subtract(scaled, mean[c], out=out[n, c])
            np.divide(out[n, c], std[c], out=out[n, c])
    return out


def preprocess(image: Image.Image | npt.NDArray[Any], recipe: Recipe) -> npt.NDArray[np.float32]:
    """One image to a normalised (3, H, W) ``float32`` array."""
    out: npt.NDArray[np.float32] = normalise([prepare(image, recipe)], recipe)[0]
    return out


def builtin_test_image() -> Image.Image:
    """A deterministic synthetic image (no file, no RNG) used by the self-test.

    A 16-bit-like grey ramp with a bright disc and a dark bar at 317x253, so the path
    through mode conversion, non-square resize and normalisation is exercised.
    """
    h, w = 253, 317
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 40.0 + 120.0 * xx / (w - 1) + 40.0 * np.sin(yy / 9.0)
    img[(yy - 120) ** 2 + (xx - 170) ** 2 < 55**2] = 235.0
    img[200:215, 30:280] = 10.0
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def manifest_recipe(manifest: Manifest, name: str | None = None) -> Recipe:
    """The recipe ``name`` (default: the model's default) as the model's manifest defines it."""
    name = name or manifest.preprocessing.default
    spec = manifest.preprocessing.recipes.get(name)
    if spec is None:
        known = ", ".join(manifest.preprocessing.recipes)
        raise ManifestError(f"recipe {name!r} is not defined for this model; known: {known}")
    return Recipe(**spec.model_dump())
