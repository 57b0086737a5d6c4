"""The compose ``viewer`` service serves the OHIF version that the install script fetches
and the browser test opens, and the compose link template opens it at the series."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.service.conftest import settings_for
from tests.viewer.ohif import COMPOSE, COMPOSE_ORIGIN, DEPLOY, ROOT, VERSION


def test_compose_viewer_serves_the_pinned_dist_with_the_deploy_config() -> None:
    viewer = yaml.safe_load(COMPOSE.read_text())["services"]["viewer"]
    assert f"./.cache/ohif/{VERSION}/dist:/usr/share/nginx/html:ro" in viewer["volumes"]
    for mount in viewer["volumes"][1:]:
        assert (ROOT / mount.split(":")[0]).is_file(), mount
    assert viewer["ports"] == ["127.0.0.1:3000:80"]
    checksum = (DEPLOY / "ohif-app.sha256").read_text().split()
    assert checksum[1] == f"ohif-app-{VERSION}.tgz"
    install = (ROOT / "scripts" / "install-viewer.sh").read_text()
    assert "deploy/ohif/VERSION" in install and ".cache/ohif/$VERSION" in install


def test_compose_link_opens_the_study_at_the_result_series_and_image(tmp_path: Path) -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    template = spec["x-medsearch-env"]["MEDSEARCH_VIEWER_URL_TEMPLATE"]
    cors = spec["services"]["api"]["environment"]["MEDSEARCH_CORS_ORIGINS"]
    assert template.startswith(COMPOSE_ORIGIN) and COMPOSE_ORIGIN in cors
    link = template.replace(COMPOSE_ORIGIN, "http://localhost:3000")
    settings_for(tmp_path, viewer_url_template=link)  # the service accepts it
    url = urlsplit(link.format(study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.4"))
    assert url.path == "/viewer"
    assert parse_qs(url.query) == {
        "StudyInstanceUIDs": ["1.2"],
        "initialSeriesInstanceUID": ["1.2.3"],
        "initialSOPInstanceUID": ["1.2.3.4"],
    }
