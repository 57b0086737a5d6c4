"""Settings of medsearch, from ``MEDSEARCH_*`` environment variables or arguments.

One class, built once at start-up and passed in; unsafe or contradictory values are
refused when it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EncoderSettings(BaseSettings):
    """How the ONNX encoders run."""

    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_", extra="ignore")

    model_dir: Path | None = Field(default=None, description="exported model directory")
    provider: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="cpu; cuda (refused if the CUDA provider is not installed or usable); "
        "auto (CUDA when available, else CPU)",
    )
    precision: Literal["auto", "fp32", "fp16"] = Field(
        default="auto", description="auto: fp16 on CUDA when the export has it, else fp32"
    )
    intra_op_threads: int = Field(default=0, ge=0, description="0: ONNX Runtime's default")
    inter_op_threads: int = Field(default=1, ge=0)
    batch_size: int = Field(default=8, ge=1, le=1024)
    verify_hashes: bool = Field(default=True, description="check every file's sha256 on load")
    self_test: bool = Field(default=True, description="refuse a model that fails its goldens")
