"""Find, read and check a MedImageInsight release (export time; imports torch lazily).

Release layout (Hugging Face ``lion-ai/MedImageInsights``, directory ``2024.09.27/``)::

    config.yaml
    vision_model/medimageinsight-v1.0.0.pt       safetensors, both towers
    language_model/clip_tokenizer_4.16.2/        vocab.json, merges.txt

The checkpoint may use the current key names (``image_encoder.*``, ``lang_encoder.*``,
``image_projection``, ``lang_projection``, ``logit_scale``) or the older ones
(``visual.*``, ``text.*``, ``vision_projection``, ``text_projection``); both are mapped
to the current names. Any key that is missing, unexpected or of the wrong shape is a
:class:`CheckpointError` that lists them; nothing is loaded partially.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.errors import CheckpointError, ModelConfigError
from indexer.model.config import ModelConfig, load_release_config

if TYPE_CHECKING:
    import torch

    from indexer.model.torch_model import MedImageInsight

logger = logging.getLogger(__name__)

_OLD_PREFIXES = (("visual.", "image_encoder."), ("text.", "lang_encoder."))
_OLD_NAMES = {"vision_projection": "image_projection", "text_projection": "lang_projection"}
_LISTED = 20  # how many offending keys an error message names


@dataclass(frozen=True)
class ReleaseFiles:
    """The files of a release directory that the exporter reads."""

    root: Path
    config: Path
    checkpoint: Path
    vocab: Path
    merges: Path

    @property
    def vocab_size(self) -> int:
        with self.vocab.open(encoding="utf-8") as fh:
            return len(json.load(fh))


def find_release_files(root: Path) -> ReleaseFiles:
    """Locate config, checkpoint and tokenizer in a release directory, or say what is missing."""
    if not root.is_dir():
        raise ModelConfigError(
            f"{root} is not a directory (expected a release directory "
            "holding config.yaml, vision_model/ and language_model/)"
        )
    config = root / "config.yaml"
    problems = [] if config.is_file() else ["config.yaml"]
    weights = sorted((root / "vision_model").glob("*.pt")) + sorted(
        (root / "vision_model").glob("*.safetensors")
    )
    if not weights:
        problems.append("vision_model/*.pt (the safetensors checkpoint)")
    elif len(weights) > 1:
        preferred = [w for w in weights if w.name == "medimageinsight-v1.0.0.pt"]
        if not preferred:
            raise ModelConfigError(
                f"{root / 'vision_model'} holds several checkpoints "
                f"({', '.join(w.name for w in weights)}); keep one"
            )
        weights = preferred
    tok_dirs = sorted((root / "language_model").glob("clip_tokenizer*"))
    tok = tok_dirs[0] if tok_dirs else root / "language_model" / "clip_tokenizer_4.16.2"
    for name in ("vocab.json", "merges.txt"):
        if not (tok / name).is_file():
            problems.append(f"language_model/clip_tokenizer_*/{name}")
    if problems:
        raise ModelConfigError(
            f"{root} is not a complete MedImageInsight release; missing: " + ", ".join(problems)
        )
    return ReleaseFiles(
        root=root,
        config=config,
        checkpoint=weights[0],
        vocab=tok / "vocab.json",
        merges=tok / "merges.txt",
    )


def read_release_config(files: ReleaseFiles) -> ModelConfig:
    return load_release_config(files.config, files.vocab_size)


def canonical_key(key: str) -> str:
    """Map an older checkpoint key name to the current one."""
    for old, new in _OLD_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return _OLD_NAMES.get(key, key)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    return shown + (f" ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors checkpoint and return it under the current key names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {exc}") from exc
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        new = canonical_key(key)
        if new in out:
            raise CheckpointError(f"{path}: key {key!r} and another key both map to {new!r}")
        out[new] = tensor
    return out


def check_state_dict(
    model: MedImageInsight, state: dict[str, torch.Tensor], allow_unexpected: bool = False
) -> dict[str, torch.Tensor]:
    """Refuse a state dict that does not fit ``model`` exactly; return what to load."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} (config says {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected and not allow_unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mis_shaped:
        problems.append(
            f"{len(mis_shaped)} shape(s) contradict config.yaml: {_listing(mis_shaped)}"
        )
    if problems:
        raise CheckpointError(
            "checkpoint does not match the architecture in config.yaml: " + "; ".join(problems)
        )
    if unexpected:
        logger.warning(
            "ignoring %d unexpected checkpoint key(s): %s", len(unexpected), _listing(unexpected)
        )
    return {k: state[k].float() for k in expected}


def load_model(files: ReleaseFiles, allow_unexpected: bool = False) -> MedImageInsight:
    """Build the PyTorch model from a release and load its weights (eval mode, fp32)."""
    from indexer.model.torch_model import MedImageInsight

    cfg = read_release_config(files)
    model = MedImageInsight(cfg)
    state = check_state_dict(model, read_state_dict(files.checkpoint), allow_unexpected)
    model.load_state_dict(state, strict=True)
    return model.eval()
