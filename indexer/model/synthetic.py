"""Seeded random MedImageInsight checkpoints in the release layout (tests, benchmarks).

The real weights cannot be downloaded on the project's machines, so the exporter and the
runtime are tested on checkpoints made here: same layout, same key names, same
``config.yaml`` sections as the public release, at any size (``SMALL`` for the bundled
test model, ``FULL`` for benchmarks). Imports torch lazily.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHECKPOINT_NAME = "medimageinsight-v1.0.0.pt"
TOKENIZER_DIR = "clip_tokenizer_4.16.2"

#: The architecture sections of the released ``2024.09.27/config.yaml``.
FULL: dict[str, Any] = {
    "IMAGE_ENCODER": {
        "NAME": "davit_v1",
        "NUM_CLASSES": 0,
        "IMAGE_SIZE": [480, 480],
        "LOAD_PRETRAINED": True,
        "PRETRAINED": "",
        "PRETRAINED_LAYERS": "*",
        "IMAGE_MEAN": [0.485, 0.456, 0.406],
        "IMAGE_STD": [0.229, 0.224, 0.225],
        "SPEC": {
            "DROP_RATE": 0.1,
            "DROP_PATH_RATE": 0.2,
            "PATCH_SIZE": [7, 3, 3, 3],
            "PATCH_STRIDE": [4, 2, 2, 2],
            "PATCH_PADDING": [3, 1, 1, 1],
            "PATCH_PRENORM": [False, True, True, True],
            "DIM_EMBED": [256, 512, 1024, 2048],
            "NUM_HEADS": [8, 16, 32, 64],
            "NUM_GROUPS": [8, 16, 32, 64],
            "DEPTHS": [1, 1, 9, 1],
            "WINDOW_SIZE": 12,
            "ENABLE_CHECKPOINT": True,
        },
    },
    "LANG_ENCODER": {
        "NAME": "transformer",
        "LOAD_PRETRAINED": False,
        "PRETRAINED": "",
        "PRETRAINED_LAYERS": "*",
        "TOKENIZER": "clip",
        "CONTEXT_LENGTH": 77,
        "WIDTH": 1024,
        "HEADS": 16,
        "LAYERS": 16,
        "AUTOGRESSIVE": False,
    },
    "UNICL_MODEL": {
        "DIM_PROJECTION": 1024,
        "GATHER_TENSORS": True,
        "LOAD_PRETRAINED": True,
        "PRETRAINED": "",
        "PRETRAINED_LAYERS": "*",
    },
    "VERBOSE": True,
}


def small_config() -> dict[str, Any]:
    """A few-MB model with the full structure (4 stages, window padding, 2 text layers)."""
    cfg = copy.deepcopy(FULL)
    spec = cfg["IMAGE_ENCODER"]["SPEC"]
    spec.update(
        DIM_EMBED=[16, 32, 48, 64],
        NUM_HEADS=[1, 2, 3, 4],
        NUM_GROUPS=[1, 2, 3, 4],
        DEPTHS=[1, 1, 2, 1],
    )
    cfg["LANG_ENCODER"].update(WIDTH=32, HEADS=4, LAYERS=2)
    cfg["UNICL_MODEL"]["DIM_PROJECTION"] = 32
    return cfg


def random_state_dict(
    raw_config: dict[str, Any], vocab_size: int, seed: int, logit_scale: float = 4.5
) -> dict[str, torch.Tensor]:
    """Seeded random weights for ``raw_config``, initialised like the reference.

    Linear weights: truncated normal (std 0.02); convolutions: normal (std 0.02); biases
    small; LayerNorm weights near 1 (randomised, so a swapped parameter shows up).
    """
    import torch

    from indexer.model.config import parse_config
    from indexer.model.torch_model import MedImageInsight

    gen = torch.Generator().manual_seed(seed)
    model = MedImageInsight(parse_config(raw_config, vocab_size))
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        shape = tensor.shape
        if name == "logit_scale":
            value = torch.tensor(logit_scale)
        elif name.endswith(
            ("norm.weight", "norms.weight", "ln_1.weight", "ln_2.weight", "ln_final.weight")
        ):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("bias"):
            value = 0.02 * torch.randn(shape, generator=gen)
        elif name.endswith("positional_embedding"):
            value = 0.01 * torch.randn(shape, generator=gen)
        elif len(shape) == 4:  # convolutions
            value = 0.02 * torch.randn(shape, generator=gen)
        else:
            value = torch.nn.init.trunc_normal_(torch.empty(shape), std=0.02, generator=gen)
        state[name] = value.contiguous()
    return state


def old_key_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under the older names (``visual.*``, ``text.*``, ...)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("image_encoder."):
            key = "visual." + key[len("image_encoder.") :]
        elif key.startswith("lang_encoder."):
            key = "text." + key[len("lang_encoder.") :]
        key = {"image_projection": "vision_projection", "lang_projection": "text_projection"}.get(
            key, key
        )
        renamed[key] = tensor
    return renamed


def write_release(
    root: Path,
    raw_config: dict[str, Any],
    state: dict[str, torch.Tensor],
    vocab: Path,
    merges: Path,
) -> Path:
    """Write ``config.yaml``, the safetensors checkpoint and the tokenizer; return ``root``."""
    import shutil

    import yaml
    from safetensors.torch import save_file

    (root / "vision_model").mkdir(parents=True, exist_ok=True)
    tok = root / "language_model" / TOKENIZER_DIR
    tok.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(raw_config, sort_keys=False), encoding="utf-8")
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(root / "vision_model" / CHECKPOINT_NAME)
    )
    shutil.copyfile(vocab, tok / "vocab.json")
    shutil.copyfile(merges, tok / "merges.txt")
    return root


TEST_MODEL_SEED = 20240927


def build_test_model(
    out: Path,
    vocab: Path,
    merges: Path,
    *,
    seed: int = TEST_MODEL_SEED,
    fp16: bool = True,
    overwrite: bool = True,
) -> Any:
    """Make the bundled test model: a seeded small release, exported by our exporter."""
    import json
    import tempfile

    from indexer.model.export import export_release

    with open(vocab, encoding="utf-8") as fh:
        vocab_size = len(json.load(fh))
    cfg = small_config()
    with tempfile.TemporaryDirectory(prefix="medsearch-release-") as tmp:
        release = write_release(
            Path(tmp) / "release", cfg, random_state_dict(cfg, vocab_size, seed), vocab, merges
        )
        return export_release(release, out, fp16=fp16, overwrite=overwrite)
