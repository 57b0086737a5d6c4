"""``medsearch index`` as a user runs it (a real subprocess): failures that are retried and
those that are not, attempts in ``stats``, and read-only commands that create nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from indexer.pipeline.progress import count_items
from indexer.pipeline.runner import open_catalog
from tests.cli.test_cli_embed import medsearch

MODEL = str(Path(__file__).parents[1] / "data" / "test_model")
QUICK = {"MEDSEARCH_INTRA_OP_THREADS": "1"}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(name)
        assert path is not None
        shutil.copy(path, src / name)
    (src / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)  # corrupt
    return src


def _build(folder: Path, index: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    run = medsearch(
        "index", "build", str(folder), "--index", str(index), "--model", MODEL,
        "--no-progress", "--workers", "1", *extra, env={**QUICK, **(env or {})},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _stats(index: Path) -> dict[str, object]:
    run = medsearch("index", "stats", "--index", str(index), "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    stats: dict[str, object] = json.loads(run.stdout)
    return stats


def test_transient_failures_are_retried_permanent_ones_are_not(
    folder: Path, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    timeouts = {"MEDSEARCH_DECODE_TIMEOUT_S": "0.001"}  # every decode times out
    _build(folder, index, env=timeouts)
    stats = _stats(index)
    assert stats["failures"] == {"decode timeout": 3}
    assert stats["retried_next_run"] == 3

    _build(folder, index, env=timeouts)  # second attempt, still timing out
    assert _stats(index)["failure_attempts"] == {"decode timeout": {"2": 3}}

    out = _build(folder, index)  # the third attempt succeeds for the two good files
    assert out.startswith("indexed 2,"), out
    stats = _stats(index)
    assert stats["items"] == {"active": 2}
    assert stats["failures"] == {"corrupt": 1}  # an indexed source loses its failure row
    assert stats["failure_attempts"] == {"corrupt": {"3": 1}}
    assert stats["retried_next_run"] == 0

    assert _build(folder, index).startswith("indexed 0, skipped 3")  # corrupt: not retried
    out = _build(folder, index, "--retry-reason", "corrupt")
    assert out.startswith("indexed 0, skipped 2"), out
    assert _stats(index)["failure_attempts"] == {"corrupt": {"4": 1}}


def test_attempts_stop_at_the_limit_until_asked(folder: Path, tmp_path: Path) -> None:
    (folder / "MR_small.dcm").unlink()
    (folder / "broken.dcm").unlink()
    index = tmp_path / "index"
    timeouts = {"MEDSEARCH_DECODE_TIMEOUT_S": "0.001"}
    for _ in range(3):
        _build(folder, index, env=timeouts)
    assert _stats(index)["failure_attempts"] == {"decode timeout": {"3": 1}}
    assert _build(folder, index).startswith("indexed 0, skipped 1")  # 3 attempts: done
    assert _build(folder, index, "--retry-failed").startswith("indexed 1,")


def test_an_unknown_retry_reason_is_refused(folder: Path, tmp_path: Path) -> None:
    run = medsearch(
        "index", "build", str(folder), "--index", str(tmp_path / "i"), "--model", MODEL,
        "--retry-reason", "bad luck",
    )  # fmt: skip
    assert run.returncode == 2
    assert "unknown failure reason" in run.stderr
    assert not (tmp_path / "i").exists()


def test_a_resumed_run_counts_only_what_is_left(folder: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    (folder / "broken.dcm").unlink()
    extra = folder.parent / "later"
    extra.mkdir()
    shutil.copy(folder / "CT_small.dcm", extra / "again.dcm")
    _build(folder, index)
    catalog = open_catalog(index, read_only=True)
    try:
        assert count_items([str(folder)], catalog) == 0
        assert count_items([str(folder), str(extra)], catalog) == 1
    finally:
        catalog.close()


@pytest.mark.parametrize("command", ["stats", "verify", "search"])
def test_read_only_commands_create_nothing(command: str, tmp_path: Path) -> None:
    extra = ["--model", MODEL, "--text", "ct"] if command == "search" else []
    for target in (tmp_path / "typo", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        run = medsearch("index", command, "--index", str(target), *extra)
        assert run.returncode == 2, (command, run.stdout, run.stderr[-1000:])
        assert "no index here" in run.stderr
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "typo").exists()
    assert list((tmp_path / "empty").iterdir()) == []


def test_read_only_commands_leave_a_catalog_unchanged(folder: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    _build(folder, index)
    catalog = index / "catalog.sqlite3"
    before = catalog.read_bytes()
    for args in (
        ("stats", "--index", str(index)),
        ("verify", "--index", str(index)),
        ("search", "--index", str(index), "--model", MODEL, "--text", "ct head"),
    ):
        run = medsearch("index", *args)
        assert run.returncode == 0, run.stderr[-1000:]
    assert catalog.read_bytes() == before


def test_a_build_prints_the_summary_not_codec_chatter(tmp_path: Path) -> None:
    """openjpeg writes "Marker handler function failed ..." to the terminal for a damaged
    codestream, and pydicom warns; a build's output is its summary line alone."""
    src = tmp_path / "src"
    src.mkdir()
    ct, us = get_testdata_file("CT_small.dcm"), get_testdata_file("US1_J2KR.dcm")
    assert ct is not None and us is not None
    shutil.copy(ct, src / "ct.dcm")
    data = bytearray(Path(us).read_bytes())
    siz = data.find(b"\xff\x51")
    data[siz + 40 : siz + 42] = b"\0\0"  # an invalid component subsampling in the SIZ
    (src / "damaged_j2k.dcm").write_bytes(bytes(data))
    run = medsearch(
        "index", "build", str(src), "--index", str(tmp_path / "index"), "--model", MODEL,
        "--no-progress", env=QUICK,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr == "", run.stderr
    assert run.stdout.count("\n") == 1 and run.stdout.startswith("indexed 1,"), run.stdout
    assert "cannot decode pixel data 1" in run.stdout


def test_search_takes_the_service_s_filters(folder: Path, tmp_path: Path) -> None:
    """Sidecar labels, modality and source prefix narrow a CLI search as they narrow the
    service's (before, the CLI had --modality alone); a malformed filter is a usage error."""
    (tmp_path / "labels.csv").write_text("path,finding\nCT_small.dcm,nodule\nMR_small.dcm,normal\n")
    index = tmp_path / "index"
    _build(folder, index, "--metadata", str(tmp_path / "labels.csv"), "--key", "path")

    def names(*filters: str) -> list[str]:
        run = medsearch(
            "index", "search", "--index", str(index), "--model", MODEL, "--text", "ct", *filters
        )
        assert run.returncode == 0, run.stderr[-1000:]
        return sorted(
            json.loads(line)["source_uri"].rsplit("/", 1)[1] for line in run.stdout.splitlines()
        )

    assert names() == ["CT_small.dcm", "MR_small.dcm"]
    assert names("--label", "finding=nodule") == ["CT_small.dcm"]
    assert names("--label", "finding=normal", "--modality", "MR") == ["MR_small.dcm"]
    assert names("--label", "finding=normal", "--modality", "CT") == []
    assert names("--source-prefix", (folder / "MR").as_uri()) == ["MR_small.dcm"]
    assert names("--study-date-from", "2100-01-01") == []
    for bad, message in (
        (("--label", "finding"), "COLUMN=VALUE"),
        (("--study-date-to", "2024-02-30"), "--study-date-to"),
        (("--label", "a=1", "--label", "a=2"), "twice"),
    ):
        run = medsearch(
            "index", "search", "--index", str(index), "--model", MODEL, "--text", "ct", *bad
        )
        assert run.returncode == 2 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
