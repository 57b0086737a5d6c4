"""The Ray engine (``--engine ray``): the pipeline's stages on Ray Data, across hosts.

::

    driver: reader + fetch ──queue──▶ decode actors ──▶ encoder actors ──▶ driver: writer
    (lists sources, skips       --decode-cpus, 1 CPU    --encoders, each     (one commit
     what the catalog has,      each, one guarded       --gpus-per-encoder   per batch,
     ships bytes workers        decoder process each    GPUs, model loaded   as the local
     cannot read)                                       once and verified    engine)

The catalog stays the single source of truth: only the driver touches it, with the same
:class:`~indexer.pipeline.writer.Writer` as the local engine, so crash safety and resume
are the local engine's: kill the driver at any point and rerun. Rows come back in source
order (Ray Data's ``preserve_order``), so reruns choose the same file among duplicates.

Where workers read: DICOMweb instances by their URI (credentials from the workers' own
``MEDSEARCH_DICOMWEB_*``); files by their path when the workers see the driver's paths
(``shared_paths``: by default, when the cluster is this machine alone); otherwise, and for
archive members, the driver reads the bytes and ships them. Secrets never travel through
Ray: the patient-hash salt is each node's ``MEDSEARCH_PATIENT_HASH_SALT``, checked against
the driver's by a digest.

Which Ray: ``--ray-address`` (or ``RAY_ADDRESS``) joins a running cluster; an address
where nothing listens, or a cluster whose token this host lacks, is refused with advice
before the index is touched. Without one, a Ray of this host alone is started for the
build (``address="local"``: not the cluster that ``ray start`` may run here). Such a Ray
leaves a session directory of logs (``/tmp/ray/session_*``, 0.2-1 MB) that Ray never
removes: it is removed after a build that succeeded, kept (and named at INFO level, ``-v``)
after one that failed, so that builds run from cron do not fill the disk.

Ray is the optional ``ray`` extra; this module imports it only when the engine runs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.encoders.manifest import read_manifest
from indexer.encoders.preprocess import Recipe, manifest_recipe
from indexer.errors import MedsearchError
from indexer.imaging.types import RENDER_POLICY
from indexer.pipeline.items import ReadItem, fetch
from indexer.pipeline.local import OnCommit, StageStats
from indexer.pipeline.writer import Writer
from indexer.settings import EncoderSettings, ImagingSettings
from indexer.sources.dicomweb import is_dicomweb
from indexer.store.catalog import ModelBinding

if TYPE_CHECKING:  # the modules that need pyarrow and Ray are imported when the engine runs
    from indexer.pipeline.ray_stages import DecoderFactory, EncoderLoader
    from indexer.pipeline.runner import BuildOptions

logger = logging.getLogger(__name__)

INSTALL_HINT = "--engine ray needs Ray, the `ray` extra: pip install 'medsearch[ray]'"
DECODE_BATCH = 32  # items per decode call (Ray costs ~20 ms a call on a busy 2-core host)


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # a running cluster ("auto", "host:6379"); None: start one here
    encoders: int = 1  # encoder actors
    gpus_per_encoder: float = 0.0  # 0: the encoders run on CPU
    decode_cpus: int | None = None  # decode actors, one CPU each; None: BuildOptions.workers
    shared_paths: bool | None = None  # workers see the driver's files; None: single host only
    # test and benchmark hooks: a planted decoder, a stand-in encoder
    decoder: DecoderFactory | None = field(default=None, compare=False)
    load_encoder: EncoderLoader | None = field(default=None, compare=False)


def import_ray() -> Any:
    # Ray's ports listen on every interface: token authentication (Ray >= 2.52; the default
    # from 2.60), read as Ray loads. A cluster without it must be asked for explicitly
    # (RAY_AUTH_MODE=disabled).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError:
        raise MedsearchError(INSTALL_HINT) from None
    return ray


_FEW_INPUTS = "The minimum number of concurrent actors .* only received"
_NO_TOKEN = (
    "the Ray cluster asks for a token and this host has none: copy the head node's "
    "~/.ray/auth_token here (or set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
)
ANSWER_TIMEOUT_S = 5.0


def _check_address(address: str) -> None:
    """``auto``, or a ``HOST:PORT`` where something listens: refused now otherwise (Ray
    would retry an address where nothing listens for minutes)."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MedsearchError(
            f"--ray-address must be auto or HOST:PORT (the head's port, 6379 by default), "
            f"not {address!r}; run medsearch on a node of the cluster (no ray:// client)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), ANSWER_TIMEOUT_S).close()
    except OSError as exc:
        raise MedsearchError(
            f"no Ray cluster answers at {address} ({exc.strerror or type(exc).__name__}): "
            "is `ray start --head` running there, and is this its port (6379 by default)?"
        ) from None


def _connect_advice(address: str, exc: ConnectionError) -> str:
    if address == "auto":
        return f"--ray-address auto found no cluster that `ray start` runs on this host ({exc})"
    return (
        f"cannot join the Ray cluster at {address}: {exc}. Every node and this host need "
        "the same RAY_AUTH_MODE, the head's token (~/.ray/auth_token) and the same Ray"
    )


def model_binding(model_dir: Path, recipe: str | None) -> tuple[ModelBinding, Recipe]:
    """The model's binding and recipe from its manifest alone: the driver loads no model
    (the encoder actors load and verify it where they run)."""
    manifest = read_manifest(model_dir)
    chosen = manifest_recipe(manifest, recipe)
    binding = ModelBinding(manifest.fingerprint, manifest.embedding_dim, chosen.name, RENDER_POLICY)
    return binding, chosen


_REFUSAL = re.compile(r"^indexer\.errors\.\w+: (.+)$", re.MULTILINE)


def _cause(exc: BaseException) -> MedsearchError | None:
    """The medsearch refusal behind a Ray error (a stage that refused to start or run:
    a model that fails its checks, a salt that differs, a PACS that is down). Ray keeps
    a dead actor's error only as its traceback text: the refusal is its last line."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _REFUSAL.findall(str(current))
        if found:
            return MedsearchError(found[-1])
        if isinstance(current, MedsearchError):
            return current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return None


_CONTEXT_FIELDS = ("target_max_block_size", "enable_progress_bars", "print_on_execution_start")


def _data_context(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Ray Data settings the engine changes, as they are; with ``values``, set back."""
    from ray.data import DataContext

    context = DataContext.get_current()
    if values is not None:
        for name in _CONTEXT_FIELDS:
            setattr(context, name, values[name])
        context.execution_options.preserve_order = values["preserve_order"]
    found = {name: getattr(context, name) for name in _CONTEXT_FIELDS}
    return {**found, "preserve_order": context.execution_options.preserve_order}


def _quiet_ray_data() -> None:
    """Ray Data logs to its session's files (``/tmp/ray/session_*/logs``); on the terminal
    only its errors: the build prints its own progress and summary, and no warning that
    misleads."""
    # Ray Data counts the source's one input block, not the batches it streams from it
    warnings.filterwarnings("ignore", _FEW_INPUTS, UserWarning)
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.ERROR)


class RayEngine:
    """:meth:`connect` to Ray (or start it here), :meth:`run` the stages, :meth:`close`."""

    def __init__(self, options: BuildOptions, encoder: EncoderSettings) -> None:
        self._ray = import_ray()  # first: without the extra, say how to install it
        self.options = options
        self.ray_options = options.ray or RayOptions()
        self.binding, self.recipe = model_binding(options.model_dir, options.recipe)
        self._owned = False
        self._session_dir: str | None = None  # the logs of a Ray started here
        self.encoder_settings = self._encoder_settings(encoder)
        self.decode_cpus = self.ray_options.decode_cpus or options.workers
        self.facts: dict[str, Any] = {}

    def _encoder_settings(self, settings: EncoderSettings) -> EncoderSettings:
        on_gpu = self.ray_options.gpus_per_encoder > 0
        if settings.provider == "cuda" and not on_gpu:
            raise MedsearchError("MEDSEARCH_PROVIDER=cuda needs --gpus-per-encoder (--engine ray)")
        # CUDA when GPUs are given, refused if it does not start (no silent CPU fallback)
        return settings.model_copy(update={"provider": "cuda" if on_gpu else "cpu"})

    def connect(self) -> None:
        try:
            self._connect()
        except BaseException:
            self.close()  # a Ray started here stops with the refusal
            raise

    def _connect(self) -> None:
        ray, opts = self._ray, self.ray_options
        if not ray.is_initialized():
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage reports from a Ray we start
            common = {"log_to_driver": False, "logging_level": logging.ERROR}
            if opts.address:
                _check_address(opts.address)
                try:
                    ray.init(address=opts.address, **common)
                except ConnectionError as exc:  # Ray's own, after its retries
                    raise MedsearchError(_connect_advice(opts.address, exc)) from None
                except ray.exceptions.AuthenticationError:
                    raise MedsearchError(f"{_NO_TOKEN} ({opts.address})") from None
            else:  # this host alone: a logical CPU per actor, whatever the cores (the
                # local engine too runs its decoders and its encoder on the same cores).
                # "local": a new Ray, even where `ray start` runs one (which ray.init()
                # would join, refusing num_cpus)
                cpus = self.decode_cpus + opts.encoders
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, **common)
                self._session_dir = _session_dir(ray)
            self._owned = True
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        here = ray.get_runtime_context().get_node_id()
        single_host = all(n["NodeID"] == here for n in nodes)
        shared = single_host if opts.shared_paths is None else opts.shared_paths
        total = ray.cluster_resources()
        self.facts = {
            "address": opts.address or "local",
            "nodes": len(nodes),
            "cpus": total.get("CPU", 0.0),
            "gpus": total.get("GPU", 0.0),
            "decode_cpus": self.decode_cpus,
            "encoders": opts.encoders,
            "gpus_per_encoder": opts.gpus_per_encoder,
            "shared_paths": shared,
        }
        self._check_resources()

    def _check_resources(self) -> None:
        opts, facts = self.ray_options, self.facts
        cpus, gpus = self.decode_cpus + opts.encoders, opts.encoders * opts.gpus_per_encoder
        if facts["cpus"] < cpus or facts["gpus"] < gpus:
            raise MedsearchError(
                f"the Ray cluster has {facts['cpus']:g} CPUs and {facts['gpus']:g} GPUs; "
                f"{self.decode_cpus} decode CPUs and {opts.encoders} encoders (1 CPU and "
                f"{opts.gpus_per_encoder:g} GPUs each) need {cpus} CPUs and {gpus:g} GPUs: "
                "lower --decode-cpus or --encoders, or add nodes"
            )

    def _ship(self, max_bytes: int) -> Callable[[int, ReadItem], dict[str, Any]]:
        from indexer.pipeline.ray_rows import job_row

        shared = bool(self.facts["shared_paths"])

        def ship(seq: int, read: ReadItem) -> dict[str, Any]:
            item = read.item
            if item.refusal is None and is_dicomweb(item.uri):
                return job_row(seq, read, None)  # the workers fetch it
            if item.local_path is not None and not shared:  # fetch reads its bytes here
                read = ReadItem(replace(item, local_path=None), read.labels)
            return job_row(seq, read, fetch(read, max_bytes))

        return ship

    def run(self, items: Iterable[ReadItem], writer: Writer, *, on_commit: OnCommit) -> StageStats:
        """Run the stages until ``items`` is exhausted and every batch is committed."""
        from indexer.pipeline.ray_feed import Feeder
        from indexer.pipeline.ray_rows import from_block, prepared_items, unpack

        imaging: ImagingSettings = self.options.imaging
        feeder = Feeder(
            items, self._ship(imaging.max_file_bytes), chunk=DECODE_BATCH,
            io_threads=self.options.io_threads, depth=max(4, 2 * self.decode_cpus),
        )  # fmt: skip
        stats = StageStats(threads={"read": 1, "fetch": self.options.io_threads, "write": 1})
        stats.threads.update(prepare=self.decode_cpus, embed=self.ray_options.encoders)
        busy = {"prepare": 0.0, "embed": 0.0}
        dim = self.binding.embedding_dim
        started, cpu = time.perf_counter(), time.process_time()
        saved = _data_context()
        try:
            dataset = self._dataset(feeder, imaging)
            feeder.start()
            for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                for blob in from_block(block):
                    rows = unpack(blob)
                    busy["prepare"] += sum(rows["prepare_s"])
                    busy["embed"] += sum(rows["embed_s"])
                    done, embeddings = prepared_items(rows, feeder.reads, dim)
                    counts = writer(done, embeddings)
                    stats.commits.append((time.perf_counter() - started, len(embeddings)))
                    on_commit(done, counts)
        except MedsearchError:
            raise
        except Exception as exc:
            cause = _cause(exc)
            if cause is None:
                raise
            raise cause from exc
        finally:
            feeder.close()
            _data_context(saved)  # later datasets of this process get their own settings
        if feeder.errors:
            raise feeder.errors[0]
        if feeder.reads:
            raise MedsearchError(f"{len(feeder.reads)} items did not come back from Ray")
        stats.wall_s = time.perf_counter() - started
        stats.process_cpu_s = time.process_time() - cpu
        stats.busy_s = {"read": feeder.read_s, "fetch": feeder.fetch_s, **busy}
        stats.busy_s["write"] = writer.busy_s
        return stats

    def _dataset(self, feeder: Any, imaging: ImagingSettings) -> Any:
        from ray.data import ActorPoolStrategy, DataContext

        from indexer.pipeline.ray_feed import QueueSource
        from indexer.pipeline.ray_stages import DecodeStage, EncodeStage

        ray, opts = self._ray, self.ray_options
        context = DataContext.get_current()  # the process's: put back by run() at the end
        context.execution_options.preserve_order = True  # reruns choose the same duplicates
        context.target_max_block_size = 1  # every row (a packed batch) is a block of its own
        context.enable_progress_bars = False  # the build has its own
        context.print_on_execution_start = False
        _quiet_ray_data()
        public = imaging.model_dump_json(exclude={"patient_hash_salt"})
        decode = {
            "imaging_json": public,
            "salt": imaging.salt_check(),
            "recipe": self.recipe,
            "decoder": opts.decoder,
        }
        encode = {
            "model_dir": str(self.options.model_dir.resolve()),
            "settings": self.encoder_settings,
            "recipe": self.binding.recipe,
            "fingerprint": self.binding.model_fingerprint,
            "load": opts.load_encoder,
        }
        per_run = -(-self.encoder_settings.batch_size // DECODE_BATCH)  # decoded batches
        source = QueueSource(feeder.queue)
        return (
            ray.data.read_datasource(source, override_num_blocks=1, num_cpus=0)
            .map_batches(
                DecodeStage, fn_constructor_kwargs=decode, batch_size=1, batch_format="pyarrow",
                compute=ActorPoolStrategy(size=self.decode_cpus), num_cpus=1,
            )
            .map_batches(
                EncodeStage, fn_constructor_kwargs=encode, batch_size=per_run,
                batch_format="pyarrow", compute=ActorPoolStrategy(size=opts.encoders),
                num_cpus=1, num_gpus=opts.gpus_per_encoder or None,
            )
        )  # fmt: skip

    def close(self, succeeded: bool = False) -> None:
        """Stop a Ray started here; its logs go with it after a build that ``succeeded``."""
        if self._owned:
            self._ray.shutdown()
            self._owned = False
            if self._session_dir is not None:
                if succeeded:
                    shutil.rmtree(self._session_dir, ignore_errors=True)
                else:
                    logger.info("the Ray logs of this build are kept in %s", self._session_dir)
                self._session_dir = None


def _session_dir(ray: Any) -> str | None:
    """The session directory of the Ray this process started (Ray has no public API for
    it: ``None`` if its internals moved, and the logs are then left where they are)."""
    try:
        return str(ray._private.worker._global_node.get_session_dir_path())
    except AttributeError:
        return None
