"""An independent renderer agrees: dcmtk's ``dcm2pnm`` with the same window.

For every single-frame grey file of the corpus that we render with a stored window
(``voi == "window"``) dcm2pnm gets ``+Wi 1`` (the file's first window); for the
percentile clip it gets ``+Ww c w`` chosen so that its LINEAR function maps exactly our
1st..99th percentile range to black..white. Both apply the modality LUT and show
MONOCHROME1 inverted. Overlays are off in both. Per-file agreement: share of pixels
within +-1 grey level, and the largest difference.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array

from indexer.imaging import decode_path
from indexer.settings import ImagingSettings
from tests.imaging.corpus import corpus_files, label

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).parents[1] / "artifacts"
MIN_AGREEMENT = 0.99  # share of pixels within +-1 grey level
# dcmtk 3.6.7 misreads 32-bit explicit big endian pixel data: this file holds the same
# values as rtdose_1frame.dcm (little endian), which dcmtk renders exactly as we do, and
# our renderings of the two are identical (checked below).
DCMTK_BIG_ENDIAN_32 = ("test_files/rtdose_expb_1frame.dcm", "rtdose_1frame.dcm")


def _percentile_window(path: Path) -> tuple[float, float]:
    ds = dcmread(path)
    x = np.asarray(apply_modality_lut(pixel_array(ds), ds), dtype=np.float64)
    lo, hi = (float(v) for v in np.percentile(x[np.isfinite(x)], [1.0, 99.0]))
    if hi <= lo:
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    width = hi - lo + 1.0  # DICOM LINEAR: (x - (c - 0.5)) / (w - 1) + 0.5
    return lo + 0.5 + (hi - lo) / 2.0, width


def _dcm2pnm(path: Path, out: Path, window: list[str]) -> np.ndarray | None:
    run = subprocess.run(
        ["dcm2pnm", "--no-overlays", *window, "--write-raw-pnm", str(path), str(out)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if run.returncode != 0 or not out.exists():
        return None
    with Image.open(out) as img:
        return np.asarray(img.convert("L"), dtype=np.int16)


def test_grey_files_agree_with_dcm2pnm(tmp_path: Path) -> None:
    if shutil.which("dcm2pnm") is None:
        pytest.skip("dcmtk's dcm2pnm is not installed (Debian package dcmtk)")
    settings = ImagingSettings()
    rows = []
    for path in corpus_files():
        if path.suffix.lower() not in (".dcm", "") or path.stat().st_size > 64 << 20:
            continue
        result = decode_path(path, settings)
        if not result.ok:
            continue
        meta = result.images[0].metadata
        grey = meta.photometric_interpretation in ("MONOCHROME1", "MONOCHROME2")
        if (
            not grey
            or (meta.number_of_frames or 1) != 1
            or meta.voi not in ("window", "percentile", "percentile-fallback")
        ):
            continue
        if meta.voi == "window":
            window = ["--use-window", "1"]
        else:
            center, width = _percentile_window(path)
            window = ["--set-window", f"{center:.6f}", f"{width:.6f}"]
        theirs = _dcm2pnm(path, tmp_path / "out.pgm", window)
        name = label(path)
        if theirs is None:
            rows.append({"file": name, "voi": meta.voi, "dcmtk": "cannot render"})
            continue
        ours = result.images[0].pixels[:, :, 0].astype(np.int16)
        if theirs.shape != ours.shape:
            rows.append({"file": name, "voi": meta.voi, "dcmtk": f"shape {theirs.shape}"})
            continue
        diff = np.abs(ours - theirs)
        rows.append(
            {
                "file": name,
                "voi": meta.voi,
                "photometric": meta.photometric_interpretation,
                "within_1": round(float(np.mean(diff <= 1)), 5),
                "mean_abs": round(float(diff.mean()), 3),
                "max_abs": int(diff.max()),
            }
        )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dcmtk_agreement.json").write_text(json.dumps(rows, indent=2))
    compared = [r for r in rows if "within_1" in r]
    agree = [r for r in compared if float(r["within_1"]) >= MIN_AGREEMENT]
    print(
        f"\ndcmtk agreement: {len(agree)}/{len(compared)} files >= {MIN_AGREEMENT:.0%} "
        f"of pixels within +-1; {len(rows) - len(compared)} not rendered by dcmtk"
    )
    for r in rows:
        print("  ", r)
    assert len(compared) >= 40
    disagree = [
        r
        for r in compared
        if float(r["within_1"]) < MIN_AGREEMENT and r["file"] != DCMTK_BIG_ENDIAN_32[0]
    ]
    assert not disagree, disagree
    expb = corpus_files()[0].parent / DCMTK_BIG_ENDIAN_32[0].split("/", 1)[1]
    little = expb.with_name(DCMTK_BIG_ENDIAN_32[1])
    if expb.exists() and little.exists():
        a = decode_path(expb, settings).images[0].pixels
        b = decode_path(little, settings).images[0].pixels
        assert np.array_equal(a, b)
