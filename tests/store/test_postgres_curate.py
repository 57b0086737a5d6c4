"""Curation and evaluation on a PostgreSQL catalog give what they give on SQLite.

One corpus (a generated CT series with a slice held back, a planted colour-noise image,
re-encoded copies of pydicom's CT, its MR and US files, a sidecar ``finding`` column) is
built into a SQLite index and into an index whose catalog is on a real PostgreSQL server
(``MEDSEARCH_CATALOG_URL``). Each feature runs the same way on both through its real
entry point (the CLI as a subprocess, the service in-process) and the outputs are
compared whole: builds commit in source order, so ids agree too. A label column that
``index label`` writes on the server filters searches and is the label of ``eval``.
The password never shows in any output."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file

from indexer.imaging.decode import decode_path
from indexer.pipeline.runner import run_build
from indexer.settings import ImagingSettings
from service.app import create_app
from tests.curate.conftest import noise_png
from tests.pipeline.conftest import TEST_MODEL, options
from tests.series.corpus import write_series
from tests.service.conftest import settings_for
from tests.store.postgres import PASSWORD, postgres

pytestmark = pytest.mark.slow
pytest.importorskip("psycopg")

SLICES = 9  # one held back: 8 indexed
FILES = {  # pydicom's test files and their sidecar label ("": an empty label)
    "CT_small.dcm": "ct",
    "MR_small.dcm": "mr",
    "MR2_UNCR.dcm": "mr",
    "US1_UNCR.dcm": "us",
    "OBXXXX1A.dcm": "us",
    "emri_small.dcm": "",
}
ITEMS = SLICES - 1 + 1 + len(FILES) + 3  # slices, planted, files, three copies
ORGANS = {"ct": "ct scan", "mr": "magnetic resonance image", "us": "ultrasound image"}
VIEWS = {"head": "a head", "body": "a body"}


@dataclass(frozen=True)
class Corpus:
    src: Path
    sidecar: Path
    planted: Path  # indexed
    odd: Path  # not indexed: other colour noise
    held: Path  # not indexed: the series' middle slice


@dataclass(frozen=True)
class Pair:
    """The same corpus built twice: ``sqlite`` (its own file), ``pg`` (on the server)."""

    sqlite: Path
    pg: Path
    url: str

    def env(self, index: Path) -> dict[str, str]:
        return {"MEDSEARCH_CATALOG_URL": self.url} if index == self.pg else {}


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


def _write_corpus(root: Path) -> Corpus:
    src, aside = root / "src", root / "aside"
    aside.mkdir(parents=True)
    series = write_series(src / "series", seed=3, slices=SLICES)
    held = Path(shutil.move(series.paths[SLICES // 2], aside / "held.dcm"))
    for name in FILES:
        shutil.copy(_testdata(name), src / name)
    ct = Image.fromarray(decode_path(str(src / "CT_small.dcm"), ImagingSettings()).images[0].pixels)
    ct.save(src / "ct-export.png")
    ct.convert("L").save(src / "ct-export.jpg", quality=75)
    mr = Image.fromarray(decode_path(str(src / "MR_small.dcm"), ImagingSettings()).images[0].pixels)
    mr.resize((mr.width // 2, mr.height // 2)).save(src / "mr-half.png")
    planted = noise_png(src / "planted.png", seed=7)
    labels = {p.relative_to(src).as_posix(): "ct" for p in src.glob("series/*/*.dcm")}
    labels |= {**FILES, "ct-export.png": "ct", "ct-export.jpg": "ct", "mr-half.png": "mr"}
    labels["planted.png"] = "noise"  # no prompts for it: left out of zero-shot
    sidecar = root / "labels.csv"
    with sidecar.open("w", newline="") as fp:
        writer = csv.writer(fp)
        writer.writerow(["path", "finding"])
        writer.writerows(sorted(labels.items()))
    return Corpus(src, sidecar, planted, noise_png(aside / "odd.png", seed=8), held)


def _prompts(path: Path, table: dict[str, str]) -> Path:
    path.write_text("label,prompt\n" + "".join(f"{k},{v}\n" for k, v in table.items()))
    return path


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres() as url:
        yield url


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return _write_corpus(tmp_path_factory.mktemp("pg_curate"))


@pytest.fixture(scope="module")
def pair(pg_url: str, corpus: Corpus) -> Pair:
    root = corpus.src.parent
    built = Pair(root / "sqlite", root / "pg", pg_url)
    for index in (built.sqlite, built.pg):
        with pytest.MonkeyPatch.context() as mp:
            for name, value in built.env(index).items():
                mp.setenv(name, value)
            report = run_build(options([str(corpus.src)], index, sidecar=corpus.sidecar))
        assert report.indexed == ITEMS and not report.failed, report.to_dict()
    assert not (built.pg / "catalog.sqlite3").exists()  # that catalog is the server's
    return built


def _medsearch(pair: Pair, index: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``medsearch ARGS --index INDEX`` with that index's catalog; the password never shows."""
    run = subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args, "--index", str(index)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "MEDSEARCH_INTRA_OP_THREADS": "1", **pair.env(index)},
    )  # fmt: skip
    assert PASSWORD not in run.stdout + run.stderr
    return run


def _both(pair: Pair, *args: str) -> tuple[str, str]:
    """The stdout of one command on the SQLite index, then on the PostgreSQL one."""
    outputs = []
    for index in (pair.sqlite, pair.pg):
        run = _medsearch(pair, index, *args)
        assert run.returncode == 0, (index, run.stderr[-2000:])
        outputs.append(run.stdout)
    return outputs[0], outputs[1]


def _report(text: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(text)
    report.pop("seconds", None)  # wall time
    return report


@pytest.fixture(scope="module")
def labelled(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``index label --name organ`` on both; its output (the same on both)."""
    prompts = _prompts(tmp_path_factory.mktemp("prompts") / "organs.csv", ORGANS)
    args = ["index", "label", "--model", str(TEST_MODEL), "--prompts", str(prompts)]
    on_sqlite, on_pg = _both(pair, *args, "--name", "organ", "--batch-size", "5")
    assert json.loads(on_pg) == json.loads(on_sqlite)
    result: dict[str, Any] = json.loads(on_pg)
    return result


@pytest.fixture(scope="module")
def clients(pair: Pair) -> Iterator[tuple[TestClient, TestClient]]:
    """The service on the SQLite index, and on the PostgreSQL one."""
    with (
        TestClient(create_app(settings_for(pair.sqlite))) as on_sqlite,
        TestClient(create_app(settings_for(pair.pg, catalog_url=pair.url))) as on_pg,
    ):
        yield on_sqlite, on_pg


def _export(client: TestClient, *labels: str) -> list[dict[str, str]]:
    answer = client.get("/v1/items/export", params={"label": list(labels)})
    assert answer.status_code == 200, answer.text
    assert PASSWORD not in answer.text
    return list(csv.DictReader(io.StringIO(answer.text)))


def _filtered(client: TestClient, column: str, value: str) -> set[int]:
    body = {"text": "a medical image", "k": 100, "filters": {"labels": {column: value}}}
    answer = client.post("/v1/search/text", json=body)
    assert answer.status_code == 200, answer.text
    assert PASSWORD not in answer.text
    return {hit["id"] for hit in answer.json()["results"]}


def test_index_label_writes_the_same_column(
    labelled: dict[str, Any], clients: tuple[TestClient, TestClient]
) -> None:
    assert labelled["column"] == "organ" and labelled["items"] == ITEMS
    assert set(labelled["labels"]) == set(ORGANS)
    assert sum(n > 0 for n in labelled["labels"].values()) >= 2  # a filter keeps and drops
    on_sqlite, on_pg = (_export(client) for client in clients)
    assert on_pg == on_sqlite  # every item, its metadata and labels, the same ids
    assert len(on_pg) == ITEMS
    for row in on_pg:
        assert row["label:organ"] in ORGANS
        assert 1 / len(ORGANS) <= float(row["label:organ_probability"]) <= 1
    findings = {row["source_uri"].rsplit("/", 1)[-1]: row["label:finding"] for row in on_pg}
    assert findings["MR2_UNCR.dcm"] == "mr" and findings["planted.png"] == "noise"  # kept


def test_the_label_column_filters_live_searches_alike(
    pair: Pair,
    labelled: dict[str, Any],
    clients: tuple[TestClient, TestClient],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for client in clients:  # no such column yet
        assert _filtered(client, "view", "head") == set()
    prompts = _prompts(tmp_path / "views.csv", VIEWS)
    args = ["index", "label", "--model", str(TEST_MODEL), "--prompts", str(prompts)]
    on_sqlite, on_pg = _both(pair, *args, "--name", "view")
    assert json.loads(on_pg) == json.loads(on_sqlite)
    views = json.loads(on_pg)["labels"]
    assert min(views.values()) >= 1  # both occur: each filter keeps some and drops some

    rows = _export(clients[1])
    for column, counts in (("organ", labelled["labels"]), ("view", views)):
        for value, count in counts.items():
            chosen = {int(row["id"]) for row in rows if row[f"label:{column}"] == value}
            assert len(chosen) == count
            for client in clients:  # the services see the new column without a restart
                assert _filtered(client, column, value) == chosen
                assert {int(row["id"]) for row in _export(client, f"{column}={value}")} == chosen
    assert PASSWORD not in caplog.text


def test_outliers_alike(pair: Pair) -> None:
    on_sqlite, on_pg = _both(pair, "index", "outliers", "--json")
    assert json.loads(on_pg) == json.loads(on_sqlite)
    rows = json.loads(on_pg)["outliers"]
    assert len(rows) == ITEMS and {row["id"] for row in rows} == set(range(1, ITEMS + 1))
    assert rows[0]["percentile"] == 1.0 and rows[0]["score"] > rows[-1]["score"]
    top = _both(pair, "index", "outliers", "--json", "--top", "3", "--k", "100")
    assert json.loads(top[1]) == json.loads(top[0]) and len(json.loads(top[1])["outliers"]) == 3
    text = _both(pair, "index", "outliers", "--top", "4")
    assert text[1] == text[0] and len(text[1].splitlines()) == 5


def test_duplicates_alike(pair: Pair) -> None:
    on_sqlite, on_pg = _both(pair, "index", "duplicates", "--json")
    assert json.loads(on_pg) == json.loads(on_sqlite)
    named = [{m["source_uri"].rsplit("/", 1)[-1] for m in g} for g in json.loads(on_pg)["groups"]]
    assert {"CT_small.dcm", "ct-export.png", "ct-export.jpg"} in named
    assert {"MR_small.dcm", "mr-half.png"} in named
    on_sqlite, on_pg = _both(pair, "index", "duplicates", "--json", "--by", "embedding")
    assert json.loads(on_pg) == json.loads(on_sqlite) and json.loads(on_pg)["groups"]


def test_eval_retrieval_alike_on_a_sidecar_and_a_written_column(
    pair: Pair, labelled: dict[str, Any]
) -> None:
    args = ["eval", "--k", "1,3", "--json"]
    on_sqlite, on_pg = _both(pair, *args, "--label", "finding")
    assert _report(on_pg) == _report(on_sqlite)
    report = _report(on_pg)
    assert report["label_source"] == "sidecar" and report["unlabelled"] == 1
    assert report["items"] == ITEMS - 1 and set(report["per_label"]) == {"ct", "mr", "us"}
    assert report["skipped_labels"] == ["noise"]  # one item: no relevant candidate

    on_sqlite, on_pg = _both(pair, *args, "--label", "organ", "--exclude", "same-study")
    assert _report(on_pg) == _report(on_sqlite)
    report = _report(on_pg)
    assert report["label_source"] == "sidecar" and report["items"] == ITEMS
    assert report["unlabelled"] == 0 and report["exclude"] == "same-study"
    occurring = {label for label, n in labelled["labels"].items() if n}
    assert set(report["per_label"]) | set(report["skipped_labels"]) == occurring


def test_eval_zero_shot_alike_and_the_written_column_is_its_prediction(
    pair: Pair, labelled: dict[str, Any], tmp_path: Path
) -> None:
    prompts = _prompts(tmp_path / "organs.csv", ORGANS)
    args = ["eval", "zero-shot", "--model", str(TEST_MODEL), "--prompts", str(prompts), "--json"]
    on_sqlite, on_pg = _both(pair, *args, "--label", "finding")
    assert _report(on_pg) == _report(on_sqlite)
    report = _report(on_pg)
    assert report["unmatched"] == {"noise": 1} and report["unlabelled"] == 1
    assert report["items"] == ITEMS - 2

    # `index label` wrote the zero-shot prediction of these prompts: all of it agrees
    on_sqlite, on_pg = _both(pair, *args, "--label", "organ")
    assert _report(on_pg) == _report(on_sqlite)
    report = _report(on_pg)
    assert report["items"] == ITEMS and report["accuracy"] == 1.0
    counts = [labelled["labels"][name] for name in report["labels"]]
    assert report["confusion"] == [
        [n if i == j else 0 for j in range(len(counts))] for i, n in enumerate(counts)
    ]


def test_cli_search_csv_alike(pair: Pair) -> None:
    args = ["index", "search", "--model", str(TEST_MODEL), "--text", "ct scan", "-k", "5"]
    on_sqlite, on_pg = _both(pair, *args, "--format", "csv", "--modality", "MR")
    rows = list(csv.DictReader(io.StringIO(on_pg)))
    assert rows == list(csv.DictReader(io.StringIO(on_sqlite)))
    assert len(rows) == 3 and {row["modality"] for row in rows} == {"MR"}


def _qc(client: TestClient, path: Path, k: int = 10) -> dict[str, Any]:
    body = {"image": base64.b64encode(path.read_bytes()).decode(), "k": k}
    answer = client.post("/v1/qc", json=body)
    assert answer.status_code == 200, answer.text
    assert PASSWORD not in answer.text
    result: dict[str, Any] = answer.json()
    result.pop("index_version")  # a build's own id
    return result


def test_qc_alike(
    corpus: Corpus, clients: tuple[TestClient, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for path, k in ((corpus.planted, 10), (corpus.odd, 10), (corpus.held, 3)):
        on_sqlite, on_pg = (_qc(client, path, k) for client in clients)
        neighbours = [(n["id"], pytest.approx(n["cosine"])) for n in on_sqlite.pop("neighbors")]
        assert [(n["id"], n["cosine"]) for n in on_pg.pop("neighbors")] == neighbours
        assert on_pg == pytest.approx(on_sqlite)
        assert on_pg["index_items"] == on_pg["reference_items"] == ITEMS
    odd, held = (_qc(clients[1], path) for path in (corpus.odd, corpus.held))
    assert held["score"] < odd["score"] and held["percentile"] < odd["percentile"]
    assert PASSWORD not in caplog.text


def test_refusals_on_the_server_name_no_password(pair: Pair, tmp_path: Path) -> None:
    run = _medsearch(pair, pair.pg, "eval", "--label", "nope", "--json")
    assert run.returncode == 2 and "'nope'" in run.stderr and "finding" in run.stderr
    prompts = _prompts(tmp_path / "organs.csv", ORGANS)
    zero_shot = ["eval", "zero-shot", "--model", str(TEST_MODEL), "--prompts", str(prompts)]
    run = _medsearch(pair, pair.pg, *zero_shot, "--label", "nope")
    assert run.returncode == 2 and "'nope'" in run.stderr
    # a database that is not there: the URL (and its password) stays out of the message
    wrong = Pair(pair.sqlite, pair.pg, pair.url.rsplit("/", 1)[0] + "/nosuchdb")
    run = _medsearch(wrong, wrong.pg, "index", "outliers")
    assert run.returncode == 2 and "MEDSEARCH_CATALOG_URL" in run.stderr
    label = ["index", "label", "--model", str(TEST_MODEL), "--prompts", str(prompts)]
    run = _medsearch(wrong, wrong.pg, *label, "--name", "organ")
    assert run.returncode == 2 and "MEDSEARCH_CATALOG_URL" in run.stderr  # a command that writes
    assert "Traceback" not in run.stderr
