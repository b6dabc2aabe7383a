"""The local runtime's fixes to moto (``sandcastle.local.moto_patches``): each path and definition parsed
once, and TransactWriteItems all-or-nothing without copying whole tables."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sandcastle.local.runtime import LocalRuntime
from sandcastle.runs.records import RunStatus
from sandcastle.runs.requests import PlaybookCall, RunRequest

pytestmark = pytest.mark.bwrap

TRUE = PlaybookCall(tool="run_command", arguments={"command": "true"})


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "E2B_API_KEY", "SANDBOX_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    with LocalRuntime(home=tmp_path / "home") as runtime:
        yield runtime


def _run(runtime: LocalRuntime, calls: int) -> None:
    run = runtime.submit(RunRequest(instructions="count", playbook=[TRUE] * calls))
    assert runtime.wait(run.run_id, timeout_s=120).status is RunStatus.SUCCEEDED


def test_each_jsonpath_is_parsed_once_however_many_times_it_is_evaluated(
    local: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jsonpath_ng.parser import JsonPathParser  # the ext parser moto uses is a subclass

    parsed: Counter[str] = Counter()
    original = JsonPathParser.parse

    def counting(parser: Any, string: str, *args: Any, **kwargs: Any) -> Any:
        parsed[string] += 1
        return original(parser, string, *args, **kwargs)

    monkeypatch.setattr(JsonPathParser, "parse", counting)

    _run(local, calls=3)  # every step evaluates the same InputPath/Parameters/ResultPath paths again
    _run(local, calls=3)

    assert {path: n for path, n in parsed.items() if n > 1} == {}


def test_the_definition_is_parsed_when_the_state_machine_is_created_not_at_every_execution(
    local: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser

    parses = []
    original = ASLParser.state_machine
    monkeypatch.setattr(ASLParser, "state_machine", lambda parser: parses.append(1) or original(parser))

    _run(local, calls=1)
    _run(local, calls=1)

    assert parses == []


def _table(runtime: LocalRuntime) -> tuple[Any, str]:
    return runtime.deps_client("dynamodb"), runtime.deps.settings.table_name


def _item(client: Any, table: str, sk: str) -> dict[str, Any] | None:
    return client.get_item(TableName=table, Key={"pk": {"S": "T#1"}, "sk": {"S": sk}}, ConsistentRead=True).get("Item")


def _put(table: str, sk: str, value: str) -> dict[str, Any]:
    return {"Put": {"TableName": table, "Item": {"pk": {"S": "T#1"}, "sk": {"S": sk}, "v": {"S": value}}}}


def test_a_failed_condition_in_a_transaction_leaves_every_item_unchanged(local: LocalRuntime) -> None:
    client, table = _table(local)
    client.put_item(TableName=table, Item={"pk": {"S": "T#1"}, "sk": {"S": "A"}, "v": {"S": "before"}})
    client.put_item(TableName=table, Item={"pk": {"S": "T#1"}, "sk": {"S": "B"}, "v": {"S": "before"}})

    with pytest.raises(client.exceptions.TransactionCanceledException):
        client.transact_write_items(
            TransactItems=[
                _put(table, "NEW", "written"),  # would be created
                {
                    "Update": {  # would change A
                        "TableName": table,
                        "Key": {"pk": {"S": "T#1"}, "sk": {"S": "A"}},
                        "UpdateExpression": "SET v = :v",
                        "ExpressionAttributeValues": {":v": {"S": "after"}},
                    }
                },
                {"Delete": {"TableName": table, "Key": {"pk": {"S": "T#1"}, "sk": {"S": "B"}}}},  # would remove B
                {
                    "ConditionCheck": {  # fails: no such item
                        "TableName": table,
                        "Key": {"pk": {"S": "T#1"}, "sk": {"S": "MISSING"}},
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
            ]
        )

    assert _item(client, table, "NEW") is None
    assert _item(client, table, "A")["v"] == {"S": "before"}
    assert _item(client, table, "B")["v"] == {"S": "before"}


def test_a_transaction_naming_one_item_twice_writes_nothing(local: LocalRuntime) -> None:
    client, table = _table(local)

    with pytest.raises(client.exceptions.ClientError):
        client.transact_write_items(TransactItems=[_put(table, "C", "one"), _put(table, "C", "two")])

    assert _item(client, table, "C") is None


def test_a_transaction_copies_no_table(local: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.models.table import Table

    def refuse(table: Table, memo: Any) -> Table:
        raise AssertionError(f"table {table.name} deep-copied")

    monkeypatch.setattr(Table, "__deepcopy__", refuse, raising=False)
    client, table = _table(local)

    client.transact_write_items(TransactItems=[_put(table, "D", "kept")])
    with pytest.raises(client.exceptions.TransactionCanceledException):
        client.transact_write_items(
            TransactItems=[
                _put(table, "E", "dropped"),
                {
                    **_put(table, "D", "again"),
                    "Put": {**_put(table, "D", "again")["Put"], "ConditionExpression": "attribute_not_exists(pk)"},
                },
            ]
        )

    assert _item(client, table, "D")["v"] == {"S": "kept"}
    assert _item(client, table, "E") is None
    _run(local, calls=1)  # a whole run's transactions


def test_every_execution_end_is_announced_to_in_process_waiters(local: LocalRuntime) -> None:
    before = local.executions_ended.version

    _run(local, calls=1)
    _run(local, calls=1)

    assert local.executions_ended.version == before + 2


def test_the_interpreter_makes_one_client_per_service_not_one_per_task(local: LocalRuntime) -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    first = lambda_eval_utils.boto_client_for(region="us-east-1", service="lambda", state_credentials=None)
    _run(local, calls=2)

    assert lambda_eval_utils.boto_client_for(region="us-east-1", service="lambda", state_credentials=None) is first


def test_the_runtime_makes_its_own_clients_once(local: LocalRuntime) -> None:
    assert local.deps_client("stepfunctions") is local.deps_client("stepfunctions")
