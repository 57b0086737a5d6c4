"""Decoder workers behind the live service, with the settings a deployment sets: one bad
upload never fails the next, and the patient-hash salt reaches the workers (build with a
salt, ``patient_key`` stored and never the ID, ``exclude_same_patient`` over HTTP)."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from service.app import create_app
from tests.cli.test_cli_embed import medsearch
from tests.imaging.test_guard import sof0_height_zero
from tests.service.conftest import settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow
MODEL = str(Path(__file__).parents[1] / "data" / "test_model")
SALT = "a-site-secret-salt-0123456789"


def _bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


def _upload(base: str, data: bytes, **options: object) -> httpx.Response:
    files = {"file": ("upload.dcm", io.BytesIO(data), "application/dicom")}
    form = {"options": json.dumps({"k": 5, **options})}
    return httpx.post(f"{base}/v1/search/image", files=files, data=form, timeout=120)


def test_a_bad_upload_never_fails_the_next(
    built_index: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """bad, good, good x3: before, 422 200 200 | 422 422 200 | ... (a worker left at its
    memory limit answered the next upload with 'decoder crashed')."""
    monkeypatch.setenv("MEDSEARCH_DECODE_MEMORY_MB", "1024")  # the bomb fails sooner
    app = create_app(settings_for(built_index[0], workers=1))
    bad, good = sof0_height_zero(), _bytes("CT_small.dcm")
    with serve(app) as base:
        codes = [_upload(base, data).status_code for _ in range(3) for data in (bad, good, good)]
        refusal = _upload(base, bad).json()
    assert codes == [422, 200, 200] * 3
    assert refusal["detail"].startswith("decode memory limit")


@pytest.fixture(scope="module")
def salted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("salted")
    src = root / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm"):
        shutil.copy(_bytes_path(name), src / name)
    index = root / "index"
    run = medsearch(
        "index", "build", str(src), "--index", str(index), "--model", MODEL, "--no-progress",
        env={"MEDSEARCH_PATIENT_HASH_SALT": SALT, "MEDSEARCH_INTRA_OP_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("indexed 3,"), run.stdout
    yield index


def _bytes_path(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None
    return path


def test_a_salted_build_stores_the_patient_key_never_the_id(salted: Path) -> None:
    with sqlite3.connect(salted / "catalog.sqlite3") as db:
        keys = dict(db.execute("SELECT source_uri, patient_key FROM items").fetchall())
        failures = db.execute("SELECT count(*) FROM failures").fetchone()[0]
    assert failures == 0
    ct = next(key for uri, key in keys.items() if uri.endswith("CT_small.dcm"))
    assert ct and len(ct) == 32
    raw = (salted / "catalog.sqlite3").read_bytes()
    for value in (b"1CT1", b"4MR1", b"CompressedSamples"):  # PatientID, PatientName
        assert value not in raw


def test_exclude_same_patient_through_the_live_service(
    salted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSEARCH_PATIENT_HASH_SALT", SALT)
    app = create_app(settings_for(salted))
    with serve(app) as base:
        plain = _upload(base, _bytes("CT_small.dcm"))
        excluded = _upload(base, _bytes("CT_small.dcm"), exclude_same_patient=True)
    assert plain.status_code == 200 and excluded.status_code == 200, excluded.text
    first = plain.json()["results"][0]
    assert first["source_uri"].endswith("CT_small.dcm") and first["score"] > 0.999
    uris = [hit["source_uri"] for hit in excluded.json()["results"]]
    assert uris and not any(uri.endswith("CT_small.dcm") for uri in uris)


@pytest.mark.parametrize("salt", [SALT, ""])  # "" is what docker-compose passes when unset
def test_cli_image_commands_with_a_salt(salt: str, salted: Path, tmp_path: Path) -> None:
    env = {"MEDSEARCH_PATIENT_HASH_SALT": salt}
    ct = _bytes_path("CT_small.dcm")
    for args in (
        ("embed", "--model", MODEL, "--image", ct),
        ("preview", ct, "-o", str(tmp_path / "p.png")),
        ("index", "search", "--index", str(salted), "--model", MODEL, "--image", ct),
    ):
        run = medsearch(*args, env=env)
        assert run.returncode == 0, (args, run.stderr[-1500:])
        assert "decoder crashed" not in run.stdout + run.stderr
