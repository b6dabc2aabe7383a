"""Property-based: schemathesis generates requests from the served OpenAPI document — valid ones and, in
its negative mode, ones the document forbids — for every operation; the API never answers 5xx, and every
answer matches the document (status code, content type, body schema).

``SCHEMA_EXAMPLES`` sets the examples per operation and mode (CI: the default below).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sandcastle.local.runtime import LocalRuntime
from sandcastle.store.keys import ApiKeyStore

pytestmark = pytest.mark.bwrap

EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", "40"))


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalRuntime, str]]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    monkeypatch.setenv("MAX_ACTIVE_RUNS_PER_TENANT", "2")  # generated runs mostly meet the 429
    with LocalRuntime(home=tmp_path / "home") as runtime:
        gateway = runtime.start_gateway(port=0)
        key = ApiKeyStore(runtime.deps.settings.table_name).create("fuzz").key
        yield runtime, f"{gateway.url}|{key}"


def test_the_api_honours_its_openapi_document(served: tuple[LocalRuntime, str]) -> None:
    # Driven by hand (not schemathesis' pytest plugin, which this pytest version does not load).
    url, key = served[1].split("|")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {f"{method.upper()} {path}" for path, item in schema.raw_schema["paths"].items() for method in item}
    assert {op.label for op in operations} == documented and len(documented) >= 12

    for operation, mode in [(op, mode) for op in operations for mode in GenerationMode]:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def honours(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=url,
                headers={"Authorization": f"Bearer {key}"},
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        honours()
