"""The README's cluster, typed as a user types it: ``ray get-auth-token --generate``,
``ray start --head`` with token authentication, a second node joining it with
``ray start --address``, then ``medsearch index build ... --engine ray --ray-address auto``
from the head. Also what a user gets wrong: a host without the token, an address where
nothing listens (refused at once, not after minutes of Ray's retries, and before the
index is touched), and a build without ``--ray-address`` on a host where ``ray start``
runs a cluster (it starts a Ray of its own, as documented, instead of joining that one).
And ``index reembed --engine ray`` onto the cluster, from the CLI, with a second model.

One cluster for the module, two nodes on this host (1 + 2 logical CPUs), in Ray's default
temporary directory as ``ray start`` makes it, with ``HOME`` in a temporary folder (the
token is ``$HOME/.ray/auth_token``). ``ray stop`` at the end stops every Ray of this user
on the host: the Ray of ``test_ray.py`` is gone by then."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_cli_reembed import _rows, _snapshot
from tests.conftest import copy_testdata, has_module
from tests.pipeline.conftest import TEST_MODEL

pytestmark = [
    pytest.mark.skipif(not has_module("ray"), reason="needs the ray extra"),
    pytest.mark.slow,
]
BIN = Path(sys.executable).parent
FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm")  # 3 images, 1 refusal


@dataclass(frozen=True)
class Cluster:
    address: str  # the head's, as `ray start --head` prints it for the other nodes
    env: dict[str, str]  # a user's shell on the head node: HOME holds the token


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ray(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(
        HOME=str(home), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
        MEDSEARCH_INTRA_OP_THREADS="1",
    )  # fmt: skip
    _ray(env, "get-auth-token", "--generate")
    assert (home / ".ray" / "auth_token").is_file()
    try:
        started = _ray(
            env, "start", "--head", "--num-cpus", "1", "--port", str(_free_port()),
            "--include-dashboard", "false",
        )  # fmt: skip
        found = re.search(r"ray start --address='([^']+)'", started)
        assert found, started
        address = found.group(1)
        _ray(env, "start", "--address", address, "--num-cpus", "2")
        yield Cluster(address, env)
    finally:
        subprocess.run([str(BIN / "ray"), "stop"], env=env, capture_output=True, timeout=120)


def _build(
    tmp: Path, env: dict[str, str], *args: str, name: str = "index"
) -> tuple[subprocess.CompletedProcess[str], Path]:
    src = tmp / "src"
    if not src.exists():
        copy_testdata(src, FILES)
    index = tmp / name
    run = subprocess.run(
        [
            str(BIN / "medsearch"), "index", "build", str(src), "--index", str(index),
            "--model", str(TEST_MODEL), "--engine", "ray", "--no-progress",
            "--report", str(tmp / f"{name}.json"), *args,
        ],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return run, index


def _medsearch(env: dict[str, str], *args: str) -> None:
    run = subprocess.run(
        [str(BIN / "medsearch"), *args, "--no-progress"], env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]


def _refused(run: subprocess.CompletedProcess[str]) -> str:
    """A refusal: one clear message, no traceback."""
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "╭" not in run.stderr, run.stderr[-3000:]
    return run.stderr


def test_the_readme_cluster_builds_with_its_token(cluster: Cluster, tmp_path: Path) -> None:
    run, index = _build(
        tmp_path, cluster.env, "--ray-address", "auto", "--decode-cpus", "2",
        "--encoders", "1", "--shared-paths",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "indexed 3," in run.stdout
    assert "minimum number of concurrent actors" not in run.stderr  # Ray Data's, misleading
    report = json.loads((tmp_path / "index.json").read_text())
    assert report["indexed"] == 3 and sum(report["failed"].values()) == 1
    facts = report["stages"]["ray"]
    assert facts["nodes"] == 2 and facts["cpus"] == 3 and facts["shared_paths"]
    verify = subprocess.run(
        [str(BIN / "medsearch"), "index", "verify", "--index", str(index)],
        env=cluster.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_host_without_the_token_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """The cluster named by ``RAY_ADDRESS`` (Ray's own variable, read as --ray-address),
    from a shell whose HOME holds no token."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**cluster.env, "HOME": str(home), "RAY_ADDRESS": cluster.address}
    run, index = _build(tmp_path, env, "--decode-cpus", "1")
    assert "asks for a token" in _refused(run)
    assert not index.exists()  # refused before the index was touched


def test_an_address_where_nothing_listens_is_refused_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    host = cluster.address.rpartition(":")[0]
    started = time.perf_counter()
    run, index = _build(tmp_path, cluster.env, "--ray-address", f"{host}:{_free_port()}")
    assert "no Ray cluster answers at" in _refused(run)
    assert time.perf_counter() - started < 60  # Ray alone retries for minutes
    assert not index.exists()


@pytest.mark.parametrize("address", ["head", "head:port", "ray://127.0.0.1:10001", "head:0"])
def test_an_address_that_is_not_one_is_refused(address: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run, index = _build(tmp_path, env, "--ray-address", address)
    assert "--ray-address must be auto or HOST:PORT" in _refused(run)
    assert not index.exists()


def test_without_an_address_a_ray_of_its_own_runs_beside_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    """ray.init() without an address joins the cluster that `ray start` made on this
    host; the build asked for a Ray of its own (and a logical CPU per actor)."""
    run, _ = _build(tmp_path, cluster.env, "--decode-cpus", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    facts = json.loads((tmp_path / "index.json").read_text())["stages"]["ray"]
    assert facts["address"] == "local" and facts["nodes"] == 1 and facts["cpus"] == 2
    status = _ray(cluster.env, "status", "--address", cluster.address)
    assert len(re.findall(r"^ \d+ node_", status, re.MULTILINE)) == 2  # it is still up


def test_reembed_onto_the_cluster_is_a_fresh_build_with_the_new_model(
    cluster: Cluster, second_model: Path, tmp_path: Path
) -> None:
    src = copy_testdata(tmp_path / "src", FILES)
    old, new, fresh = tmp_path / "old", tmp_path / "new", tmp_path / "fresh"
    model = str(TEST_MODEL)
    _medsearch(cluster.env, "index", "build", str(src), "--index", str(old), "--model", model)
    before = _snapshot(old)
    _medsearch(
        cluster.env, "index", "reembed", "--from", str(old), "--index", str(new),
        "--model", str(second_model), "--engine", "ray", "--ray-address", "auto",
        "--decode-cpus", "2", "--shared-paths",
    )  # fmt: skip
    assert _snapshot(old) == before
    facts = json.loads(max((new / "reports").glob("run-*.json")).read_text())["stages"]["ray"]
    assert facts["nodes"] == 2
    _medsearch(
        cluster.env, "index", "build", str(src), "--index", str(fresh),
        "--model", str(second_model),
    )  # fmt: skip
    got, want, was = _rows(new), _rows(fresh), _rows(old)
    assert got.keys() == want.keys() == was.keys() and len(got) == 3
    for identity, (uri, labels, vector) in got.items():
        assert (uri, labels) == want[identity][:2]
        assert float(np.dot(vector, want[identity][2])) >= 0.9999, identity
        assert float(np.dot(vector, was[identity][2])) < 0.99  # the new model's vector
