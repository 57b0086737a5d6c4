"""Settings of medsearch, from ``MEDSEARCH_*`` environment variables or arguments.

One class, built once at start-up and passed in; unsafe or contradictory values are
refused when it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator
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
    batch_size: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="images or texts per encoder run (8 keeps ONNX Runtime's CPU memory "
        "arena small; 32-64 on a GPU)",
    )
    verify_hashes: bool = Field(default=True, description="check every file's sha256 on load")
    self_test: bool = Field(default=True, description="refuse a model that fails its goldens")


def check_catalog_url(value: SecretStr | None) -> SecretStr | None:
    """A SQLAlchemy URL whose dialect and driver are installed; empty is unset.

    The messages never quote the URL: it may hold a password.
    """
    if value is None or not value.get_secret_value().strip():
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(value.get_secret_value())
    except (ArgumentError, ValueError):
        raise ValueError(
            "not a database URL (dialect+driver://user:password@host/database)"
        ) from None
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise ValueError(f"SQLAlchemy has no dialect {url.drivername!r}") from None
    except ImportError as exc:
        raise ValueError(
            f"the driver of {url.drivername!r} is not installed (no module {exc.name!r})"
        ) from None
    return value


# MEDSEARCH_CATALOG_URL, read by the indexer's and the service's settings
CatalogUrl = Annotated[SecretStr | None, AfterValidator(check_catalog_url)]


class CatalogSettings(BaseSettings):
    """Where the catalog lives: SQLite in the index directory, or a database server."""

    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_", extra="ignore")

    catalog_url: CatalogUrl = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:password@host/medsearch "
        "(one database per index directory); default: catalog.sqlite3 in the index directory",
    )


class ReembedSettings(BaseSettings):
    """``index reembed``: where the catalog of ``--from`` lives when it is on a server
    (``MEDSEARCH_CATALOG_URL`` is the new index's, as for every command)."""

    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_", extra="ignore")

    from_catalog_url: CatalogUrl = Field(
        default=None,
        description="SQLAlchemy URL of the --from index's catalog; default: catalog.sqlite3 "
        "in the --from directory",
    )


class ImagingSettings(BaseSettings):
    """How input files are read: limits for untrusted bytes, frames, and the PHI policy."""

    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_", extra="ignore")

    max_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="largest frame (rows x columns) decoded; Pillow's own limit is ~89 M",
    )
    max_file_bytes: int = Field(default=1 << 30, ge=1, description="largest input file")
    max_frames: int = Field(default=4096, ge=1, description="most frames in one DICOM object")
    frames: Literal["middle", "all"] = Field(
        default="middle", description="multi-frame DICOM: the middle frame, or every frame"
    )
    decode_timeout_s: float = Field(default=60.0, gt=0, description="per file, guarded mode")
    decode_memory_mb: int = Field(
        default=4096, ge=256, description="address-space limit of a guarded decoder process"
    )
    phi_allow: list[str] = Field(
        default_factory=list,
        description="DICOM keywords of PHI attributes that may be stored (default: none)",
    )
    patient_hash_salt: SecretStr | None = Field(
        default=None,
        description="when set, store HMAC-SHA256(salt, issuer + patient ID) as patient_key",
    )

    @field_validator("phi_allow")
    @classmethod
    def _known_phi_keywords(cls, value: list[str]) -> list[str]:
        from indexer.imaging.phi import PHI_KEYWORDS, sequence_keywords

        unknown = sorted(set(value) - PHI_KEYWORDS)
        if unknown:
            raise ValueError(
                f"phi_allow names attributes that are not PHI keywords: {', '.join(unknown)} "
                "(non-PHI catalog attributes are always stored)"
            )
        sequences = sequence_keywords(sorted(set(value)))
        if sequences:
            raise ValueError(
                f"phi_allow names sequences, whose items hold other attributes (PHI not "
                f"allowed among them): {', '.join(sequences)}; name the attributes instead"
            )
        return sorted(set(value))

    @field_validator("patient_hash_salt", mode="before")
    @classmethod
    def _empty_salt_is_unset(cls, value: object) -> object:
        # docker-compose passes an empty value for an unset variable
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    @field_validator("patient_hash_salt")
    @classmethod
    def _salt_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("patient_hash_salt must be at least 16 characters")
        return value

    def salt_check(self) -> str:
        """The salt's check value (:func:`indexer.imaging.phi.salt_check`), never the salt."""
        from indexer.imaging.phi import salt_check

        salt = self.patient_hash_salt
        return salt_check(salt.get_secret_value() if salt is not None else None)
