"""The real DICOM corpus the tests read: pydicom's test files, pydicom-data and deid-data.

Enumerated by walking the installed packages' data folders (pydicom's
``get_testdata_files("*")`` would try to download files that are not installed).
"""

from __future__ import annotations

from pathlib import Path

import pydicom.data


def corpus_roots() -> list[Path]:
    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # pydicom-data

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    try:
        import deid_data

        roots.append(Path(deid_data.__file__).parent)
    except ImportError:
        pass
    return roots


def corpus_files() -> list[Path]:
    skip = {".py", ".pyc"}
    return [
        path
        for root in corpus_roots()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix not in skip and "__pycache__" not in path.parts
    ]


def label(path: Path) -> str:
    """A short, stable name: the root's package folder and the path under it."""
    for root in corpus_roots():
        if path.is_relative_to(root):
            return f"{root.name}/{path.relative_to(root)}"
    return path.name
