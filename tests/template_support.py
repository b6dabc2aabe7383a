"""Read ``template.yaml`` and what it points at, for tests.

Tests build their expectations from the template itself, never from a copy of its
schema. The template is read with cfn-lint's YAML loader, which turns the short forms
(``!Ref``, ``!GetAtt``, ``!Sub`` ...) into their JSON forms (``{"Ref": ...}``).
"""

from __future__ import annotations

import copy
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


def state_machine(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The one SAM state machine: its logical id and properties."""
    [(logical_id, resource)] = resources_of_type(template, SAM_STATE_MACHINE).items()
    return logical_id, resource["Properties"]


def state_machine_definition_path(template: dict[str, Any]) -> Path:
    """The ASL file the state machine's ``DefinitionUri`` names."""
    _, properties = state_machine(template)
    return REPO_ROOT / properties["DefinitionUri"]


def sam_translate(template: dict[str, Any], region: str = "us-east-1") -> dict[str, Any]:
    """Translate the SAM template to plain CloudFormation, as ``sam deploy`` would, with no network.

    Local ``CodeUri``/``DefinitionUri`` paths are what ``sam package`` would upload; the
    translator wants ``s3://`` locations, so they are swapped for placeholders. The region
    comes from an explicit boto3 session, and AWS managed policy names resolve from the map
    bundled with the translator (the fallback that would list policies through IAM, like
    ``ManagedPolicyLoader``, returns nothing).
    """
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.arn_generator import ArnGenerator
    from samtranslator.translator.translator import Translator

    fragment = copy.deepcopy(template)
    function_globals = fragment.get("Globals", {}).get("Function", {})
    if "CodeUri" in function_globals:
        function_globals["CodeUri"] = "s3://sandcastle-placeholder/functions.zip"
    for resource in fragment["Resources"].values():
        properties = resource.get("Properties", {})
        if resource["Type"] == SAM_FUNCTION and "CodeUri" in properties:
            properties["CodeUri"] = "s3://sandcastle-placeholder/functions.zip"
        if resource["Type"] == SAM_STATE_MACHINE and "DefinitionUri" in properties:
            properties["DefinitionUri"] = "s3://sandcastle-placeholder/definition.asl.json"

    # The translator records the session's region in a class attribute; put it back after.
    previous_region = ArnGenerator.BOTO_SESSION_REGION_NAME
    try:
        translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
        return translator.translate(fragment, parameter_values={}, get_managed_policy_map=dict)
    finally:
        ArnGenerator.BOTO_SESSION_REGION_NAME = previous_region
