"""fp16 variants of the exported graphs, for GPUs (``medsearch model export --fp16``).

Weights and activations become fp16; inputs and outputs stay fp32 so callers do not
change. LayerNormalization and the final L2 normalisation keep fp32 arithmetic (their
reductions lose precision in fp16); casts are inserted around them.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

# ops whose reductions stay in fp32
KEEP_FP32 = ["LayerNormalization", "ReduceL2", "ReduceSumSquare", "Softmax"]


def convert_to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():  # it warns for every tiny weight it rounds to 1e-7
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=KEEP_FP32)
    onnx.save(half, str(dst))
    logger.info("wrote fp16 variant %s", dst.name)
