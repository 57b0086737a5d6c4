"""A real PostgreSQL server on loopback, started by the tests in a temporary directory.

Debian package ``postgresql`` (installed by ``scripts/install-system.sh``); tests skip
when its binaries are missing. As root (CI) the server runs as the ``postgres`` user,
which PostgreSQL requires. Password authentication (scram-sha-256), like a real site.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.service.live import free_port

USER, PASSWORD, DATABASE = "medsearch", "pg-test-Secret-41", "medsearch"


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextmanager
def postgres() -> Iterator[str]:
    """Start a server; yield a SQLAlchemy URL of an empty database; stop and remove it."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    prefix: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="medsearch-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log, pwfile = workdir / "data", workdir / "server.log", workdir / "pw"
    pwfile.write_text(PASSWORD)
    if prefix:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    try:
        run(
            str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE],
            check=True, capture_output=True, timeout=60, env=env,
        )  # fmt: skip
        yield f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        shutil.rmtree(workdir, ignore_errors=True)
