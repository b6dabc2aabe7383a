"""Costs of moto that grow with a run or a table, and one gap of its emulation, fixed while the local
runtime runs.

``MotoPatches().start()`` / ``.stop()`` (called by ``LocalRuntime.start``/``stop``) apply and undo,
in this one place:

* **JSONPath parsed once per path.** moto's ASL interpreter calls ``jsonpath_ng`` ``parse(path)``
  for every ``InputPath``/``Parameters``/``ResultSelector``/``ResultPath`` evaluation, and each
  parse builds a PLY lexer and parser (about 9 % of a local run's CPU). A parsed path is an
  immutable expression, so one per path string is shared by every evaluation and thread.
* **The state machine definition parsed once.** moto parses the ASL with ANTLR when the state
  machine is created and again at every execution start. The ANTLR tree of a definition text is
  kept; each execution still builds its own evaluation components from it (the preprocessor), so
  no state is shared between executions.
* **TransactWriteItems without whole-table copies.** moto deep-copies every table a transaction
  touches, for rollback, and its instance tracker keeps each copy alive: a transaction's cost and
  the process's memory grow with the table. Here the transaction snapshots only the items it
  names (the only ones it can change) and puts exactly those back when it fails, whatever the
  failure: all or nothing, as before. (The runtime serializes emulated DynamoDB requests, so no
  other writer runs between the snapshot and the restore.)
* **One boto3 client per service for the interpreter.** moto's ASL interpreter makes a new boto3
  client for every Task state it runs (``boto_client_for``: several ms each, every step); its clients
  differ by region and service only, so one of each is kept.
* **Execution ends announced.** moto records an execution's end on its worker thread and tells no
  one; ``executions_ended`` (a ``ChangeSignal``) is bumped right after, so in-process waiters wait
  on it instead of polling ``DescribeExecution``.
* **moto's Step Functions parser imported without AWS Batch and EC2.** Its Batch task imports
  ``moto.batch.utils`` for an enum, which imports all of ``moto.batch`` and ``moto.ec2`` (about a
  second, cold). That one module is loaded on its own; a later ``import moto.batch`` is unaffected.
* **A stop ends an execution waiting on a task token** (``_releasing_waits``): moto's leaves it
  RUNNING; AWS ends it ABORTED (cancelling a run that awaits approval).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.util
import sys
import threading
import types
from typing import Any
from unittest import mock

from sandcastle.local.changes import ChangeSignal

_in_transaction = threading.local()


class MotoPatches:
    """The patches above, started and stopped together."""

    def __init__(self, executions_ended: ChangeSignal | None = None) -> None:
        self.executions_ended = executions_ended or ChangeSignal()
        self._patches: list[Any] = []

    def start(self) -> None:
        if self._patches:
            return
        _import_stepfunctions_parser()
        from moto.dynamodb import models as dynamodb_models
        from moto.stepfunctions.parser.asl.component.common.path import result_path
        from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
        from moto.stepfunctions.parser.asl.utils import json_path
        from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication, Execution

        self._patches = [
            mock.patch.object(json_path, "parse", _cached(json_path.parse)),
            mock.patch.object(result_path, "parse", _cached(result_path.parse)),
            mock.patch.object(AmazonStateLanguageParser, "parse", staticmethod(_parse_definition)),
            mock.patch.object(dynamodb_models, "copy", _TransactionCopy()),
            mock.patch.object(
                dynamodb_models.DynamoDBBackend,
                "transact_write_items",
                _item_level_rollback(dynamodb_models.DynamoDBBackend.transact_write_items),
            ),
            mock.patch.object(
                BaseExecutionWorkerCommunication,
                "terminated",
                _announced(BaseExecutionWorkerCommunication.terminated, self.executions_ended),
            ),
            mock.patch.object(Execution, "stop", _releasing_waits(Execution.stop)),
        ]
        self._patches += [
            mock.patch.object(module, "boto_client_for", _cached_client(module.boto_client_for))
            for name, module in list(sys.modules.items())
            if name.startswith("moto.stepfunctions.parser.") and hasattr(module, "boto_client_for")
        ]
        for patch in self._patches:
            patch.start()

    def stop(self) -> None:
        for patch in reversed(self._patches):
            patch.stop()
        self._patches = []
        with _clients_lock:
            _clients.clear()  # made under this runtime's moto mock


_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def _cached_client(boto_client_for: Any) -> Any:
    """``boto_client_for`` made once per region and service (it builds the same client whatever else it is given)."""
    original = getattr(boto_client_for, "__wrapped__", boto_client_for)

    @functools.wraps(original)
    def wrapper(region: str, service: str, state_credentials: Any = None) -> Any:
        with _clients_lock:
            if (region, service) not in _clients:
                _clients[(region, service)] = original(region, service, state_credentials)
            return _clients[(region, service)]

    return wrapper


def _announced(terminated: Any, ended: ChangeSignal) -> Any:
    @functools.wraps(terminated)
    def wrapper(communication: Any) -> None:
        try:
            terminated(communication)
        finally:
            ended.bump()

    return wrapper


# --- JSONPath ---


@functools.cache
def _cached(parse: Any) -> Any:
    """``parse`` memoized by path string (one wrapper per original, so a restart reuses its cache)."""
    return functools.lru_cache(maxsize=4096)(parse)


# --- the definition ---


@functools.lru_cache(maxsize=16)
def _definition_tree(definition: str) -> Any:
    """The ANTLR tree of an ASL text (syntax errors raise ``ASLParserException`` and are not cached)."""
    from antlr4 import CommonTokenStream, InputStream
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLLexer import ASLLexer
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser
    from moto.stepfunctions.parser.asl.parse.asl_parser import ASLParserException, SyntaxErrorListener

    listener = SyntaxErrorListener()
    parser = ASLParser(CommonTokenStream(ASLLexer(InputStream(definition))))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = parser.state_machine()
    if listener.errors:
        raise ASLParserException(errors=listener.errors)
    return tree


def _parse_definition(definition: str) -> tuple[Any, Any]:
    """What ``AmazonStateLanguageParser.parse`` returns: fresh evaluation components, from a kept tree."""
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    tree = _definition_tree(definition)
    return Preprocessor().visit(tree), tree


# --- TransactWriteItems ---


class _TransactionCopy:
    """``copy`` for moto's DynamoDB models: inside a transaction a ``Table`` is not deep-copied (the
    transaction's own snapshot of its items replaces that copy); everything else is copied as usual."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        if getattr(_in_transaction, "active", False) and isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


def _item_level_rollback(transact_write_items: Any) -> Any:
    @functools.wraps(transact_write_items)
    def wrapper(backend: Any, transact_items: list[dict[str, Any]]) -> Any:
        snapshot = _snapshot(backend, transact_items)
        _in_transaction.active = True
        try:
            return transact_write_items(backend, transact_items)
        except BaseException:
            _restore(snapshot)
            raise
        finally:
            _in_transaction.active = False

    return wrapper


def _snapshot(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]]:
    """``(table, hash key, range key, a copy of the item or None)`` for each item the transaction names."""
    taken = []
    for entry in transact_items:
        for operation, request in entry.items():
            try:
                table = backend.tables[request["TableName"]]
                if operation == "Put":
                    attributes = request["Item"]
                    key = {table.hash_key_attr: attributes[table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = attributes[table.range_key_attr]
                else:
                    key = request["Key"]
                hash_key, range_key = backend.get_keys_value(table, key)
            except Exception:  # a malformed entry: moto refuses it before it writes anything for it
                continue
            current = table.get_item(hash_key, range_key)
            taken.append((table, hash_key, range_key, None if current is None else copy.deepcopy(current)))
    return taken


def _restore(snapshot: list[tuple[Any, Any, Any, Any]]) -> None:
    for table, hash_key, range_key, item in reversed(snapshot):
        if item is None:
            table.delete_item(hash_key, range_key)
        elif range_key is not None:
            table.items[hash_key][range_key] = item
        else:
            table.items[hash_key] = item


# --- the import ---


def _import_stepfunctions_parser() -> None:
    """Import moto's Step Functions parser with ``moto.batch.utils`` alone, not the Batch and EC2 backends."""
    if "moto.stepfunctions.parser.models" in sys.modules or "moto.batch" in sys.modules:
        return
    spec = importlib.util.find_spec("moto.batch")
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType("moto.batch")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["moto.batch"] = package
    try:
        importlib.import_module("moto.batch.utils")
        importlib.import_module("moto.stepfunctions.parser.models")
    finally:
        # A later ``import moto.batch`` runs the real package (``moto.batch.utils`` stays loaded).
        if sys.modules.get("moto.batch") is package:
            del sys.modules["moto.batch"]
        import moto

        if getattr(moto, "batch", None) is package:
            del moto.batch


def _releasing_waits(original: Any) -> Any:
    """``StopExecution`` that also ends an execution waiting on a task token (``AwaitApproval``).

    moto's interpreter marks the program stopped, but the thread waiting for the token keeps waiting, so
    the execution stays RUNNING (and no ABORTED status change is seen). In AWS a stop ends it: here a stop
    also answers every callback the execution waits on, so its thread wakes as after any task that was
    running when the stop came, finds the program stopped, and the execution ends ABORTED. (A failure
    outcome would not do: the uncaught task error would end it FAILED.)
    """
    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackOutcomeSuccess

    def stop(execution: Any, stop_date: Any, error: str | None, cause: str | None) -> None:
        original(execution, stop_date=stop_date, error=error, cause=cause)
        worker = execution.exec_worker
        if worker is None:
            return
        pool = worker.env.callback_pool_manager
        for callback_id in list(pool._pool):
            outcome = CallbackOutcomeSuccess(callback_id=callback_id, output="{}")
            with contextlib.suppress(Exception):  # a callback already answered or timed out
                pool.notify(callback_id, outcome)

    return stop
