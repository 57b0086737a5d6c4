"""The Ray engine against the local engine: what does Ray cost on one host, and does it
scale with decode CPUs?

    python benchmarks/bench_ray.py [--files 1200] [--json out.json]
    python benchmarks/bench_ray.py --gpu --model models/mii-v1   # on a GPU host

Corpus: ``bench_pipeline``'s (CT slices, the same as JPEG 2000, ultrasound as JPEG; each
file its own SOP Instance UID). The encoder is, *in this benchmark only*, the stand-in of
``bench_pipeline`` (the real normalisation, then 1.25 ms of sleep per image: a GPU's 800
images/s), so the decoders limit both engines and the difference is the engine's cost.

1. **local engine**: ``--workers`` = the host's cores (run again at the end: the spread
   of the two is the host's noise).
2. **Ray engine, same host and files**: a local Ray started here with one logical CPU per
   decode actor plus one for the encoder actor (the local engine too runs its embedder
   thread beside its decoders on the same cores); time of the stages, without starting
   Ray, and with it. Target: Ray <= 1.3x the local engine for >= 1,000 images.
3. **scaling**: the Ray engine with 1 and with 2 decode CPUs.
4. **Ray Data's own floor**: a pipeline of the same shape (as many actors, one CPU each,
   rows in batches of the engine's size) whose callables do nothing, on the same Ray and
   after the Ray runs (so in the state the measured run had: Ray Data's detached actors
   started by the first run): the seconds from creating it to its first batch are start-up
   that no engine on Ray Data can avoid here; ``best_ratio`` = (local engine + that
   floor) / local engine.

``--gpu``: the real model on CUDA, one encoder actor per GPU and the other cores as
decode CPUs (15 on a 16-core, 1-GPU host).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from bench_pipeline import MODEL, StandInEncoder, make_corpus  # noqa: E402

from indexer.encoders.encoder import Encoder  # noqa: E402
from indexer.pipeline.ray_engine import RayOptions  # noqa: E402
from indexer.pipeline.runner import BuildOptions, run_build  # noqa: E402
from indexer.settings import EncoderSettings, ImagingSettings  # noqa: E402

BATCH = 32


def stand_in(model_dir: Path, settings: EncoderSettings) -> Encoder:
    """The encoder actors' loader in this benchmark: the stand-in of ``bench_pipeline``."""
    real = Encoder.load(model_dir, settings)
    return StandInEncoder(
        real.model_dir, real.manifest, None, None, real.tokenizer, "fp32", "stand-in", BATCH
    )


def build(corpus: Path, index: Path, model: Path, **kw: Any) -> dict[str, Any]:
    settings = kw.pop("settings", EncoderSettings(provider="cpu", intra_op_threads=1))
    options = BuildOptions(
        sources=[str(corpus)], index_dir=index, model_dir=model, batch_size=BATCH,
        progress=False, imaging=ImagingSettings(), encoder=settings, **kw,
    )  # fmt: skip
    encoder = stand_in(model, settings) if kw.get("engine", "local") == "local" else None
    report = run_build(options, encoder=encoder).to_dict()
    stages = report["stages"]
    return {
        "images": report["indexed"],
        "seconds": report["seconds"],
        "stages_s": stages["wall_s"],
        "images_per_s": round(report["indexed"] / stages["wall_s"], 1),
        "steady_images_per_s": stages["steady_images_per_s"],
        # the stages' fill (start to first commit) and drain (last commit to their end)
        "fill_s": stages["first_commit_s"],
        "drain_s": round(stages["wall_s"] - (stages["last_commit_s"] or 0.0), 2),
        "busy_s": stages["busy_s"],
        "limiting_stage": stages["limiting_stage"],
    }


def count_files(corpus: Path) -> int:
    return sum(1 for _ in corpus.iterdir())


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


class _Nothing:
    """A stage that hands its batch on (the floor measurement)."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch


def ray_data_floor(rows: int, decode_actors: int) -> dict[str, float]:
    """Seconds from creating a do-nothing pipeline shaped like the engine's to its first
    batch, and to its end."""
    import ray
    from ray.data import ActorPoolStrategy

    from indexer.pipeline.ray_engine import DECODE_BATCH

    started = time.perf_counter()
    dataset = (
        ray.data.from_items([{"seq": i} for i in range(rows)])
        .map_batches(
            _Nothing, batch_size=DECODE_BATCH, num_cpus=1,
            compute=ActorPoolStrategy(size=decode_actors),
        )
        .map_batches(_Nothing, batch_size=BATCH, num_cpus=1, compute=ActorPoolStrategy(size=1))
    )  # fmt: skip
    first = None
    for _ in dataset.iter_batches(batch_size=None):
        first = first or time.perf_counter()
    ended = time.perf_counter()
    return {
        "first_batch_s": round((first or ended) - started, 2),
        "all_s": round(ended - started, 2),
    }


def cpu_runs(corpus: Path, tmp: Path, cores: int) -> dict[str, Any]:
    import ray

    local = build(corpus, tmp / "local", MODEL, workers=cores)
    started = time.perf_counter()
    ray.init(
        address="local", num_cpus=cores + 1, include_dashboard=False, log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": {"PYTHONPATH": f"{ROOT}:{Path(__file__).parent}"}},
    )  # fmt: skip
    ray_start_s = time.perf_counter() - started
    try:
        runs = {}
        for n in sorted({1, cores}):
            options = RayOptions(decode_cpus=n, load_encoder=stand_in)
            runs[n] = build(corpus, tmp / f"ray-{n}", MODEL, workers=n, engine="ray", ray=options)
        # after the runs, as the measured run (the second): Ray Data's detached actors exist
        floor = ray_data_floor(count_files(corpus), cores)
    finally:
        ray.shutdown()
    again = build(corpus, tmp / "local-again", MODEL, workers=cores)  # the host's noise
    same = runs[cores]
    return {
        "local": local,
        "local_again_seconds": again["seconds"],
        "ray": same,
        "ray_start_s": round(ray_start_s, 2),
        "ray_data_floor": floor,
        # the best a Ray Data engine could do here: the local engine plus the floor
        "best_ratio": round((local["seconds"] + floor["first_batch_s"]) / local["seconds"], 2),
        # build time (model loading, decoder and actor start-up included), Ray's start apart
        "overhead_ratio": round(same["seconds"] / local["seconds"], 2),
        "overhead_ratio_with_ray_start": round(
            (same["seconds"] + ray_start_s) / local["seconds"], 2
        ),
        # once the stages are full: first commit to last
        "steady_ratio": _ratio(local["steady_images_per_s"], same["steady_images_per_s"]),
        "scaling": {
            f"{n}_decode_cpus": {
                k: r[k] for k in ("seconds", "images_per_s", "steady_images_per_s")
            }
            for n, r in runs.items()
        },
        "speedup_1_to_2": _ratio(
            runs[max(runs)]["steady_images_per_s"], runs[1]["steady_images_per_s"]
        ),
    }


def gpu_run(corpus: Path, tmp: Path, model: Path, cores: int) -> dict[str, Any]:
    import ray

    ray.init(
        address="local", include_dashboard=False, log_to_driver=False,
        logging_level=logging.ERROR,
    )  # fmt: skip
    gpus = int(ray.cluster_resources().get("GPU", 0))
    try:
        if not gpus:
            raise SystemExit("--gpu: Ray sees no GPU on this host")
        decode = cores - gpus
        settings = EncoderSettings(provider="cuda", batch_size=BATCH)
        result = build(
            corpus, tmp / "gpu", model, workers=decode, engine="ray", settings=settings,
            ray=RayOptions(encoders=gpus, gpus_per_encoder=1, decode_cpus=decode),
        )  # fmt: skip
    finally:
        ray.shutdown()
    return {"gpus": gpus, "decode_cpus": cores - gpus, **result}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1200)
    parser.add_argument("--gpu", action="store_true", help="the real model on CUDA")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        corpus = make_corpus(tmp / "corpus", args.files)
        if args.gpu:
            measured = {"gpu": gpu_run(corpus, tmp, args.model, cores)}
        else:
            measured = cpu_runs(corpus, tmp, cores)
    import ray

    results = {
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores",
        "python": platform.python_version(),
        "ray_version": ray.__version__,
        "files": args.files,
        **measured,
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
