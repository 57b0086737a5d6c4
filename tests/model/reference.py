"""Build the reference implementation (medimageinsights 0.1.1) with seeded random weights."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any


def reference_dir() -> Path:
    import MedImageInsights

    return Path(MedImageInsights.__file__).parent / "v20240927"


def reference_opt(raw_config: dict[str, Any]) -> dict[str, Any]:
    """The reference's own config.yaml with our architecture sections applied."""
    from MedImageInsights.Utils.Arguments import load_opt_from_config_files

    base = reference_dir()
    opt: dict[str, Any] = load_opt_from_config_files([str(base / "config.yaml")])
    for section in ("IMAGE_ENCODER", "LANG_ENCODER", "UNICL_MODEL"):
        patch = copy.deepcopy(raw_config[section])
        spec = patch.pop("SPEC", None)
        opt[section].update(patch)
        if spec is not None:
            opt[section]["SPEC"].update(spec)
    opt["IMAGE_ENCODER"]["SPEC"]["ENABLE_CHECKPOINT"] = False
    opt["UNICL_MODEL"]["LOAD_PRETRAINED"] = False
    opt["LANG_ENCODER"]["PRETRAINED_TOKENIZER"] = os.path.join(
        base, "language_model", "clip_tokenizer_v4162"
    )
    return opt


def build_reference(raw_config: dict[str, Any], seed: int) -> tuple[Any, dict[str, Any]]:
    """The reference UniCL model in eval mode, with its random init under ``seed``."""
    import torch
    from MedImageInsights.Models.UniCLModel import build_unicl_model

    opt = reference_opt(raw_config)
    torch.manual_seed(seed)
    model = build_unicl_model(opt)
    with torch.no_grad():  # the reference initialises logit_scale to 1; use a real-like value
        model.logit_scale.fill_(4.51)
    return model.eval(), opt
