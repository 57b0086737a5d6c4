"""Domain errors of the indexer, each with a message a user can act on.

The service maps these to HTTP codes in one place; the CLI prints their message.
"""

from __future__ import annotations


class MedsearchError(Exception):
    """Base class of every error medsearch raises on purpose."""


class ModelError(MedsearchError):
    """A model directory or checkpoint cannot be used."""


class ModelConfigError(ModelError):
    """A release's ``config.yaml`` is missing, malformed or describes an unsupported model."""


class CheckpointError(ModelError):
    """A checkpoint's weights do not fit the architecture (missing, unexpected, mis-shaped)."""


class ManifestError(ModelError):
    """An exported model directory fails verification (manifest, hashes, files)."""


class SelfTestError(ModelError):
    """A model no longer reproduces the golden embeddings stored in its manifest."""


class ProviderError(ModelError):
    """An ONNX Runtime execution provider was required and is not available."""


class ImageInputError(MedsearchError):
    """An image cannot be turned into model input (unsupported mode, empty, corrupt)."""


class TextInputError(MedsearchError):
    """A text input cannot be embedded."""


class ImageRefused(ImageInputError):
    """An input file is not indexed, for a named reason (``reason``) and a short detail.

    Reasons are fixed phrases (see :class:`indexer.imaging.types.Reason`); the detail never
    carries attribute values from the file, so it is safe to log and to return.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class SourceError(MedsearchError):
    """An image source (directory, archive, DICOMDIR, item URI or sidecar CSV) cannot be used.

    The message names the path or URI and says what was expected instead.
    """


class CatalogError(MedsearchError):
    """The catalog cannot be opened or does not hold what was asked for."""


class ModelMismatchError(MedsearchError):
    """Embeddings of a different model (fingerprint) or recipe would be mixed: refused."""


class VectorIndexError(MedsearchError):
    """Vectors or ids cannot go into (or be searched in) the FAISS index as given."""


class IndexMissingError(VectorIndexError):
    """No usable index is published: run ``medsearch index build`` (or ``rebuild``)."""


class IndexCorruptError(VectorIndexError):
    """A published index's files do not match its manifest: run ``medsearch index rebuild``."""


class SourceUnavailableError(SourceError):
    """A remote source (a PACS) cannot be reached: the run stops and can be resumed."""
