"""Decode + render + preprocess throughput per core, and the cores a GPU needs.

    python benchmarks/bench_imaging.py [--seconds 5] [--json out.json]

Single process, single thread (BLAS/OpenMP pinned to 1 before numpy loads). Each input
goes through the project's real path: ``decode_path`` (parse, decode, render with policy
viewer-v1) then ``preprocess`` (reference recipe, 480x480). Inputs:

- uncompressed CT: pydicom-data ``693_UNCR.dcm`` (512x512, 16-bit, explicit VR LE);
- JPEG 2000 CT: ``693_J2KR.dcm``, the same slice, lossless JPEG 2000;
- JPEG ultrasound: pydicom-data ``US1_UNCR.dcm`` (640x480 RGB) re-encoded here as JPEG
  baseline (quality 90, YBR_FULL_422), as ultrasound archives store it;
- PNG: that CT rendered to an 8-bit 512x512 PNG, and a 16-bit one;
- an extra row: a large radiograph, pydicom-data ``RG1_UNCR.dcm`` (1841x1955).

Baseline in the same run: PNG decode + preprocess (the cheapest input). "Cores for 300
images/s" = ceil(300 / images per second per core).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import io
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from indexer.encoders.preprocess import make_recipe, preprocess
from indexer.imaging import decode_path
from indexer.settings import ImagingSettings

RECIPE = make_recipe("reference", (480, 480), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GPU_RATE = 300.0


def _data_dir() -> Path:
    import data_store

    return Path(data_store.__file__).parent / "data"


def make_inputs(tmp: Path) -> dict[str, Path]:
    data = _data_dir()
    ct = data / "693_UNCR.dcm"
    inputs = {
        "CT uncompressed 512x512": ct,
        "CT JPEG 2000 512x512": data / "693_J2KR.dcm",
    }
    us = pydicom.dcmread(data / "US1_UNCR.dcm")
    rgb = us.pixel_array
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, subsampling=2)
    us.PixelData = encapsulate([buf.getvalue()])
    us.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    us.PhotometricInterpretation = "YBR_FULL_422"
    us.PlanarConfiguration = 0
    us_jpeg = tmp / "us_jpeg.dcm"
    us.save_as(us_jpeg, enforce_file_format=True)
    inputs["US JPEG baseline 640x480"] = us_jpeg
    rendered = decode_path(ct, ImagingSettings()).images[0].pixels[:, :, 0]
    png8 = tmp / "ct8.png"
    Image.fromarray(rendered).save(png8)
    inputs["PNG 8-bit 512x512"] = png8
    png16 = tmp / "ct16.png"
    Image.fromarray(rendered.astype(np.uint16) * 257).save(png16)
    inputs["PNG 16-bit 512x512"] = png16
    inputs["CR uncompressed 1841x1955"] = data / "RG1_UNCR.dcm"
    return inputs


def measure(path: Path, seconds: float) -> dict[str, Any]:
    settings = ImagingSettings()
    for _ in range(3):  # warm-up
        preprocess(decode_path(path, settings).images[0].pixels, RECIPE)
    decode_s, prep_s, total = [], [], []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(total) < 5:
        t0 = time.perf_counter()
        result = decode_path(path, settings)
        t1 = time.perf_counter()
        preprocess(result.images[0].pixels, RECIPE)
        t2 = time.perf_counter()
        decode_s.append(t1 - t0)
        prep_s.append(t2 - t1)
        total.append(t2 - t0)
    rate = len(total) / sum(total)
    return {
        "images": len(total),
        "images_per_s_per_core": round(rate, 1),
        "p50_ms": round(float(np.median(total)) * 1000, 2),
        "decode_render_p50_ms": round(float(np.median(decode_s)) * 1000, 2),
        "preprocess_p50_ms": round(float(np.median(prep_s)) * 1000, 2),
        "cores_for_300_per_s": math.ceil(GPU_RATE / rate),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import openjpeg
    import PIL

    print(
        f"cpu {platform.processor() or platform.machine()}, 1 thread; numpy {np.__version__}, "
        f"pydicom {pydicom.__version__}, Pillow {PIL.__version__}, openjpeg {openjpeg.__version__}"
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in make_inputs(Path(tmp)).items():
            results[name] = measure(path, args.seconds)
    baseline = results["PNG 8-bit 512x512"]["images_per_s_per_core"]
    print(
        f"\n{'input':<28} {'img/s/core':>10} {'vs PNG8':>8} {'p50 ms':>8} "
        f"{'decode ms':>10} {'prep ms':>8} {'cores@300/s':>11}"
    )
    for name, r in results.items():
        r["ratio_to_png8"] = round(r["images_per_s_per_core"] / baseline, 2)
        print(
            f"{name:<28} {r['images_per_s_per_core']:>10.1f} {r['ratio_to_png8']:>7.2f}x "
            f"{r['p50_ms']:>8.2f} {r['decode_render_p50_ms']:>10.2f} "
            f"{r['preprocess_p50_ms']:>8.2f} {r['cores_for_300_per_s']:>11d}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
