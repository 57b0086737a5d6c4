"""Blue/green on a live server: the service is pointed at stable symlinks (an index and a
model); the index is re-embedded with a second model into a new directory
(``medsearch index reembed``), and the symlinks are swapped atomically, one after the
other, while clients keep searching. The server switches when the index and the model
it finds agree, never answers from a mixture of the two, never fails a request, and rolls
back the same way."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from indexer.encoders.encoder import Encoder
from indexer.pipeline.runner import BuildReport
from indexer.settings import EncoderSettings
from service import runtime as runtime_module
from service import served as generations
from service.app import create_app
from tests.conftest import copy_testdata
from tests.service.conftest import settings_for
from tests.service.live import serve

pytestmark = pytest.mark.slow
MODEL = Path(__file__).parents[1] / "data" / "test_model"
FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "US1_UNCR.dcm")
QUICK = {**os.environ, "MEDSEARCH_INTRA_OP_THREADS": "1"}


def _cli(*args: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args, "--no-progress", "--workers", "1"],
        capture_output=True, text=True, check=False, timeout=300, env=QUICK,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]


def _swap(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (``ln -sfn`` + ``mv -T``)."""
    new = link.with_name(link.name + ".new")
    new.unlink(missing_ok=True)
    new.symlink_to(target)
    os.replace(new, link)


def _fingerprint(model: Path) -> str:
    return Encoder.load(model, EncoderSettings(provider="cpu", self_test=False)).fingerprint


def _until(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


class Clients:
    """Image and text searches in a loop, from two threads, recording every answer."""

    def __init__(self, base: str, image: bytes) -> None:
        self.base, self.image = base, image
        self.codes: Counter[int] = Counter()
        self.self_scores: list[float] = []  # the query image's own score, each answer
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(2)]

    def _loop(self, n: int) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as http:
            while not self._stop.is_set():
                if n == 0:
                    r = http.post("/v1/search/image", files={"file": ("q.dcm", self.image)})
                    if r.status_code == 200:
                        self.self_scores.append(r.json()["results"][0]["score"])
                else:
                    r = http.post("/v1/search/text", json={"text": "chest x-ray", "k": 3})
                self.codes[r.status_code] += 1

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def test_symlinks_swapped_under_load_switch_index_and_model_together(
    second_model: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    monkeypatch.setattr(generations, "RETIRE_AFTER_S", 1.0)  # close old generations quickly
    src = copy_testdata(tmp_path / "src", FILES)
    blue, green = tmp_path / "idx-blue", tmp_path / "idx-green"
    _cli("index", "build", str(src), "--index", str(blue), "--model", str(MODEL))
    _cli(
        "index", "reembed", "--from", str(blue), "--index", str(green),
        "--model", str(second_model),
    )  # fmt: skip
    current, model = tmp_path / "current", tmp_path / "model"
    current.symlink_to(blue)
    model.symlink_to(MODEL)
    old_fp, new_fp = _fingerprint(MODEL), _fingerprint(second_model)

    app = create_app(settings_for(current, model_dir=model, index_poll_s=0.2))
    image = (src / "CT_small.dcm").read_bytes()
    with serve(app) as base, Clients(base, image) as clients:

        def ready() -> dict[str, object]:
            answer: dict[str, object] = httpx.get(f"{base}/readyz", timeout=10).json()
            return answer

        _until(lambda: len(clients.self_scores) >= 2)
        assert ready()["model_fingerprint"] == old_fp
        # the index first: it needs the second model, which is not in place yet
        _swap(current, green)
        _until(lambda: "not switched to" in caplog.text)
        assert ready()["model_fingerprint"] == old_fp  # the old pair keeps serving
        served = len(clients.self_scores)
        _until(lambda: len(clients.self_scores) >= served + 2)
        # then the model: the pair agrees, the server switches
        _swap(model, second_model)
        _until(lambda: ready()["model_fingerprint"] == new_fp)
        switched = len(clients.self_scores)
        _until(lambda: len(clients.self_scores) >= switched + 3)
        # the blue generation is closed once its last request is done
        _until(lambda: f"closed the generation of index {blue}" in caplog.text)
        # rolling back is the same swap the other way (the model first, this time)
        _swap(model, MODEL)
        _swap(current, blue)
        _until(lambda: ready()["model_fingerprint"] == old_fp)
        back = len(clients.self_scores)
        _until(lambda: len(clients.self_scores) >= back + 2)
    # every answer came from one generation: the query image found itself at ~1.0 each
    # time (a vector of one model searched among the other's would not), and no request
    # failed while the generations changed under it
    assert set(clients.codes) == {200}, clients.codes
    assert min(clients.self_scores) > 0.999, min(clients.self_scores)
    assert caplog.text.count("switched to index") == 2


def test_a_symlink_swapped_before_the_index_is_published_is_followed_once_it_is(
    built_index: tuple[Path, BuildReport],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator swaps the stable name to a directory whose index is still being built:
    refused (logged once), retried, and followed once the index is there, with no other
    change of path."""
    caplog.set_level(logging.INFO, logger="service")
    monkeypatch.setattr(runtime_module, "RETRY_SWITCH_S", 0.5)
    blue, staged = built_index[0], tmp_path / "idx-staged"
    staged.mkdir()
    current = tmp_path / "current"
    current.symlink_to(blue)
    app = create_app(settings_for(current, index_poll_s=0.2))
    with serve(app) as base:
        _swap(current, staged)
        _until(lambda: "not switched to" in caplog.text)
        time.sleep(1.5)  # a few retries, the same reason: logged once
        assert caplog.text.count("not switched to") == 1
        shutil.copytree(blue, staged, dirs_exist_ok=True)  # "published" now
        _until(lambda: f"switched to index {staged}" in caplog.text)
        r = httpx.post(f"{base}/v1/search/text", json={"text": "ct", "k": 1}, timeout=60)
        assert r.status_code == 200 and r.json()["results"]
