"""Reading ``template.yaml`` for the local runtime: resources, parameters and intrinsic functions.

The local runtime derives every resource from the template — table keys and indexes, buckets,
functions with their handler strings and environment, the state machine definition and its
substitutions — never from a second, hand-written copy.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCOUNT_ID = "123456789012"
STACK_NAME = "sandcastle-local"


class _NoValue:
    """``AWS::NoValue``: the property is dropped."""


NO_VALUE = _NoValue()


@dataclass
class FunctionSpec:
    """A function of the template, as the local runtime needs it."""

    logical_id: str
    name: str
    arn: str
    handler: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str] = field(default_factory=dict)


@dataclass
class Template:
    """A parsed SAM template with the physical names the local runtime gives its resources."""

    path: Path
    body: dict[str, Any]
    region: str
    parameter_overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, *, region: str, parameter_overrides: Mapping[str, str] | None = None) -> Template:
        return cls(path=path, body=load_yaml(path), region=region, parameter_overrides=dict(parameter_overrides or {}))

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.body.get("Resources", {})

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {name: res for name, res in self.resources.items() if res.get("Type") == resource_type}

    # --- physical names ---

    def physical_name(self, logical_id: str) -> str:
        resource = self.resources[logical_id]
        properties = resource.get("Properties", {})
        for name_property in ("TableName", "BucketName", "FunctionName", "Name"):
            if name_property in properties:
                return str(self.resolve(properties[name_property]))
        return (
            f"{STACK_NAME}-{logical_id}".lower()
            if resource["Type"] == "AWS::S3::Bucket"
            else f"{STACK_NAME}-{logical_id}"
        )

    def arn(self, logical_id: str) -> str:
        resource_type = self.resources[logical_id]["Type"]
        name = self.physical_name(logical_id)
        if resource_type == "AWS::Serverless::Function":
            return f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{name}"
        if resource_type == "AWS::Serverless::StateMachine":
            return f"arn:aws:states:{self.region}:{ACCOUNT_ID}:stateMachine:{name}"
        if resource_type == "AWS::DynamoDB::Table":
            return f"arn:aws:dynamodb:{self.region}:{ACCOUNT_ID}:table/{name}"
        if resource_type == "AWS::S3::Bucket":
            return f"arn:aws:s3:::{name}"
        if resource_type == "AWS::IAM::Role":
            return f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"
        if resource_type == "AWS::SQS::Queue":
            return f"arn:aws:sqs:{self.region}:{ACCOUNT_ID}:{name}"
        return f"arn:aws:local:{self.region}:{ACCOUNT_ID}:{logical_id}"

    # --- intrinsic functions ---

    def parameter(self, name: str) -> str:
        if name in self.parameter_overrides:
            return self.parameter_overrides[name]
        parameter = self.body.get("Parameters", {}).get(name)
        if parameter is None:
            raise KeyError(f"template.yaml has no parameter or resource named {name}")
        return str(parameter.get("Default", ""))

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.body["Conditions"][name]))

    def resolve(self, value: Any) -> Any:
        """Evaluate the intrinsic functions the template uses (Ref, GetAtt, Sub, If, Equals, Not, Join)."""
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not NO_VALUE]
        if not isinstance(value, Mapping):
            return value
        if len(value) == 1:
            ((function, argument),) = value.items()
            if function == "Ref":
                return self._ref(argument)
            if function == "Fn::GetAtt":
                logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                return self._get_att(logical_id, attribute)
            if function == "Fn::Sub":
                return self._sub(argument)
            if function == "Fn::If":
                name, when_true, when_false = argument
                return self.resolve(when_true if self.condition(name) else when_false)
            if function == "Fn::Equals":
                left, right = (self.resolve(v) for v in argument)
                return str(left) == str(right)
            if function == "Fn::Not":
                return not self.resolve(argument[0])
            if function == "Fn::And":
                return all(self.resolve(v) for v in argument)
            if function == "Fn::Or":
                return any(self.resolve(v) for v in argument)
            if function == "Condition":
                return self.condition(argument)
            if function == "Fn::Join":
                separator, items = argument
                return separator.join(str(item) for item in self.resolve(items))
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in value.items()) if v is not NO_VALUE}

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::StackName": STACK_NAME,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.resources:
            resource_type = self.resources[name]["Type"]
            if resource_type in ("AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine"):
                return self.arn(name)
            return self.physical_name(name)
        return self.parameter(name)

    def _get_att(self, logical_id: str, attribute: str) -> str:
        if attribute == "Arn":
            return self.arn(logical_id)
        if attribute == "Name":
            return self.physical_name(logical_id)
        raise KeyError(f"the local runtime cannot resolve !GetAtt {logical_id}.{attribute}")

    def _sub(self, argument: Any) -> str:
        import re

        text, variables = (argument, {}) if isinstance(argument, str) else argument
        variables = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name:
                return str(self._get_att(*name.split(".", 1)))
            return str(self._ref(name))

        # ``${!Literal}`` is CloudFormation's escape: it renders as ``${Literal}`` (an IAM policy variable).
        return re.sub(r"\$\{!([^}]*)\}", r"${\1}", re.sub(r"\$\{([^}!]+)\}", replace, text))

    # --- resources the local runtime builds ---

    def functions(self) -> dict[str, FunctionSpec]:
        globals_ = self.body.get("Globals", {}).get("Function", {})
        specs = {}
        for logical_id, resource in self.of_type("AWS::Serverless::Function").items():
            properties = {**globals_, **resource.get("Properties", {})}
            variables = {
                **globals_.get("Environment", {}).get("Variables", {}),
                **resource.get("Properties", {}).get("Environment", {}).get("Variables", {}),
            }
            environment = {
                name: str(value)
                for name, value in ((n, self.resolve(v)) for n, v in variables.items())
                if value is not NO_VALUE
            }
            specs[logical_id] = FunctionSpec(
                logical_id=logical_id,
                name=self.physical_name(logical_id),
                arn=self.arn(logical_id),
                handler=properties["Handler"],
                timeout_s=int(self.resolve(properties.get("Timeout", 3))),
                memory_mb=int(self.resolve(properties.get("MemorySize", 128))),
                environment=environment,
            )
        return specs

    def transformed(self) -> dict[str, Any]:
        """The template after the SAM transform (plain CloudFormation), as ``sam deploy`` would make it."""
        return copy.deepcopy(self._transformed())

    def _transformed(self) -> dict[str, Any]:
        return _transformed(json.dumps(self.body, sort_keys=True, default=str), self.region)

    def function_role_policies(self, logical_id: str) -> list[dict[str, Any]]:
        """The policy documents of the role the SAM transform gives a function, intrinsics resolved here.

        The role's managed policies (basic execution, X-Ray) grant logging and tracing, which the
        functions do not do through boto3; they are not included.
        """
        resources = self._transformed()["Resources"]
        role = resources[logical_id]["Properties"]["Role"]
        role_id = role["Fn::GetAtt"][0] if isinstance(role, dict) and "Fn::GetAtt" in role else None
        if role_id is None or role_id not in resources:
            raise ValueError(f"{logical_id} has no role of its own in the transformed template")
        return [entry["PolicyDocument"] for entry in self.resolve(resources[role_id]["Properties"].get("Policies", []))]

    def state_machine_definition(self, logical_id: str) -> str:
        """The state machine's ASL with its ``DefinitionSubstitutions`` filled in."""
        properties = self.resources[logical_id]["Properties"]
        text = (self.path.parent / properties["DefinitionUri"]).read_text()
        for name, value in self.resolve(properties.get("DefinitionSubstitutions", {})).items():
            text = text.replace("${" + name + "}", str(value))
        return text


def sam_translate(template: dict[str, Any], region: str = "us-east-1") -> dict[str, Any]:
    """Translate a SAM template to plain CloudFormation, as ``sam deploy`` would, with no network.

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
        if resource["Type"] == "AWS::Serverless::Function" and "CodeUri" in properties:
            properties["CodeUri"] = "s3://sandcastle-placeholder/functions.zip"
        if resource["Type"] == "AWS::Serverless::StateMachine" and "DefinitionUri" in properties:
            properties["DefinitionUri"] = "s3://sandcastle-placeholder/definition.asl.json"

    # The translator records the session's region in a class attribute; put it back after.
    previous_region = ArnGenerator.BOTO_SESSION_REGION_NAME
    try:
        translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
        return translator.translate(fragment, parameter_values={}, get_managed_policy_map=dict)
    finally:
        ArnGenerator.BOTO_SESSION_REGION_NAME = previous_region


def load_yaml(path: Path) -> dict[str, Any]:
    """A CloudFormation YAML template as its JSON form: ``!Ref x`` is ``{"Ref": "x"}``, ``!GetAtt a.b`` is
    ``{"Fn::GetAtt": ["a", "b"]}``, any other ``!Name`` is ``{"Fn::Name": ...}`` (what cfn-lint's loader
    gives, without importing cfn-lint: about a second of a ``sandcastle run``)."""
    import yaml

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    def intrinsic(loader: Any, suffix: str, node: Any) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        if suffix in ("Ref", "Condition"):
            return {suffix: value}
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        return {f"Fn::{suffix}": value}

    Loader.add_multi_constructor("!", intrinsic)
    # Dates stay strings, as in JSON (AWSTemplateFormatVersion, policy versions).
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return dict(yaml.load(path.read_text(), Loader=Loader))  # noqa: S506 - a SafeLoader


@functools.lru_cache(maxsize=4)
def _transformed(body_json: str, region: str) -> dict[str, Any]:
    """``sam_translate`` of one template text, once per process and cached on disk across processes (the
    translator's import and run take about a second): keyed by the text, the region and the translator's
    version, under ``$XDG_CACHE_HOME/sandcastle`` (``~/.cache/sandcastle``)."""
    from importlib.metadata import version

    key = hashlib.sha256(f"{version('aws-sam-translator')}\0{region}\0{body_json}".encode()).hexdigest()[:32]
    cached = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sandcastle" / f"sam-{key}.json"
    try:
        return dict(json.loads(cached.read_text()))
    except (OSError, ValueError):
        pass
    transformed = sam_translate(json.loads(body_json), region)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(transformed))
        os.replace(partial, cached)
    except OSError:
        pass  # no cache: the next process translates again
    return transformed
