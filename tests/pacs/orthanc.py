"""A real Orthanc with the DICOMweb plugin on loopback, started by the tests.

Debian packages ``orthanc`` and ``orthanc-dicomweb`` (installed by
``scripts/install-system.sh``); tests skip when the binary is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.service.live import free_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "medsearch", "orthanc-test-password"


@dataclass
class Orthanc:
    http_port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.rest, auth=(USER, PASSWORD), timeout=30)

    def upload(self, paths: list[Path]) -> list[str]:
        """Store files over the REST API; returns the SOP Instance UIDs stored."""
        stored = []
        with self.client() as http:
            for path in paths:
                r = http.post("/instances", content=path.read_bytes())
                if r.status_code == 200:
                    tags = http.get(f"/instances/{r.json()['ID']}/simplified-tags").json()
                    stored.append(tags["SOPInstanceUID"])
        return stored

    def start(self) -> None:
        config = {
            "Name": "medsearch-test",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "HttpPort": self.http_port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        self.process = subprocess.Popen(
            ["Orthanc", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with self.client() as http:
                    if http.get("/system").status_code == 200:
                        return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@contextmanager
def orthanc(workdir: Path) -> Iterator[Orthanc]:
    if shutil.which("Orthanc") is None or not PLUGIN.exists():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (orthanc-dicomweb)")
    server = Orthanc(free_port(), workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
