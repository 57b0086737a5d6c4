"""The DICOMweb client's transport rules against a real HTTP server on loopback that
behaves like a busy or strict PACS: 429 with Retry-After is waited out and retried,
4xx other than 429 fail at once, bearer credentials come from settings."""

from __future__ import annotations

import http.server
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import pytest
from pydantic import SecretStr

from indexer.errors import SourceError, SourceUnavailableError
from indexer.sources.dicomweb_client import DicomWebClient, DicomWebSettings
from tests.service.live import http_server


class _Pacs(http.server.BaseHTTPRequestHandler):
    """Answers the queued statuses in order, then an empty QIDO page; records headers."""

    statuses: ClassVar[list[tuple[int, dict[str, str]]]] = []
    seen: ClassVar[list[tuple[float, str, str | None]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((time.monotonic(), self.path, self.headers.get("Authorization")))
        status, headers = type(self).statuses.pop(0) if type(self).statuses else (200, {})
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        body = b"[]" if status == 200 else b'{"error": "busy"}'
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def pacs(statuses: list[tuple[int, dict[str, str]]]) -> Iterator[str]:
    _Pacs.statuses, _Pacs.seen = list(statuses), []
    with http_server(_Pacs) as base:
        yield f"{base}/dicom-web"


def test_429_waits_for_retry_after_then_succeeds() -> None:
    with pacs([(429, {"Retry-After": "1"}), (503, {})]) as base:
        client = DicomWebClient(base, DicomWebSettings(retries=3, backoff_s=0.01))
        assert list(client.qido("/studies", {})) == []
        client.close()
    times = [t for t, _, _ in _Pacs.seen]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.95  # Retry-After honoured, not the 10 ms back-off
    assert times[2] - times[1] >= 0.95  # the back-off grows from there, never shrinks


def test_a_busy_pacs_ends_in_a_resumable_error() -> None:
    with pacs([(429, {})] * 3) as base:
        client = DicomWebClient(base, DicomWebSettings(retries=2, backoff_s=0.01))
        with pytest.raises(SourceUnavailableError, match="answered 429; gave up after 3 tries"):
            list(client.qido("/studies", {}))
        client.close()


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_fail_at_once(status: int) -> None:
    with pacs([(status, {})] * 5) as base:
        client = DicomWebClient(base, DicomWebSettings(retries=4, backoff_s=0.01))
        with pytest.raises(SourceError, match=f"answered {status}") as raised:
            list(client.qido("/studies", {}))
        client.close()
    assert not isinstance(raised.value, SourceUnavailableError)
    assert len(_Pacs.seen) == 1


def test_credentials_come_from_settings() -> None:
    with pacs([]) as base:
        bearer = DicomWebSettings(token=SecretStr("t0ken-abc"))
        client = DicomWebClient(base, bearer)
        list(client.qido("/studies", {"ModalitiesInStudy": "CT"}))
        client.close()
        basic = DicomWebSettings(username="reader", password=SecretStr("s3cret"))
        client = DicomWebClient(base, basic)
        list(client.qido("/studies", {}))
        client.close()
    (_, path, first), (_, _, second) = _Pacs.seen
    assert first == "Bearer t0ken-abc"
    assert second == "Basic cmVhZGVyOnMzY3JldA=="  # base64("reader:s3cret")
    assert "ModalitiesInStudy=CT" in path and "limit=" in path and "offset=0" in path


class _BigInstance(http.server.BaseHTTPRequestHandler):
    """A WADO-RS answer of 8 MiB, with a Content-Length or chunked (none declared)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        chunked = "/series/4.6/" in self.path  # the chunked variant
        self.send_response(200)
        self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=b')
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(8 << 20))
        self.end_headers()
        block = b"\0" * (64 << 10)
        try:
            for _ in range(128):
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                else:
                    self.wfile.write(block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client hung up: what we want
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("series", ["4.5", "4.6"])
def test_an_instance_over_the_limit_is_refused_while_reading(series: str) -> None:
    with http_server(_BigInstance) as base:
        settings = DicomWebSettings(max_instance_bytes=1 << 20, retries=0)
        client = DicomWebClient(f"{base}/dicom-web", settings)
        with pytest.raises(SourceError, match="larger than the limit") as raised:
            client.instance("1.2.3", series, "6.7")
        assert not isinstance(raised.value, SourceUnavailableError)
        client.close()
