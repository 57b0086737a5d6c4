"""schemathesis against the OpenAPI document of a live server: no server errors, no schema
violations (status codes and response bodies as documented)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from indexer.pipeline.runner import BuildReport
from service.app import create_app
from tests.service.conftest import KEY, settings_for
from tests.service.live import serve

schemathesis = pytest.importorskip("schemathesis")
pytestmark = pytest.mark.slow
EXAMPLES = 30


def _positive_data_acceptance() -> Any:
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    return positive_data_acceptance


# Excluded: "schema-valid data is accepted". A base64 string or an uploaded file that fits
# the schema need not be a decodable image; refusing it with 422 is correct. Every other
# check runs: server errors, status codes, content types, response schemas and headers,
# and invalid authentication.
EXCLUDED = _positive_data_acceptance()


def _run_operation(operation: Any) -> tuple[int, list[str]]:
    from hypothesis import HealthCheck, given, settings

    calls = 0
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        try:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=[EXCLUDED]
            )
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - failures are exceptions
            failures.append(f"{operation.label}: {str(exc)[:600]}")

    run()
    return calls, failures


def test_schemathesis_no_server_error_no_schema_violation(
    built_index: tuple[Path, BuildReport],
) -> None:
    app = create_app(settings_for(built_index[0], api_keys=[KEY]))
    report: dict[str, int] = {}
    failures: list[str] = []
    with serve(app, headers={"Authorization": f"Bearer {KEY}"}) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            calls, failed = _run_operation(operation)
            report[operation.label] = calls
            failures.extend(failed)
    print(f"\nschemathesis: {len(report)} operations, {sum(report.values())} examples")
    for label, calls in sorted(report.items()):
        print(f"  {calls:4d}  {label}")
    assert len(report) >= 11
    assert not failures, "\n".join(failures[:5])
