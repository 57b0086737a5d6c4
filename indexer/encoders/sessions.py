"""The one place that creates ``onnxruntime.InferenceSession`` objects.

Provider choice is explicit: ``cpu``; ``cuda``, refused with a clear error when the CUDA
execution provider is not installed (``pip install medsearch[gpu]``) or cannot start;
``auto``, CUDA when available and otherwise CPU. The provider that actually runs is
logged and reported, so a silent fallback to CPU cannot go unnoticed.

ONNX Runtime's Linux wheels from 1.29 on start Microsoft's 1DS telemetry when the native
module loads: events are queued in ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` and
a background thread uploads them to ``mobile.events.data.microsoft.com`` (DNS, then
HTTPS) about ten seconds later and on retry. ``onnxruntime.disable_telemetry_events()``
comes too late to stop it; the only switch is the ``ORT_DISABLE_TELEMETRY`` environment
variable, read once as the library loads. So it is set here, before ``onnxruntime`` is
imported, and this module is the only one that imports it: a hospital service connects
to its PACS and its database and nothing else.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from indexer.errors import ProviderError

TELEMETRY_SWITCH = "ORT_DISABLE_TELEMETRY"
# Before ``import onnxruntime``: the value is read when the native library loads. Forced,
# not defaulted: an empty or "0" value left in a deployment's environment turns it back on.
_LOADED_BEFORE_SWITCH = "onnxruntime" in sys.modules
os.environ[TELEMETRY_SWITCH] = "1"

import onnxruntime as ort  # noqa: E402 (must follow the telemetry switch)

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ProviderChoice = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class SessionOptions:
    provider: ProviderChoice = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1


def resolve_provider(choice: ProviderChoice) -> str:
    """The ONNX Runtime provider name for a choice, or :class:`ProviderError`."""
    available = ort.get_available_providers()
    if choice == "cpu":
        return CPU
    if choice == "cuda":
        if CUDA not in available:
            raise ProviderError(
                "CUDA was asked for but onnxruntime offers only "
                f"{', '.join(available)}; install the GPU build in place of the CPU one "
                "(README: 'Using the real MedImageInsight checkpoint', three pip commands) "
                "or use provider=cpu"
            )
        return CUDA
    return CUDA if CUDA in available else CPU


def create_session(path: Path, options: SessionOptions) -> tuple[Any, str]:
    """An inference session for ``path`` and the provider that runs it."""
    if _LOADED_BEFORE_SWITCH:
        logger.warning(
            "onnxruntime was imported before %s could set %s=1; its telemetry may be "
            "running (import indexer.encoders first)",
            __name__,
            TELEMETRY_SWITCH,
        )
    wanted = resolve_provider(options.provider)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3
    providers = [wanted, CPU] if wanted == CUDA else [CPU]
    session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    granted = session.get_providers()[0]
    if wanted == CUDA and granted != CUDA:
        if options.provider == "cuda":
            raise ProviderError(
                f"CUDA was asked for but ONNX Runtime could not start it for "
                f"{path.name} (check the CUDA and cuDNN libraries); "
                f"it offered {granted}"
            )
        logger.warning(
            "CUDA is installed but did not start for %s; running on %s", path.name, granted
        )
    logger.info("%s runs on %s", path.name, granted)
    return session, granted


def run_session(session: Any, provider: str, output: str, inputs: dict[str, Any]) -> Any:
    """``session.run`` for one output. On CUDA with I/O binding: the inputs are copied to
    the device once and the output is allocated there by ONNX Runtime, then copied back,
    instead of the per-call staging that ``run`` does."""
    if provider != CUDA:
        return session.run([output], inputs)[0]
    binding = session.io_binding()
    for name, value in inputs.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output(output, "cuda")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]
