"""The CLI and the live server contact nothing but loopback: no DNS query, no connection out.

A hospital deployment may reach its configured PACS and database and nothing else. Each
command runs as a user runs it (a real subprocess) under ``strace -f``, and every
``connect``/``sendto``/``sendmsg`` it makes is checked: an IPv4/IPv6 peer must be
loopback, nothing may go to a DNS port or a ``/etc/resolv.conf`` nameserver, and no host
lookup may go to systemd-resolved. No PACS or database server is configured here (the
catalog is the index's SQLite file), so nothing else is allowed.

The environment is the one a deployment has, not the test runner's: a fresh ``HOME`` and
none of the variables with which ONNX Runtime keeps its telemetry quiet on its own (CI
markers such as ``CI`` or ``GITHUB_ACTIONS``, ``ORT_DISABLE_TELEMETRY``), so the check
holds outside CI too. ONNX Runtime's telemetry uploads about ten seconds after it loads,
so the server is kept running past that before it is stopped.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.service.live import free_port

REPO = Path(__file__).resolve().parents[2]
TEST_MODEL = REPO / "tests" / "data" / "test_model"
SYSCALLS = "connect,sendto,sendmsg,sendmmsg"
# ONNX Runtime >= 1.29 first tries to upload ~9 s after it loads; stay up well past it.
SERVER_LIFETIME_S = 15.0
# Variables that silence ONNX Runtime's telemetry by themselves (its CI detection and its
# own switch); a deployment has none of them, so the check must not either.
QUIETING_VARIABLES = (
    "ORT_DISABLE_TELEMETRY",
    "ORT_RUNNING_UNIT_TESTS",
    "CI",
    "TF_BUILD",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "TRAVIS",
    "JENKINS_URL",
    "CODEBUILD_BUILD_ID",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "APPVEYOR",
    "BITBUCKET_BUILD_NUMBER",
    "XDG_CACHE_HOME",
)
NAME_SERVICE_PORTS = {53, 5353, 5355}  # DNS, mDNS, LLMNR
# systemd-resolved's host lookups; not nscd's socket, which passwd lookups use as well
NAME_SERVICE_SOCKETS = ("/run/systemd/resolve/io.systemd.Resolve",)

INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
INET6 = re.compile(r'sa_family=AF_INET6, sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')
UNIX = re.compile(r'sa_family=AF_UNIX, sun_path="([^"]+)"')


def nameservers(resolv_conf: Path = Path("/etc/resolv.conf")) -> set[str]:
    """The nameserver addresses the resolver would query."""
    if not resolv_conf.exists():
        return set()
    found = set()
    for line in resolv_conf.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            found.add(fields[1].split("%", 1)[0])
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def forbidden_contacts(trace: str, resolvers: set[str]) -> list[str]:
    """The trace lines that reach beyond loopback or ask a name service, with the reason."""
    found: list[str] = []
    for line in trace.splitlines():
        if "AF_INET" not in line and "AF_UNIX" not in line:
            continue
        peer = INET.search(line) or INET6.search(line)
        if peer is not None:
            port, address = int(peer.group(1)), peer.group(2)
            if port in NAME_SERVICE_PORTS or address in resolvers:
                found.append(f"name query to {address}:{port}: {line}")
            elif not is_loopback(address):
                found.append(f"connection to {address}:{port}: {line}")
        elif "AF_INET" in line:
            found.append(f"unparsed internet address (strace format?): {line}")
        elif (unix := UNIX.search(line)) is not None and unix.group(1) in NAME_SERVICE_SOCKETS:
            found.append(f"name-service lookup via {unix.group(1)}: {line}")
    return found


def deployment_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in QUIETING_VARIABLES}
    env["HOME"] = str(home)
    return env


@dataclass(frozen=True)
class Traced:
    trace: Path
    home: Path


def assert_contacts_nothing(run: Traced) -> None:
    bad = forbidden_contacts(run.trace.read_text(errors="replace"), nameservers())
    assert not bad, "outbound traffic:\n" + "\n".join(bad[:20])
    # ONNX Runtime's telemetry queues its events here for a later process to upload
    queued = sorted(str(p.relative_to(run.home)) for p in run.home.rglob("*"))
    assert not [p for p in queued if "Microsoft" in p], f"telemetry queued under HOME: {queued}"


@pytest.fixture(scope="module")
def strace() -> str:
    path = shutil.which("strace")
    if path is None:
        pytest.skip("strace is not installed (Debian package strace; scripts/install-system.sh)")
    probe = subprocess.run([path, "-o", os.devnull, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (no ptrace?): {probe.stderr.decode()[-200:]}")
    return path


def traced(strace: str, trace: Path, *argv: str) -> list[str]:
    """``argv`` run under ``strace -f``, its network calls written to ``trace``."""
    return [strace, "-f", "-qq", "-e", f"trace={SYSCALLS}", "-o", str(trace), *argv]


def trace_cli(strace: str, tmp: Path, name: str, *args: str) -> Traced:
    home = tmp / f"home-{name}"
    home.mkdir()
    trace = tmp / f"{name}.strace"
    run = subprocess.run(
        traced(strace, trace, sys.executable, "-m", "indexer.cli", *args),
        cwd=REPO,
        env=deployment_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return Traced(trace, home)


@pytest.fixture(scope="module")
def index_build(strace: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Traced]:
    """An index of two pydicom test files, built by the CLI under strace."""
    from pydicom.data import get_testdata_file

    tmp = tmp_path_factory.mktemp("no-outbound")
    sources = tmp / "dicom"
    sources.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(name)
        assert path is not None, name
        shutil.copy(path, sources / name)
    index = tmp / "index"
    run = trace_cli(
        strace, tmp, "index-build", "index", "build", str(sources), "--index", str(index),
        "--model", str(TEST_MODEL), "--workers", "1", "--no-progress",
    )  # fmt: skip
    return index, run


def v4(port: int, address: str) -> str:
    return f'{{sa_family=AF_INET, sin_port=htons({port}), sin_addr=inet_addr("{address}")}}'


def v6(port: int, address: str) -> str:
    return (
        f"{{sa_family=AF_INET6, sin6_port=htons({port}), sin6_flowinfo=htonl(0), "
        f'inet_pton(AF_INET6, "{address}", &sin6_addr), sin6_scope_id=0}}'
    )


def test_forbidden_contacts_reads_strace_lines() -> None:
    trace = f"""\
7 connect(8, {v4(53, "10.0.0.2")}, 16) = 0
7 sendto(8, "\\6mobile\\6events", 50, MSG_NOSIGNAL, NULL, 0) = 50
7 connect(9, {v4(443, "13.1.2.3")}, 16 <unfinished ...>
7 connect(3, {v4(8000, "127.0.0.1")}, 16) = 0
7 connect(3, {v6(8000, "::1")}, 28) = 0
7 connect(3, {v6(443, "2603:1030::1")}, 28) = 0
7 sendto(4, "x", 1, 0, {v4(9, "127.0.0.53")}, 16) = 1
7 connect(5, {{sa_family=AF_UNIX, sun_path="/run/systemd/resolve/io.systemd.Resolve"}}, 110) = 0
7 connect(5, {{sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}}, 110) = -1 ENOENT
7 connect(5, {{sa_family=AF_UNIX, sun_path="/tmp/x.sock"}}, 110) = 0
7 +++ exited with 0 +++
"""
    found = forbidden_contacts(trace, {"127.0.0.53"})
    assert [f.split(": ")[0] for f in found] == [
        "name query to 10.0.0.2:53",
        "connection to 13.1.2.3:443",
        "connection to 2603:1030::1:443",
        "name query to 127.0.0.53:9",
        "name-service lookup via /run/systemd/resolve/io.systemd.Resolve",
    ]


@pytest.mark.slow
def test_index_build_contacts_nothing(index_build: tuple[Path, Traced]) -> None:
    assert_contacts_nothing(index_build[1])


@pytest.mark.slow
def test_cli_embed_contacts_nothing(strace: str, tmp_path: Path) -> None:
    run = trace_cli(
        strace, tmp_path, "embed", "embed", "--model", str(TEST_MODEL), "--text", "x-ray chest"
    )
    assert_contacts_nothing(run)


@contextmanager
def traced_server(
    strace: str, index: Path, home: Path, trace: Path, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``medsearch serve`` under strace on a loopback port, stopped with SIGTERM after."""
    port = free_port()
    serve = ["-m", "service", "serve", "--index", str(index), "--model", str(TEST_MODEL)]
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            traced(strace, trace, sys.executable, *serve, "--port", str(port)),
            cwd=REPO,
            env=deployment_env(home),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            yield f"http://127.0.0.1:{port}", proc
        finally:
            # the server is strace's child: stop it, not strace, so the trace covers shutdown
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            for pid in children.read_text().split() if children.exists() else []:
                os.kill(int(pid), signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the server is not ready: {log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.slow
def test_live_server_contacts_nothing_but_its_client(
    strace: str, index_build: tuple[Path, Traced], tmp_path: Path
) -> None:
    index = index_build[0]
    home, trace, log = tmp_path / "home-serve", tmp_path / "serve.strace", tmp_path / "serve.log"
    home.mkdir()
    started = time.monotonic()
    with traced_server(strace, index, home, trace, log) as (base, proc):
        with httpx.Client(base_url=base, trust_env=False, timeout=10) as client:
            wait_ready(client, proc, log)
            response = client.post("/v1/search/text", json={"text": "x-ray chest", "k": 3})
            assert response.status_code == 200, response.text
            assert response.json()["results"]
        # ONNX Runtime's telemetry would upload by now; serving on makes it show
        time.sleep(max(0.0, started + SERVER_LIFETIME_S - time.monotonic()))
    # uvicorn stops cleanly on SIGTERM, then re-raises it
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-3000:]
    assert_contacts_nothing(Traced(trace, home))
