"""Benchmark our ONNX encoders against the reference PyTorch implementation on CPU.

Builds the reference model (``MedImageInsights``, the pip package ``medimageinsights``)
with seeded random weights, writes them in the release layout, exports them with our
exporter (fp32; skipped when the work directory already holds an export of the same
checkpoint), and loads our :class:`~indexer.encoders.encoder.Encoder`. Both then get the
same inputs:

- images: real scanner images from pydicom's test files (min-max rendered to 8 bits)
  plus a synthetic RGB image, preprocessed once with our ``reference`` recipe; the same
  float32 (N, 3, 480, 480) array goes to both. Throughput in images/s at batch 1 and
  batch 8 after a warm-up call, and the cosine between the two embeddings of each image;
- text: radiology prompts of typical length, one query at a time. The reference pads to
  the context length (``padding="max_length"``, as it does); ours runs only the real
  tokens (``Encoder.embed_texts([q])``). Latency includes tokenisation on both sides.

Usage (needs the dev extra: torch, medimageinsights, pydicom-data)::

    python benchmarks/bench_encoders.py --json benchmarks/_work/bench_full.json
    python benchmarks/bench_encoders.py --size small --image-reps 1 --json /tmp/b.json

The full-size model is ~625 GFLOP per image; on a 2-core machine the reference takes
several seconds per image, so the default is one timed pass over the 8 images per batch
size. The first full-size export takes several minutes and is reused afterwards.
Exit status 1 when an embedding pair has cosine below 0.9999.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import multiprocessing
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = ROOT / "benchmarks" / "_work"
TOKENIZER_DIR = ROOT / "tests" / "data" / "test_model" / "tokenizer"
MIN_COSINE = 0.9999

#: Real images: pydicom's bundled test files, then pydicom-data's larger ones.
DICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR2_UNCR.dcm",
    "RG1_UNCR.dcm",
    "RG3_UNCR.dcm",
    "US1_UNCR.dcm",
    "OBXXXX1A.dcm",
    "SC_rgb.dcm",
)
NUM_IMAGES = 8  # the largest batch size: one batch-8 call covers every image once

QUERIES = (
    "x-ray chest anteroposterior Atelectasis",
    "chest radiograph posteroanterior view showing right lower lobe pneumonia",
    "CT head without contrast acute intracranial hemorrhage",
    "MRI brain T2 FLAIR hyperintense lesion in the left frontal lobe",
    "ultrasound abdomen gallbladder with multiple gallstones",
    "x-ray left knee osteoarthritis with joint space narrowing",
    "CT chest with contrast pulmonary embolism in the right main pulmonary artery",
    "portable chest x-ray endotracheal tube and central venous catheter in place",
    "mammogram craniocaudal view spiculated mass upper outer quadrant",
    "CT abdomen pelvis small bowel obstruction",
    "x-ray wrist distal radius fracture",
    "MRI lumbar spine disc herniation at L4-L5 compressing the nerve root",
    "chest x-ray cardiomegaly with bilateral pleural effusions",
    "normal chest radiograph no acute cardiopulmonary abnormality",
    "CT angiography head aneurysm of the anterior communicating artery",
    "x-ray hand pediatric bone age assessment",
    "ultrasound thyroid hypoechoic nodule with microcalcifications",
    "chest x-ray pneumothorax on the left with mediastinal shift",
    "MRI knee anterior cruciate ligament tear",
    "fundus photograph diabetic retinopathy with microaneurysms and hard exudates",
)

Embed = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


# --------------------------------------------------------------------------- setup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size",
        choices=("full", "small"),
        default="full",
        help="full: the released architecture; small: synthetic.small_config()",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="where the release and the export are kept (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--image-reps",
        type=int,
        default=1,
        help=f"timed passes over the {NUM_IMAGES} images per batch size and "
        "implementation, after one warm-up call (default: %(default)s)",
    )
    parser.add_argument(
        "--text-reps",
        type=int,
        default=1,
        help="timed passes over the 20 queries (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads and ONNX Runtime intra-op threads (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the random weights")
    parser.add_argument("--verbose", action="store_true", help="log the exporter and loader")
    args = parser.parse_args(argv)
    if args.image_reps < 1 or args.text_reps < 1 or args.threads < 1:
        parser.error("--image-reps, --text-reps and --threads must be >= 1")
    return args


def device_info(threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        cpu = platform.processor() or "unknown"
    simd = [
        f
        for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
        if f in flags
    ]
    return {
        "cpu": cpu,
        "simd": simd,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }


def architecture(size: str) -> dict[str, Any]:
    from indexer.model.synthetic import FULL, small_config

    return copy.deepcopy(FULL) if size == "full" else small_config()


def build_reference(cfg: dict[str, Any], seed: int) -> Any:
    """The reference UniCL model at ``cfg``'s dims, with its own seeded random init."""
    import MedImageInsights
    import torch
    from MedImageInsights.Models.UniCLModel import build_unicl_model
    from MedImageInsights.Utils.Arguments import load_opt_from_config_files

    base = Path(MedImageInsights.__file__).parent / "v20240927"
    opt = load_opt_from_config_files([str(base / "config.yaml")])
    opt["IMAGE_ENCODER"]["SPEC"].update(copy.deepcopy(cfg["IMAGE_ENCODER"]["SPEC"]))
    opt["LANG_ENCODER"].update(copy.deepcopy(cfg["LANG_ENCODER"]))
    opt["UNICL_MODEL"].update(copy.deepcopy(cfg["UNICL_MODEL"]))
    opt["LANG_ENCODER"]["PRETRAINED_TOKENIZER"] = str(
        base / "language_model" / "clip_tokenizer_v4162"
    )
    opt["UNICL_MODEL"]["LOAD_PRETRAINED"] = False
    opt["IMAGE_ENCODER"]["SPEC"]["ENABLE_CHECKPOINT"] = False
    torch.manual_seed(seed)
    return build_unicl_model(opt).eval()


def _export_child(release: Path, model_dir: Path, verbose: bool) -> None:
    from indexer.model.export import export_release

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore")
    export_release(release, model_dir, fp16=False, overwrite=True)


def prepare_export(
    ref: Any, cfg: dict[str, Any], workdir: Path, verbose: bool
) -> tuple[Path, dict[str, Any]]:
    """Write ``ref``'s weights as a release and export it, unless already exported."""
    from indexer.encoders.manifest import read_manifest, sha256_file
    from indexer.errors import ModelError
    from indexer.model.synthetic import CHECKPOINT_NAME, write_release

    release, model_dir = workdir / "release", workdir / "model"
    t0 = time.perf_counter()
    write_release(
        release, cfg, ref.state_dict(), TOKENIZER_DIR / "vocab.json", TOKENIZER_DIR / "merges.txt"
    )
    checkpoint_sha = sha256_file(release / "vision_model" / CHECKPOINT_NAME)
    config_sha = sha256_file(release / "config.yaml")
    write_s = time.perf_counter() - t0
    reused = False
    try:
        old = read_manifest(model_dir)
        reused = (
            old.source.checkpoint_sha256 == checkpoint_sha
            and old.source.config_sha256 == config_sha
            and "fp32" in old.variants
        )
    except (ModelError, OSError, ValueError):
        pass
    export_s = None
    if not reused:
        print(f"exporting {release} -> {model_dir} (fp32, in a child process) ...", flush=True)
        t0 = time.perf_counter()
        # a separate process: the exporter's memory and threads are gone before timing
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_export_child, args=(release, model_dir, verbose))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"export of {release} failed (exit status {child.exitcode})")
        export_s = time.perf_counter() - t0
    return model_dir, {
        "checkpoint_sha256": checkpoint_sha,
        "export_reused": reused,
        "export_s": export_s,
        "write_release_s": write_s,
    }


# --------------------------------------------------------------------------- inputs


def _render(arr: npt.NDArray[Any]) -> Image.Image:
    """Min-max to 8 bits (first frame of a multi-frame image)."""
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] != 3):
        arr = arr[0]
    data = arr.astype(np.float64)
    data = (data - data.min()) / max(float(data.max() - data.min()), 1e-12) * 255.0
    return Image.fromarray(np.round(data).astype(np.uint8))


def synthetic_rgb(height: int = 300, width: int = 400) -> Image.Image:
    """A deterministic colour image (gradients, a disc, a bar), non-square."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255.0 * xx / (width - 1)
    green = 127.5 + 100.0 * np.sin(yy / 11.0) * np.cos(xx / 17.0)
    blue = 255.0 * yy / (height - 1)
    img = np.stack([red, green, blue], axis=-1)
    img[(yy - 140) ** 2 + (xx - 230) ** 2 < 60**2] = (240.0, 30.0, 60.0)
    img[230:250, 20:380] = (10.0, 200.0, 20.0)
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8))


def load_images() -> list[tuple[str, Image.Image]]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    images: list[tuple[str, Image.Image]] = []
    for name in DICOM_FILES:
        if len(images) >= NUM_IMAGES - 1:
            break
        try:
            path = get_testdata_file(name)
            if path is None:
                continue
            images.append((name, _render(dcmread(path).pixel_array)))
        except Exception as exc:  # noqa: BLE001 - a missing decoder or data package: use the others
            print(f"skipping {name}: {exc}", file=sys.stderr)
    images.append(("synthetic_rgb", synthetic_rgb()))
    base = list(images)
    while len(images) < NUM_IMAGES:  # only if pydicom-data is missing
        name, img = base[len(images) % len(base)]
        images.append((f"{name}#{len(images)}", img))
    return images


# --------------------------------------------------------------------------- timing


def time_images(
    embed: Embed, pixels: npt.NDArray[np.float32], batch: int, reps: int
) -> dict[str, Any]:
    """Warm up with one call of ``batch`` images, then ``reps`` timed passes over all."""
    t0 = time.perf_counter()
    embed(pixels[:batch])
    warmup_s = time.perf_counter() - t0
    passes, emb = [], np.zeros(0, dtype=np.float32)
    for _ in range(reps):
        t0 = time.perf_counter()
        parts = [embed(pixels[s : s + batch]) for s in range(0, len(pixels), batch)]
        passes.append(time.perf_counter() - t0)
        emb = np.concatenate(parts)
    return {
        "images_per_s": len(pixels) * reps / sum(passes),
        "pass_s": passes,
        "warmup_s": warmup_s,
        "embeddings": emb,
    }


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "n": len(samples),
    }


def cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        warnings.filterwarnings("ignore")
        for name in ("MedImageInsights", "transformers", "timm"):
            logging.getLogger(name).setLevel(logging.ERROR)

    import torch

    from indexer.encoders.encoder import Encoder
    from indexer.encoders.preprocess import preprocess
    from indexer.settings import EncoderSettings

    torch.set_num_threads(args.threads)
    device = device_info(args.threads)
    cfg = architecture(args.size)
    workdir = args.workdir / args.size

    print(f"== medsearch encoder benchmark: {args.size} model, CPU ==")
    print(f"cpu      {device['cpu']} ({', '.join(device['simd']) or 'no AVX2'})")
    print(
        f"cores    {device['logical_cpus']} logical, {device['usable_cpus']} usable; "
        f"{args.threads} threads for torch and ONNX Runtime"
    )
    print(
        f"versions onnxruntime {device['onnxruntime']}, torch {device['torch']}, "
        f"numpy {device['numpy']}, python {device['python']}"
    )

    t0 = time.perf_counter()
    ref = build_reference(cfg, args.seed)
    build_s = time.perf_counter() - t0
    n_img = sum(p.numel() for p in ref.image_encoder.parameters()) + ref.image_projection.numel()
    n_txt = sum(p.numel() for p in ref.lang_encoder.parameters()) + ref.lang_projection.numel()
    print(
        f"reference built in {build_s:.1f} s: image tower {n_img / 1e6:.1f} M params, "
        f"text tower {n_txt / 1e6:.1f} M params (seed {args.seed})"
    )

    model_dir, export = prepare_export(ref, cfg, workdir, args.verbose)
    enc = Encoder.load(
        model_dir,
        EncoderSettings(
            provider="cpu", self_test=True, intra_op_threads=args.threads, precision="fp32"
        ),
    )
    how = "reused" if export["export_reused"] else f"exported in {export['export_s']:.1f} s"
    print(
        f"our model {model_dir} ({how}), fingerprint {enc.manifest.short_fingerprint}, "
        f"{enc.precision} on {enc.provider}, self-test passed"
    )

    # ---- images
    images = load_images()
    recipe = enc.recipe("reference")
    pixels = np.stack([preprocess(img, recipe) for _, img in images]).astype(np.float32)
    print(
        f"\nimages   {len(images)}: "
        + ", ".join(f"{name} {img.width}x{img.height}" for name, img in images)
    )
    print(f"input    {pixels.shape} float32 (reference recipe), same array to both")

    def ref_embed(chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with torch.no_grad():
            return np.asarray(ref.encode_image(torch.from_numpy(chunk)).numpy(), dtype=np.float32)

    def our_embed(chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return enc.embed_pixels(chunk)

    image_results: dict[str, Any] = {}
    per_image_cos = np.ones(len(images))
    print(
        f"\n{'batch':>5}  {'reference img/s':>15}  {'ours img/s':>10}  {'ours/ref':>8}  "
        f"{'min cosine':>10}"
    )
    for batch in (1, NUM_IMAGES):
        enc.batch_size = batch
        r = time_images(ref_embed, pixels, batch, args.image_reps)
        o = time_images(our_embed, pixels, batch, args.image_reps)
        cos = cosines(o.pop("embeddings"), r.pop("embeddings"))
        per_image_cos = np.minimum(per_image_cos, cos)
        ratio = o["images_per_s"] / r["images_per_s"]
        image_results[f"batch_{batch}"] = {
            "reference": r,
            "ours": o,
            "ratio_ours_over_ref": ratio,
            "min_cosine": float(cos.min()),
        }
        print(
            f"{batch:>5}  {r['images_per_s']:>15.3f}  {o['images_per_s']:>10.3f}  "
            f"{ratio:>7.2f}x  {cos.min():>10.7f}",
            flush=True,
        )
    print(
        "cosine per image (min over batch sizes): "
        + ", ".join(f"{name} {c:.7f}" for (name, _), c in zip(images, per_image_cos, strict=True))
    )

    # ---- text
    context = int(enc.manifest.context_length)
    tokens = [len(enc.tokenizer.ids(q)) for q in QUERIES]

    def ref_text(query: str) -> npt.NDArray[np.float32]:
        with torch.no_grad():
            tok = ref.tokenizer(
                [query],
                padding="max_length",
                max_length=context,
                truncation=True,
                return_tensors="pt",
            )
            return np.asarray(ref.encode_text(dict(tok)).numpy(), dtype=np.float32)

    for q in QUERIES[:2]:  # warm-up
        ref_text(q)
        enc.embed_texts([q])
    ref_times: list[float] = []
    our_times: list[float] = []
    text_cos: list[float] = []
    # in blocks, not interleaved: handing the cores back and forth between torch's and
    # ONNX Runtime's thread pools on every query would be timed too
    for _ in range(args.text_reps):
        want, got = [], []
        for q in QUERIES:
            t0 = time.perf_counter()
            want.append(ref_text(q))
            ref_times.append(time.perf_counter() - t0)
        for q in QUERIES:
            t0 = time.perf_counter()
            got.append(enc.embed_texts([q]))
            our_times.append(time.perf_counter() - t0)
        text_cos.extend(cosines(np.concatenate(got), np.concatenate(want)).tolist())
    ref_tok: list[float] = []
    our_tok: list[float] = []
    for q in QUERIES:
        t0 = time.perf_counter()
        ref.tokenizer(
            [q], padding="max_length", max_length=context, truncation=True, return_tensors="pt"
        )
        ref_tok.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        enc.tokenizer([q])
        our_tok.append(time.perf_counter() - t0)
    ref_lat, our_lat = percentiles_ms(ref_times), percentiles_ms(our_times)
    ref_lat["tokenize_p50_ms"] = percentiles_ms(ref_tok)["p50_ms"]
    our_lat["tokenize_p50_ms"] = percentiles_ms(our_tok)["p50_ms"]
    speedup = ref_lat["p50_ms"] / our_lat["p50_ms"]
    text_min = min(text_cos)
    print(
        f"\ntext     {len(QUERIES)} queries x {args.text_reps}, one at a time; "
        f"{min(tokens)}-{max(tokens)} tokens (mean {np.mean(tokens):.1f}) with BOS/EOS; "
        f"reference pads to {context}"
    )
    print(f"{'':>10}  {'p50 ms':>8}  {'p95 ms':>8}  {'tokenize p50 ms':>15}")
    for label, lat in (("reference", ref_lat), ("ours", our_lat)):
        print(
            f"{label:>10}  {lat['p50_ms']:>8.2f}  {lat['p95_ms']:>8.2f}  "
            f"{lat['tokenize_p50_ms']:>15.3f}"
        )
    print(f"speedup reference_p50 / ours_p50 = {speedup:.2f}x; min cosine {text_min:.7f}")

    image_min = float(per_image_cos.min())
    ok = image_min >= MIN_COSINE and text_min >= MIN_COSINE
    print(
        f"\n{'PASS' if ok else 'FAIL'}: min cosine images {image_min:.7f} "
        f"(1 - cos = {1 - image_min:.1e}), text {text_min:.7f} (1 - cos = {1 - text_min:.1e}); "
        f"need >= {MIN_COSINE}"
    )

    if args.json is not None:
        report = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device": device,
            "model": {
                "size": args.size,
                "architecture": cfg,
                "seed": args.seed,
                "image_params": n_img,
                "text_params": n_txt,
                "reference_build_s": build_s,
                "model_dir": str(model_dir),
                "fingerprint": enc.fingerprint,
                "precision": enc.precision,
                "provider": enc.provider,
                **export,
            },
            "images": {
                "inputs": [
                    {"name": name, "width": img.width, "height": img.height, "cosine": float(c)}
                    for (name, img), c in zip(images, per_image_cos, strict=True)
                ],
                "shape": list(pixels.shape),
                "recipe": recipe.name,
                "min_cosine": image_min,
                **image_results,
            },
            "text": {
                "queries": list(QUERIES),
                "tokens": tokens,
                "context_length": context,
                "reps": args.text_reps,
                "reference": ref_lat,
                "ours": our_lat,
                "speedup_ref_p50_over_ours_p50": speedup,
                "min_cosine": text_min,
            },
            "min_cosine_required": MIN_COSINE,
            "pass": ok,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
