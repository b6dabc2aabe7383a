"""Every exception class of the package lives in ``sandcastle/errors.py``: one place to read what can go
wrong, and the class names the state machine's Retry/Catch match are all in view there."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import sandcastle
import sandcastle.errors


def _exception_classes_by_module() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for info in pkgutil.walk_packages(sandcastle.__path__, prefix="sandcastle."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.setdefault(module.__name__, []).append(name)
    return found


def test_no_public_exception_class_is_defined_outside_errors_py() -> None:
    # Given every module of the package, imported
    found = _exception_classes_by_module()
    assert len(found.get("sandcastle.errors", [])) > 10  # the walk does see the classes it looks for

    # Then no other module defines a public exception class (a ``_``-prefixed one is a module's own
    # control flow and must not leave it; none exists today)
    outside = {
        module: sorted(name for name in names if not name.startswith("_"))
        for module, names in found.items()
        if module != "sandcastle.errors"
    }
    assert {module: names for module, names in outside.items() if names} == {}


def test_the_state_machine_matches_error_names_defined_in_errors_py() -> None:
    import json
    from pathlib import Path

    # Given the error names the ASL's Retry and Catch match
    asl = Path(__file__).parents[2] / "infra" / "statemachine" / "agent_run.asl.json"
    names: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "ErrorEquals":
                    names.update(value)
                else:
                    collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(json.loads(asl.read_text()))
    ours = {name for name in names if not name.startswith(("States.", "Lambda."))}
    assert ours  # the ASL does retry on some of ours

    # Then each is a class of errors.py (a rename there would silently stop the Retry)
    assert sorted(name for name in ours if not hasattr(sandcastle.errors, name)) == []
