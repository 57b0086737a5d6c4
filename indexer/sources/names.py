"""Names of files and archive members: normalising them, and telling junk and unsafe ones.

- :func:`normalise_relpath` gives the form used for ``relpath``, member URIs and sidecar
  keys: forward slashes, no leading ``./``, no empty components.
- :func:`is_junk` is true for files that are obviously not images: operating-system
  litter (``__MACOSX/``, ``.DS_Store``, ``._x`` AppleDouble files, ``Thumbs.db``), hidden
  files and folders (a component starting with ``.``), DICOMDIR index files, and files
  whose suffix says they are text or documents (``.csv``, ``.txt``, ``.json``, ...). Files
  without a suffix are kept: DICOM files often have none.
- :func:`is_unsafe_member` is true for archive member names that are absolute or climb
  out with ``..``; such members are skipped with a warning, never opened.
"""

from __future__ import annotations

import re

JUNK_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini", "dicomdir"})
NON_IMAGE_SUFFIXES = frozenset(
    {
        ".csv",
        ".tsv",
        ".txt",
        ".md",
        ".rst",
        ".json",
        ".xml",
        ".html",
        ".htm",
        ".pdf",
        ".doc",
        ".docx",
        ".xls",
        ".xlsx",
        ".ini",
        ".cfg",
        ".log",
        ".yaml",
        ".yml",
        ".py",
        ".sh",
        ".exe",
        ".dll",
    }
)
_DRIVE = re.compile(r"^[A-Za-z]:")


def normalise_relpath(name: str) -> str:
    """``.\\a//b/x.dcm`` -> ``a/b/x.dcm``: forward slashes, no ``.`` or empty components."""
    parts = name.strip().replace("\\", "/").split("/")
    return "/".join(part for part in parts if part not in ("", "."))


def is_junk(relpath: str) -> bool:
    """Whether a file is obviously not an image (see the module docstring)."""
    parts = normalise_relpath(relpath).split("/")
    if any(part.startswith(".") or part.lower() in JUNK_NAMES for part in parts):
        return True
    name = parts[-1].lower()
    suffix = name[name.rfind(".") :] if "." in name else ""
    return suffix in NON_IMAGE_SUFFIXES


def is_unsafe_member(name: str) -> bool:
    """Whether an archive member name is absolute or contains a ``..`` component."""
    if "\x00" in name or name.startswith(("/", "\\")) or _DRIVE.match(name):
        return True
    return ".." in name.replace("\\", "/").split("/")
