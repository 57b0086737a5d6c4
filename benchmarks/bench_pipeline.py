"""The streaming pipeline: does it keep an encoder busy, and what does it cost the main
process?

    python benchmarks/bench_pipeline.py [--files 240] [--json out.json]

Corpus (generated here, each file a distinct SOP Instance UID): pydicom-data's CT slice
``693_UNCR.dcm`` (512x512, 16-bit), the same slice as lossless JPEG 2000
(``693_J2KR.dcm``) and an ultrasound frame re-encoded as JPEG baseline, in equal parts.

Measured in one run, on this machine's cores:

1. **decode-only**: the guarded decoder pool (one process per core) decoding, rendering and
   preparing the corpus: the most a build can do on this CPU. Also the bytes that cross
   between processes per image (the pickled job and result, as the pipe carries them).
2. **build with a stand-in encoder**: the real pipeline (``run_build``: reader, fetchers,
   preparers, embedder, writer, catalog, index), with the encoder replaced, *in this
   benchmark only*, by a stand-in that holds no CPU: it normalises the inputs as the real
   path does, then sleeps 1.25 ms per image (800 images/s, as a GPU would). Target:
   build >= 0.8 x min(decode-only, stand-in rate). Main-process CPU per image outside the
   encoder stage (process CPU less the embedder thread's): target <= 1 ms.
3. **real encoder on CPU, stages overlapping**: the same build of a smaller corpus with the
   bundled test model (one decoder process, one ONNX Runtime thread) on two cores against
   the same build pinned to one core (``taskset``). Target: >= 1.4x.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from indexer.encoders.encoder import Encoder
from indexer.encoders.preprocess import normalise
from indexer.imaging.guard import DecodeJob, DecoderPool
from indexer.pipeline.runner import BuildOptions, run_build
from indexer.settings import EncoderSettings, ImagingSettings

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "data" / "test_model"
STAND_IN_S_PER_IMAGE = 1.25e-3
IO_THREADS = 4


class StandInEncoder(Encoder):
    """The real encoder's manifest, recipes and normalisation, then a sleep instead of a
    model run (the benchmark's stand-in for a GPU; never used outside this file)."""

    def embed_inputs(
        self, inputs: Any, recipe: str | None = None
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        rec = self.recipe(recipe)
        pixels = normalise(inputs, rec)
        time.sleep(STAND_IN_S_PER_IMAGE * len(inputs))
        rng = np.random.default_rng(int(pixels[:, 0, 0, 0].sum() * 1000) % (2**32))
        out = rng.standard_normal((len(inputs), self.manifest.embedding_dim)).astype(np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def _data_dir() -> Path:
    import data_store

    return Path(data_store.__file__).parent / "data"


def make_corpus(out: Path, count: int) -> Path:
    data = _data_dir()
    us = pydicom.dcmread(data / "US1_UNCR.dcm")
    buf = io.BytesIO()
    Image.fromarray(us.pixel_array).save(buf, format="JPEG", quality=90, subsampling=2)
    us.PixelData = encapsulate([buf.getvalue()])
    us.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    us.PhotometricInterpretation = "YBR_FULL_422"
    us.PlanarConfiguration = 0
    seeds = [pydicom.dcmread(data / "693_UNCR.dcm"), pydicom.dcmread(data / "693_J2KR.dcm"), us]
    out.mkdir(parents=True)
    for n in range(count):
        ds = seeds[n % len(seeds)]
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"bench-pipeline-{n}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / f"{n:05d}.dcm", enforce_file_format=True)
    return out


def decode_only(corpus: Path, workers: int, encoder: Encoder) -> dict[str, Any]:
    recipe = encoder.recipe()
    paths = sorted(corpus.iterdir())
    jobs = [DecodeJob(path=str(p), recipe=recipe) for p in paths]
    with DecoderPool(ImagingSettings(), workers) as pool:
        list(pool.map(jobs[: workers * 2]))  # start the workers
        started = time.perf_counter()
        results = list(pool.map(jobs))
        seconds = time.perf_counter() - started
    images = sum(len(r.images) for r in results if r.ok)
    crossing = [
        len(pickle.dumps(j)) + len(pickle.dumps(r)) for j, r in zip(jobs, results, strict=True)
    ]
    return {
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "bytes_per_image": int(np.mean(crossing)),
        "bytes_per_image_max": int(np.max(crossing)),
    }


def build_with_stand_in(corpus: Path, index: Path, workers: int) -> dict[str, Any]:
    settings = EncoderSettings(provider="cpu", intra_op_threads=1, batch_size=32)
    real = Encoder.load(MODEL, settings)
    stand_in = StandInEncoder(
        real.model_dir, real.manifest, None, None, real.tokenizer, "fp32", "stand-in", 32
    )
    options = BuildOptions(
        sources=[str(corpus)], index_dir=index, model_dir=MODEL, workers=workers,
        progress=False, imaging=ImagingSettings(), encoder=settings, io_threads=IO_THREADS,
    )  # fmt: skip
    report = run_build(options, encoder=stand_in).to_dict()
    images, stages = report["indexed"], report["stages"]
    cpu = stages["process_cpu_s"]  # the main process while the stages ran
    outside = cpu - stages["embed_cpu_s"]
    return {
        "images": images,
        "seconds": report["seconds"],
        "images_per_s": report["images_per_s"],
        "stages_s": stages["wall_s"],
        "stages_images_per_s": round(images / stages["wall_s"], 1),
        "steady_images_per_s": stages["steady_images_per_s"],
        "main_cpu_ms_per_image": round(1000 * cpu / images, 3),
        "main_cpu_ms_per_image_outside_encoder": round(1000 * outside / images, 3),
        "stages": stages,
    }


def _cli_build(corpus: Path, index: Path, cores: str) -> dict[str, Any]:
    env = {**os.environ, "MEDSEARCH_INTRA_OP_THREADS": "1"}
    cmd = [
        "taskset", "-c", cores, sys.executable, "-m", "indexer.cli", "index", "build",
        str(corpus), "--index", str(index), "--model", str(MODEL), "--workers", "1",
        "--batch-size", "8", "--no-progress", "--report", str(index.parent / f"{cores}.json"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=1800)
    report: dict[str, Any] = json.loads((index.parent / f"{cores}.json").read_text())
    return report


def overlap(corpus: Path, tmp: Path) -> dict[str, Any]:
    """Stage time (the pipeline's wall time, without interpreter and model start-up) on
    one core and on two; and the most overlap can give, (decode + encode) / max of them,
    from the two-core run's busy times."""
    one = _cli_build(corpus, tmp / "one-core", "0")["stages"]
    two = _cli_build(corpus, tmp / "two-cores", "0,1")["stages"]
    decode, encode = two["busy_s"]["prepare"], two["busy_s"]["embed"]
    return {
        "one_core_s": one["wall_s"],
        "two_cores_s": two["wall_s"],
        "speedup": round(one["wall_s"] / two["wall_s"], 2),
        "decode_busy_s": decode,
        "encode_busy_s": encode,
        "overlap_bound": round((decode + encode) / max(decode, encode), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--overlap-files", type=int, default=160)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        corpus = make_corpus(tmp / "corpus", args.files)
        encoder = Encoder.load(MODEL, EncoderSettings(provider="cpu", intra_op_threads=1))
        decoded = decode_only(corpus, cores, encoder)
        built = build_with_stand_in(corpus, tmp / "index", cores)
        small = tmp / "small"
        small.mkdir()
        for path in sorted(corpus.iterdir())[: args.overlap_files]:
            shutil.copy(path, small / path.name)
        overlapped = overlap(small, tmp)
    stand_in_rate = 1.0 / STAND_IN_S_PER_IMAGE
    bound = min(decoded["images_per_s"], stand_in_rate)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores",
        "python": platform.python_version(),
        "files": args.files,
        "decode_only": decoded,
        "stand_in_rate": stand_in_rate,
        "build_stand_in": built,
        "build_over_bound": round(built["steady_images_per_s"] / bound, 3),
        "overlap": overlapped,
    }
    print(f"pipeline benchmark: {args.files} files (CT, J2K CT, JPEG US), {cores} cores")
    print("  encoder stand-in (this benchmark only): normalise, then sleep 1.25 ms/image")
    print(
        f"  decode-only, all cores : {decoded['images_per_s']:8.1f} images/s; "
        f"{decoded['bytes_per_image'] / 1024:.0f} KB cross per image (max "
        f"{decoded['bytes_per_image_max'] / 1024:.0f} KB; target <= 700 KB)"
    )
    print(f"  stand-in encoder alone : {stand_in_rate:8.1f} images/s")
    print(
        f"  build, stand-in        : {built['steady_images_per_s']:8.1f} images/s from the "
        f"first commit to the last = {results['build_over_bound']:.2f} x min(decode-only, "
        f"stand-in) (target >= 0.80); limited by {built['stages']['limiting_stage']}"
    )
    print(
        f"  build, stages running  : {built['stages_images_per_s']:8.1f} images/s (with the "
        "decoder processes' start-up and the first batch's fill)"
    )
    print(
        f"  build, whole run       : {built['images_per_s']:8.1f} images/s ({built['seconds']} s "
        f"with worker start-up, catalog and index publication for {built['images']} images)"
    )
    print(
        f"  main-process CPU       : {built['main_cpu_ms_per_image']:.2f} ms/image, "
        f"{built['main_cpu_ms_per_image_outside_encoder']:.2f} outside the encoder stage "
        "(target <= 1 ms)"
    )
    print(f"  stage utilisation      : {built['stages']['utilisation']}")
    print(f"  queue depth            : {built['stages']['queue_depth']}")
    print(
        f"  real encoder on CPU    : {overlapped['one_core_s']:.1f} s on one core, "
        f"{overlapped['two_cores_s']:.1f} s on two = {overlapped['speedup']:.2f}x "
        f"(target >= 1.4x; {args.overlap_files} files, 1 decoder, 1 ORT thread); decode "
        f"{overlapped['decode_busy_s']:.1f} s + encode {overlapped['encode_busy_s']:.1f} s "
        f"busy: overlap can give at most {overlapped['overlap_bound']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
