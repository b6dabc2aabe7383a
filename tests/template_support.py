"""Read ``template.yaml`` and what it points at, for tests.

Tests build their expectations from the template itself, never from a copy of its
schema. The template is read with cfn-lint's YAML loader, which turns the short forms
(``!Ref``, ``!GetAtt``, ``!Sub`` ...) into their JSON forms (``{"Ref": ...}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository root, where ``template.yaml`` lives."""
TEMPLATE_PATH = REPO_ROOT / "template.yaml"

SAM_FUNCTION = "AWS::Serverless::Function"
SAM_STATE_MACHINE = "AWS::Serverless::StateMachine"


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as plain JSON-like data (dicts, lists, strings)."""
    return json.loads(json.dumps(cfn_yaml.load(str(path))))


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """The template's resources of one type, by logical id."""
    return {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }


def handler_modules(template: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The handler module of every function in the template (``agent_step``, ``api``…), in template order:
    checks and benchmarks over "every handler" cover a new function without being told."""
    functions = resources_of_type(template or load_template(), SAM_FUNCTION).values()
    return tuple(
        f["Properties"]["Handler"].removeprefix("sandcastle.handlers.").removesuffix(".handler") for f in functions
    )


def state_machine(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The one SAM state machine: its logical id and properties."""
    [(logical_id, resource)] = resources_of_type(template, SAM_STATE_MACHINE).items()
    return logical_id, resource["Properties"]


def state_machine_definition_path(template: dict[str, Any]) -> Path:
    """The ASL file the state machine's ``DefinitionUri`` names."""
    _, properties = state_machine(template)
    return REPO_ROOT / properties["DefinitionUri"]


def sam_translate(template: dict[str, Any], region: str = "us-east-1") -> dict[str, Any]:
    """Translate the SAM template to plain CloudFormation, as ``sam deploy`` would (the local runtime's translation)."""
    from sandcastle.local.template import sam_translate as translate

    return translate(template, region)
