"""Near-duplicate pixels: how far apart (pHash bits) are copies of one image, and distinct
images that look alike; and what the hash costs next to decoding.

    python benchmarks/bench_duplicates.py [--json out.json]

Copies: the images of pydicom's and pydicom-data's test files that render with some
content (at least 64 pixels a side, grey-level standard deviation >= 10), rendered as
medsearch renders them, then saved as JPEG at quality 50, 75 and 95, as PNG, resized to
half and to 3/4, and "windowed differently" (contrast stretched by 1.3 and gamma 0.8, as
an export with another window would look), each decoded again and hashed. Distinct
images: every pair of those images, after keeping one image per SOP Instance UID and per
look (a mean absolute difference over 10 grey levels at 64x64 from every image kept: the
test files hold the same image in many transfer syntaxes, a colour-bar test pattern ~20
times). (pydicom's DICOMDIR series are 16x16 pixels:
too small to measure slices with; two slices of one series are never grouped anyway, see
``indexer/store/duplicates.py``.) The threshold is the bit distance that separates the
copies' 95th percentile from the distinct pairs' 1st, printed with what it catches and
what it confuses. Cost: hashing vs decoding + rendering, per image, in the same run.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.encoders.preprocess import prepare  # noqa: E402
from indexer.imaging.decode import decode_path  # noqa: E402
from indexer.imaging.phash import bits_apart, phash  # noqa: E402
from indexer.pipeline.ray_engine import model_binding  # noqa: E402
from indexer.settings import ImagingSettings  # noqa: E402


def _sources() -> list[Path]:
    import pydicom.data

    return sorted(Path(p) for p in pydicom.data.get_testdata_files("*.dcm"))


def _copies(pixels: np.ndarray) -> dict[str, np.ndarray]:
    image = Image.fromarray(pixels)
    out: dict[str, np.ndarray] = {}
    for quality in (50, 75, 95):
        buf = io.BytesIO()
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            buf, format="JPEG", quality=quality
        )
        out[f"jpeg{quality}"] = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    out["png"] = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    for name, scale in (("half", 0.5), ("three-quarters", 0.75)):
        size = (max(8, int(image.width * scale)), max(8, int(image.height * scale)))
        out[name] = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
    stretched = np.clip((pixels.astype(np.float64) / 255) ** 0.8 * 255 * 1.3 - 30, 0, 255)
    out["windowed"] = stretched.astype(np.uint8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = ImagingSettings()
    _, recipe = model_binding(ROOT / "tests" / "data" / "test_model", None)

    def model_input(pixels: np.ndarray, grey: bool) -> np.ndarray:
        """What the worker hashes: the model's input (480x480)."""
        return prepare(pixels, recipe, grey=grey)

    phash(np.zeros((64, 64), np.uint8))  # imports scipy: once per decoder process
    rendered: dict[str, np.ndarray] = {}
    sop: dict[str, str] = {}
    decode_s = hash_s = 0.0
    for path in _sources():
        started = time.perf_counter()
        result = decode_path(str(path), settings)
        elapsed = time.perf_counter() - started
        if not result.ok or not result.images:
            continue
        pixels = result.images[0].pixels
        if min(pixels.shape[:2]) < 64 or float(pixels.std()) < 10:
            continue
        prepared = model_input(pixels, result.images[0].grey)
        started = time.perf_counter()
        phash(prepared)
        hash_s += time.perf_counter() - started
        decode_s += elapsed
        rendered[str(path)] = pixels
        sop[str(path)] = str(result.images[0].metadata.sop_instance_uid or path)
    small = {
        k: np.asarray(Image.fromarray(v).convert("L").resize((64, 64)), dtype=np.float64)
        for k, v in rendered.items()
    }
    unique: list[str] = []  # one image per SOP Instance UID and per look
    for key in sorted(rendered):
        if all(
            sop[key] != sop[u] and float(np.abs(small[key] - small[u]).mean()) > 10 for u in unique
        ):
            unique.append(key)
    rendered = {k: rendered[k] for k in unique}

    def hashed(pixels: np.ndarray) -> str:
        return phash(model_input(pixels, pixels.ndim == 2))

    copies: dict[str, list[int]] = {}
    for pixels in rendered.values():
        base = hashed(pixels)
        for kind, copy in _copies(pixels).items():
            copies.setdefault(kind, []).append(bits_apart(base, hashed(copy)))
    hashes = {k: hashed(v) for k, v in rendered.items()}
    distinct = [
        bits_apart(hashes[a], hashes[b]) for a, b in itertools.combinations(sorted(rendered), 2)
    ]
    copy_all = [d for ds in copies.values() for d in ds]
    threshold = int((np.percentile(copy_all, 95) + np.percentile(distinct, 1)) // 2)
    results: dict[str, Any] = {
        "images": len(rendered),
        "copies_bits": {
            k: {"max": max(v), "p95": float(np.percentile(v, 95))} for k, v in copies.items()
        },
        "distinct_pairs": len(distinct),
        "distinct_min_bits": min(distinct),
        "distinct_p1_bits": float(np.percentile(distinct, 1)),
        "distinct_median_bits": float(np.median(distinct)),
        "distinct_confused": round(float(np.mean([d <= threshold for d in distinct])), 4),
        "threshold": threshold,
        "copies_caught": round(float(np.mean([d <= threshold for d in copy_all])), 4),
        "hash_ms_per_image": round(1000 * hash_s / len(rendered), 3),
        "decode_ms_per_image": round(1000 * decode_s / len(rendered), 3),
        "hash_over_decode": round(hash_s / decode_s, 4),
    }
    print(f"near-duplicates: {len(rendered)} rendered test images, {len(copy_all)} copies")
    for kind, stats in results["copies_bits"].items():
        print(f"  copies {kind:15s}: max {stats['max']:2d} bits, p95 {stats['p95']:.1f}")
    print(
        f"  distinct images     : {len(distinct)} pairs, min {min(distinct)} bits, "
        f"1st percentile {results['distinct_p1_bits']:.1f}, median "
        f"{results['distinct_median_bits']:.1f}"
    )
    print(
        f"  threshold: {threshold} bits; catches {results['copies_caught']:.1%} of the "
        f"copies, confuses {results['distinct_confused']:.2%} of the distinct pairs"
    )
    print(
        f"  cost: hash {results['hash_ms_per_image']:.2f} ms (of the 480x480 input, after the "
        f"resize the worker does anyway) vs decode+render "
        f"{results['decode_ms_per_image']:.2f} ms per image = {results['hash_over_decode']:.1%} "
        "(target <= 5%)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
