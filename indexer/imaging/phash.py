"""Perceptual hashes of rendered images: near-duplicate pixels, apart from "similar".

The ``imagehash`` library's pHash (DCT of the 32x32 grey image, its 8x8 lowest
frequencies against their median: 64 bits) of the model's input (the rendering after
windowing, resized to the recipe's 480x480), computed in the decode worker as it hands the
input over: hashing the full-resolution rendering cost 13-24% of decoding on large images,
the 480x480 input well under 1%. Two renderings of
the same image (re-encoded as JPEG or PNG, resized, saved by another program) differ in a
few bits; distinct images, even neighbouring slices of one series, in many more. The
distance is the number of differing bits (Hamming, 0-64); ``NEAR_DUPLICATE_BITS`` is the
default threshold, chosen from measurement (``benchmarks/bench_duplicates.py``).
"""

from __future__ import annotations

import imagehash
import numpy as np
import numpy.typing as npt
from PIL import Image

NEAR_DUPLICATE_BITS = 10  # see benchmarks/RESULTS.md, "Near-duplicates"
REDUCED_SIDE = 128  # box-reduced to about this first: pHash looks at 32x32 anyway


def phash(pixels: npt.NDArray[np.uint8]) -> str:
    """The 64-bit pHash of a rendering, as 16 hex digits. The rendering is first reduced
    by an integer box filter to about ``REDUCED_SIDE`` pixels a side (cheap, and what
    pHash's own 32x32 resize keeps of it is the same)."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    factor = min(image.size) // REDUCED_SIDE
    if factor > 1:
        image = image.reduce(factor)
    return str(imagehash.phash(image))


def warm_up() -> None:
    """Hash a small blank image: ``imagehash`` imports SciPy's FFT (~0.1 s) on its first
    pHash. A decoder process calls this as it starts, so its first job does not pay it."""
    phash(np.zeros((REDUCED_SIDE, REDUCED_SIDE), dtype=np.uint8))


def bits_apart(a: str, b: str) -> int:
    """Hamming distance of two hashes from :func:`phash`."""
    return int((int(a, 16) ^ int(b, 16)).bit_count())
