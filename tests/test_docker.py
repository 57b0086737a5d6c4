"""The Docker stack: the compose file is valid and has what the README promises; the
Dockerfile installs from the project's own files. (Images cannot be pulled here.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
ENV = {"ORTHANC_PASSWORD": "a-password", "MEDSEARCH_API_KEY": "0123456789abcdef-key"}


def _compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config_is_valid() -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    env = {**os.environ, **ENV}
    run = subprocess.run(
        [*compose, "--profile", "gpu", "--profile", "index", "--profile", "watch", "config"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    resolved = yaml.safe_load(run.stdout)
    expected = {"orthanc", "api", "indexer", "watcher", "api-gpu", "viewer"}
    assert set(resolved["services"]) == expected
    missing = subprocess.run(
        [*compose, "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False,
        env={k: v for k, v in os.environ.items() if k not in ENV}, timeout=60,
    )  # fmt: skip
    assert missing.returncode != 0 and "ORTHANC_PASSWORD" in missing.stderr


def test_compose_file_has_healthchecks_volumes_profiles_and_gpu() -> None:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    for name in ("orthanc", "api"):
        assert "healthcheck" in services[name], name
    assert services["indexer"]["profiles"] == ["index"]
    assert services["watcher"]["profiles"] == ["watch"]
    assert services["watcher"]["command"][:2] == ["index", "watch"]
    assert services["api-gpu"]["profiles"] == ["gpu"]
    devices = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert {"index", "orthanc-db"} <= set(spec["volumes"])
    for name in ("api", "indexer", "watcher", "api-gpu"):
        mounts = services[name]["volumes"]
        assert "index:/data/index" in mounts and "./models:/models:ro" in mounts
    api_env = services["api"]["environment"]
    assert "MEDSEARCH_API_KEYS" in api_env  # never an open API on 0.0.0.0


def test_dockerfile_installs_from_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md ./" in text
    for path in ("indexer", "service", "migrations"):
        assert f"COPY {path} ./{path}" in text and (ROOT / path).is_dir()
    assert 'pip install ".${EXTRAS:+[$EXTRAS]}"' in text
    assert "USER medsearch" in text and "HEALTHCHECK" in text
