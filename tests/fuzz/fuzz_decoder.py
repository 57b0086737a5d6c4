"""atheris target for the decoder entry point ``indexer.imaging.decode_bytes``.

    python tests/fuzz/fuzz_decoder.py -atheris_runs=100000 -artifact_prefix=/tmp/fuzz/ CORPUS_DIR

``decode_bytes`` must never raise: every input renders or is refused with a reason. Run
it under the guard's limits (``ulimit -v``) to catch unbounded allocations as well. Send
crash files out of the working tree (``-artifact_prefix``); a crash that is fixed becomes
a regression input in ``tests/fuzz/regressions/``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    from indexer.imaging import decode_bytes
    from indexer.settings import ImagingSettings

SETTINGS = ImagingSettings(max_pixels=4_000_000, max_frames=64)


def TestOneInput(data: bytes) -> None:
    result = decode_bytes(data, SETTINGS)
    if result.ok:
        for image in result.images:
            px = image.pixels
            assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3
    else:
        assert result.reason is not None


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
