"""template.yaml: it lints clean, transforms, and wires the run loop the way the design says.

Everything here is read from template.yaml and the ASL file it names; nothing is copied.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from cfnlint import api as cfnlint_api

from tests.template_support import (
    REPO_ROOT,
    SAM_FUNCTION,
    TEMPLATE_PATH,
    load_template,
    resources_of_type,
    sam_translate,
    state_machine,
    state_machine_definition_path,
)

TEMPLATE = load_template()
FUNCTIONS = resources_of_type(TEMPLATE, SAM_FUNCTION)
STATE_MACHINE_ID, STATE_MACHINE = state_machine(TEMPLATE)
ASL_TEXT = state_machine_definition_path(TEMPLATE).read_text()
ASL = json.loads(ASL_TEXT)

TRANSIENT_LAMBDA_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
FAIL_STATE = "FailRun"

# The embedded local runtime resolves exactly these.
ALLOWED_INTRINSICS = {"Ref", "Fn::GetAtt", "Fn::Sub", "Fn::If", "Fn::Equals", "Fn::Not", "Fn::Join"}
ALLOWED_PSEUDO_PARAMETERS = {
    "AWS::NoValue",
    "AWS::Region",
    "AWS::AccountId",
    "AWS::StackName",
    "AWS::Partition",
}


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _states(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state, including those inside Map and Parallel states."""
    for name, state in states.items():
        yield name, state
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from _states(processor["States"])
        for branch in state.get("Branches", []):
            yield from _states(branch["States"])


def _code_root(function: dict[str, Any]) -> str:
    return function["Properties"].get("CodeUri") or TEMPLATE["Globals"]["Function"]["CodeUri"]


def _policy_template_names(properties: dict[str, Any]) -> list[str]:
    """Names of the SAM policy templates in ``Policies``, looking inside ``Fn::If``."""
    names = []
    for node in _walk(properties.get("Policies", [])):
        if isinstance(node, dict):
            names.extend(key for key in node if key.endswith("Policy"))
    return names


# ---------------------------------------------------------------- the template as a whole


def test_cfn_lint_reports_no_errors_or_warnings() -> None:
    matches = cfnlint_api.lint_file(TEMPLATE_PATH)

    problems = [match for match in matches if match.rule.id[0] in "EW"]
    assert not problems, "cfn-lint:\n" + "\n".join(str(match) for match in problems)


def test_sam_translator_turns_it_into_plain_cloudformation() -> None:
    translated = sam_translate(TEMPLATE)

    types = {resource["Type"] for resource in translated["Resources"].values()}
    assert not {t for t in types if t.startswith("AWS::Serverless::")}
    lambdas = resources_of_type(translated, "AWS::Lambda::Function")
    assert set(lambdas) == set(FUNCTIONS)
    assert set(resources_of_type(translated, "AWS::StepFunctions::StateMachine")) == {STATE_MACHINE_ID}
    for logical_id, function in lambdas.items():
        assert function["Properties"]["TracingConfig"] == {"Mode": "Active"}, logical_id
        assert "LogGroup" in function["Properties"]["LoggingConfig"], logical_id


def test_only_intrinsics_the_local_runtime_resolves_are_used() -> None:
    used: set[str] = set()
    pseudo: set[str] = set()
    for node in _walk({key: value for key, value in TEMPLATE.items() if key != "Rules"}):
        if isinstance(node, dict) and len(node) == 1:
            [(key, value)] = node.items()
            if key == "Ref" or key.startswith("Fn::"):
                used.add(key)
            if key == "Ref" and isinstance(value, str) and value.startswith("AWS::"):
                pseudo.add(value)
            if key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                pseudo.update(re.findall(r"\$\{(AWS::\w+)\}", text))

    assert used <= ALLOWED_INTRINSICS, used - ALLOWED_INTRINSICS
    assert pseudo <= ALLOWED_PSEUDO_PARAMETERS, pseudo - ALLOWED_PSEUDO_PARAMETERS


def test_every_environment_variable_is_a_setting_the_functions_read() -> None:
    from sandcastle.config import Settings

    setting_names = {name.upper() for name in Settings.model_fields}
    passed = set(TEMPLATE["Globals"]["Function"]["Environment"]["Variables"])
    for function in FUNCTIONS.values():
        passed |= set(function["Properties"].get("Environment", {}).get("Variables", {}))

    read_by_libraries = {name for name in passed if name.startswith(("POWERTOOLS_", "PYDANTIC_"))}  # their own config
    unknown = passed - read_by_libraries - setting_names
    assert not unknown, f"template passes variables no setting reads: {sorted(unknown)}"


def test_outputs_name_what_a_deployer_needs() -> None:
    outputs = TEMPLATE["Outputs"]

    assert {"StateMachineArn", "RunsTableName", "ArtifactsBucketName", "SubmitRunFunctionName"} <= set(outputs)
    assert all(output.get("Description") for output in outputs.values())


# ---------------------------------------------------------------- functions


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_handler_names_a_module_that_defines_it(logical_id: str) -> None:
    handler = FUNCTIONS[logical_id]["Properties"]["Handler"]
    module, _, attribute = handler.rpartition(".")
    module_path = REPO_ROOT / _code_root(FUNCTIONS[logical_id]) / (module.replace(".", "/") + ".py")

    assert module_path.is_file(), f"{logical_id}: Handler {handler!r} needs {module_path.relative_to(REPO_ROOT)}"
    tree = ast.parse(module_path.read_text(), filename=str(module_path))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    defined |= {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert attribute in defined, f"{module_path.relative_to(REPO_ROOT)} defines no top-level {attribute!r}"


def _grants_on_executions(function: dict) -> bool:
    """Whether the function may act on executions (start, stop, describe): more than send a task token back."""
    if "StepFunctionsExecutionPolicy" in _policy_template_names(function["Properties"]):
        return True
    return "states:" in json.dumps(function["Properties"].get("Policies", [])).replace('"states:SendTaskSuccess"', "")


def test_only_the_submitter_can_start_executions() -> None:
    starters = {logical_id for logical_id, function in FUNCTIONS.items() if _grants_on_executions(function)}

    # The triggers submit runs too (an upload, a schedule's fire); the reaper stops overdue executions.
    assert starters == {"SubmitRunFunction", "ApiFunction", "OnUploadFunction", "OnScheduleFunction", "ReaperFunction"}
    for starter in starters:
        variables = FUNCTIONS[starter]["Properties"]["Environment"]["Variables"]
        assert variables["STATE_MACHINE_ARN"] == {"Ref": STATE_MACHINE_ID}


def test_only_the_api_and_await_approval_send_task_tokens_back_and_nothing_else() -> None:
    senders = {}
    for logical_id in FUNCTIONS:
        for statement in _role_statements(logical_id):
            if "states:SendTaskSuccess" in json.dumps(statement["Action"]):
                senders[logical_id] = statement
    assert set(senders) == {"ApiFunction", "AwaitApprovalFunction"}
    for logical_id, statement in senders.items():
        # the action takes no resource (the token names the task): the grant is that one action, nothing more
        assert (statement["Action"], statement["Resource"]) == ("states:SendTaskSuccess", "*"), logical_id


def test_secrets_are_granted_only_when_configured() -> None:
    for logical_id, function in FUNCTIONS.items():
        for policy in function["Properties"].get("Policies", []):
            if "AWSSecretsManagerGetSecretValuePolicy" not in json.dumps(policy):
                continue
            assert "Fn::If" in policy, f"{logical_id}: grant the secret only if its parameter is set (Fn::If)"
            condition, granted, otherwise = policy["Fn::If"]
            assert otherwise == {"Ref": "AWS::NoValue"}, logical_id
            secret = granted["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]
            assert TEMPLATE["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [secret, ""]}]}, logical_id


def test_the_model_key_reaches_only_the_model_turn() -> None:
    holders = {
        logical_id
        for logical_id, function in FUNCTIONS.items()
        if "ModelApiKeySecretArn" in json.dumps(function["Properties"].get("Policies", []))
    }

    assert holders == {"AgentStepFunction"}


# ---------------------------------------------------------------- the state machine


def test_substitutions_and_asl_placeholders_match() -> None:
    placeholders = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", ASL_TEXT))

    assert placeholders == set(STATE_MACHINE["DefinitionSubstitutions"])


def test_state_machine_may_invoke_every_function_it_names() -> None:
    invocable = {
        policy["LambdaInvokePolicy"]["FunctionName"]["Ref"]
        for policy in STATE_MACHINE["Policies"]
        if "LambdaInvokePolicy" in policy
    }
    named = {
        value["Fn::GetAtt"][0]
        for value in STATE_MACHINE["DefinitionSubstitutions"].values()
        if isinstance(value, dict) and "Fn::GetAtt" in value
    }

    assert named <= set(FUNCTIONS)
    assert invocable == named


def test_state_machine_is_standard_traced_and_logs_no_execution_data() -> None:
    logging = STATE_MACHINE["Logging"]

    assert STATE_MACHINE["Type"] == "STANDARD"
    assert STATE_MACHINE["Tracing"] == {"Enabled": True}
    assert logging["IncludeExecutionData"] is False
    assert logging["Level"] in {"ALL", "ERROR"}
    [destination] = logging["Destinations"]
    log_group = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    assert TEMPLATE["Resources"][log_group]["Type"] == "AWS::Logs::LogGroup"


@pytest.mark.parametrize("name", [name for name, state in _states(ASL["States"]) if state["Type"] == "Task"])
def test_every_task_retries_transient_lambda_errors(name: str) -> None:
    state = dict(_states(ASL["States"]))[name]
    retried = {error for retrier in state.get("Retry", []) for error in retrier["ErrorEquals"]}

    assert retried >= TRANSIENT_LAMBDA_ERRORS, f"{name} does not retry {TRANSIENT_LAMBDA_ERRORS - retried}"


@pytest.mark.parametrize(
    "name",
    [
        name
        for name, state in ASL["States"].items()
        if state["Type"] in {"Task", "Map", "Parallel"} and name != FAIL_STATE
    ],
)
def test_every_step_but_failrun_catches_everything_into_failrun(name: str) -> None:
    # Tasks inside a Map are covered by the Map's own Catch (they cannot leave its scope).
    catchers = ASL["States"][name].get("Catch", [])

    assert any("States.ALL" in c["ErrorEquals"] and c["Next"] == FAIL_STATE for c in catchers), name


def test_failrun_is_a_task_that_does_not_catch_into_itself() -> None:
    fail_run = ASL["States"][FAIL_STATE]

    assert fail_run["Type"] == "Task"
    assert all(catcher["Next"] != FAIL_STATE for catcher in fail_run.get("Catch", []))


# ---------------------------------------------------------------- data


def test_runs_table_has_ttl_pitr_and_the_tenant_index() -> None:
    [table] = resources_of_type(TEMPLATE, "AWS::DynamoDB::Table").values()
    properties = table["Properties"]

    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert {key["AttributeName"]: key["KeyType"] for key in properties["KeySchema"]} == {
        "pk": "HASH",
        "sk": "RANGE",
    }
    [by_tenant] = [index for index in properties["GlobalSecondaryIndexes"] if index["IndexName"] == "by_tenant"]
    assert {key["AttributeName"]: key["KeyType"] for key in by_tenant["KeySchema"]} == {
        "gsi1pk": "HASH",
        "gsi1sk": "RANGE",
    }
    assert by_tenant["Projection"]["ProjectionType"] == "ALL"
    assert table["DeletionPolicy"] == "Retain"


@pytest.mark.parametrize("bucket_id", ["ArtifactsBucket", "InboxBucket"])
def test_buckets_are_private_encrypted_and_refuse_plain_http(bucket_id: str) -> None:
    bucket = TEMPLATE["Resources"][bucket_id]
    [policy] = [
        policy
        for policy in resources_of_type(TEMPLATE, "AWS::S3::BucketPolicy").values()
        if policy["Properties"]["Bucket"] == {"Ref": bucket_id}
    ]

    assert set(bucket["Properties"]["PublicAccessBlockConfiguration"].values()) == {True}
    assert bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert any(
        statement["Effect"] == "Deny"
        and statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    )
    assert bucket["DeletionPolicy"] == "Retain"


# ---------------------------------------------------------------- the HTTP API


def _api_events() -> dict[str, dict[str, Any]]:
    return {
        name: event["Properties"]
        for name, event in FUNCTIONS["ApiFunction"]["Properties"]["Events"].items()
        if event["Type"] == "Api"
    }


def test_every_route_of_the_api_function_is_an_api_event_behind_the_key_authorizer() -> None:
    from sandcastle.api.app import app

    [(api_id, api)] = resources_of_type(TEMPLATE, "AWS::Serverless::Api").items()
    auth = api["Properties"]["Auth"]
    authorizer = auth["Authorizers"][auth["DefaultAuthorizer"]]
    assert authorizer["FunctionPayloadType"] == "REQUEST"
    assert authorizer["Identity"]["Headers"] == ["Authorization"]
    assert 0 < authorizer["Identity"]["ReauthorizeEvery"] <= 300
    assert authorizer["FunctionArn"] == {"Fn::GetAtt": ["ApiAuthorizerFunction", "Arn"]}

    events = _api_events()
    declared = {(e["Method"].upper(), e["Path"]) for e in events.values()}
    documented = {
        (method.upper(), path)
        for path, item in json.loads(app.get_openapi_json_schema())["paths"].items()
        for method in item
    }
    assert documented <= declared
    public = {e["Path"] for e in events.values() if e.get("Auth", {}).get("Authorizer") == "NONE"}
    assert public == {"/openapi.json", "/docs", "/health"}
    assert all(e["RestApiId"] == {"Ref": api_id} for e in events.values())


def test_the_api_answers_errors_in_its_one_shape_even_from_the_gateway() -> None:
    [api] = resources_of_type(TEMPLATE, "AWS::Serverless::Api").values()
    responses = api["Properties"]["GatewayResponses"]

    assert responses["UNAUTHORIZED"]["StatusCode"] == 401
    assert responses["MISSING_AUTHENTICATION_TOKEN"]["StatusCode"] == 404
    for response in responses.values():
        body = json.loads(response["ResponseTemplates"]["application/json"])
        assert set(body) == {"error", "message"}


def test_execution_ends_trigger_the_cleanup_rule() -> None:
    events = FUNCTIONS["OnExecutionEndFunction"]["Properties"]["Events"]
    [rule] = [event["Properties"] for event in events.values() if event["Type"] == "EventBridgeRule"]

    assert rule["Pattern"]["source"] == ["aws.states"]
    assert rule["Pattern"]["detail-type"] == ["Step Functions Execution Status Change"]
    assert set(rule["Pattern"]["detail"]["status"]) == {"ABORTED", "TIMED_OUT", "FAILED"}
    assert rule["Pattern"]["detail"]["stateMachineArn"] == [{"Ref": STATE_MACHINE_ID}]


def test_only_the_api_may_stop_executions_and_the_authorizer_reads_only_keys() -> None:
    stoppers = {
        logical_id
        for logical_id, function in FUNCTIONS.items()
        if "states:StopExecution" in json.dumps(function["Properties"].get("Policies", []))
    }
    assert stoppers == {"ApiFunction", "ReaperFunction"}
    [statement] = FUNCTIONS["ApiAuthorizerFunction"]["Properties"]["Policies"][0]["Statement"]
    assert statement["Action"] == "dynamodb:GetItem"
    assert statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] == ["APIKEY#*"]


# ---------------------------------------------------------------- triggers


def _rule(function: str) -> dict[str, Any]:
    [rule] = [
        event["Properties"]
        for event in FUNCTIONS[function]["Properties"]["Events"].values()
        if event["Type"] == "EventBridgeRule"
    ]
    return rule


def test_the_inbox_bucket_is_versioned_and_sends_object_created_to_the_upload_function() -> None:
    bucket = TEMPLATE["Resources"]["InboxBucket"]["Properties"]
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True

    pattern = _rule("OnUploadFunction")["Pattern"]
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["bucket"]["name"] == [{"Ref": "InboxBucket"}]
    # only inbox/: the outbox the functions write must never trigger a run
    assert pattern["detail"]["object"]["key"] == [{"prefix": "inbox/"}]


def test_run_finished_events_of_uploads_reach_the_outbox_writer() -> None:
    pattern = _rule("OnRunFinishedFunction")["Pattern"]
    assert pattern == {"source": ["sandcastle"], "detail-type": ["Run Finished"], "detail": {"source": ["s3"]}}
    policies = json.dumps(FUNCTIONS["OnRunFinishedFunction"]["Properties"]["Policies"])
    assert "${InboxBucket.Arn}/outbox/*" in policies


def test_schedules_invoke_their_targets_through_the_scheduler_role_with_retries_and_a_dead_letter_queue() -> None:
    resources = TEMPLATE["Resources"]
    role = resources["SchedulerRole"]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    granted = json.dumps(role["Policies"])
    assert "OnScheduleFunction" in granted and "ReaperFunction" in granted and "ScheduleDeadLetterQueue" in granted

    reaper = resources["ReaperSchedule"]["Properties"]
    assert reaper["ScheduleExpression"] == "rate(5 minutes)"
    assert reaper["GroupName"] == {"Ref": "ScheduleGroup"}
    assert reaper["Target"]["Arn"] == {"Fn::GetAtt": ["ReaperFunction", "Arn"]}
    assert reaper["Target"]["RetryPolicy"] and reaper["Target"]["DeadLetterConfig"]
    assert resources["ScheduleGroup"]["Type"] == "AWS::Scheduler::ScheduleGroup"
    assert resources["ScheduleDeadLetterQueue"]["Type"] == "AWS::SQS::Queue"


def test_the_api_may_create_schedules_and_pass_only_the_scheduler_role() -> None:
    api = FUNCTIONS["ApiFunction"]["Properties"]
    statements = [s for p in api["Policies"] if isinstance(p, dict) for s in p.get("Statement", [])]
    [manage] = [s for s in statements if s.get("Sid") == "ManageSchedules"]
    assert {"scheduler:CreateSchedule", "scheduler:DeleteSchedule"} <= set(manage["Action"])
    [pass_role] = [s for s in statements if s.get("Sid") == "PassTheSchedulerRole"]
    assert pass_role["Resource"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    variables = api["Environment"]["Variables"]
    assert variables["SCHEDULE_TARGET_ARN"] == {"Fn::GetAtt": ["OnScheduleFunction", "Arn"]}
    assert variables["SCHEDULER_ROLE_ARN"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert variables["SCHEDULE_GROUP_NAME"] == {"Ref": "ScheduleGroup"}


# ---------------------------------------------------------------- failures that do not vanish

TRANSLATED = sam_translate(TEMPLATE)
ALARMS = {
    logical_id: resource["Properties"]
    for logical_id, resource in TRANSLATED["Resources"].items()
    if resource["Type"] == "AWS::CloudWatch::Alarm"
}


def _asynchronous_functions() -> set[str]:
    """Functions invoked asynchronously: by an EventBridge rule, or as a schedule's target."""
    by_rule = {
        logical_id
        for logical_id, function in FUNCTIONS.items()
        if any(e["Type"] == "EventBridgeRule" for e in function["Properties"].get("Events", {}).values())
    }
    scheduled = {
        resource["Properties"]["Target"]["Arn"]["Fn::GetAtt"][0]
        for resource in resources_of_type(TEMPLATE, "AWS::Scheduler::Schedule").values()
    }
    api_schedules = FUNCTIONS["ApiFunction"]["Properties"]["Environment"]["Variables"]["SCHEDULE_TARGET_ARN"]
    return by_rule | scheduled | {api_schedules["Fn::GetAtt"][0]}


def _alarm_on(namespace: str, metric: str, dimension: str, value: Any) -> dict[str, Any]:
    [alarm] = [
        a
        for a in ALARMS.values()
        if a["Namespace"] == namespace
        and a["MetricName"] == metric
        and {"Name": dimension, "Value": value} in a["Dimensions"]
    ]
    return alarm


def test_every_asynchronous_function_sends_a_failed_invocation_to_a_queue_it_may_write() -> None:
    asynchronous = _asynchronous_functions()
    assert asynchronous == {
        "OnUploadFunction",
        "OnRunFinishedFunction",
        "OnExecutionEndFunction",
        "OnScheduleFunction",
        "ReaperFunction",
    }
    for logical_id in sorted(asynchronous):
        config = TRANSLATED["Resources"][f"{logical_id}EventInvokeConfig"]["Properties"]
        destination = config["DestinationConfig"]["OnFailure"]["Destination"]
        assert destination == {"Fn::GetAtt": ["FailedInvocationsQueue", "Arn"]}, logical_id
        role = json.dumps(TRANSLATED["Resources"][f"{logical_id}Role"]["Properties"]["Policies"])
        assert "sqs:SendMessage" in role and "FailedInvocationsQueue" in role, logical_id


def test_every_eventbridge_rule_dead_letters_into_a_queue_that_accepts_exactly_those_rules() -> None:
    rules = {k: r for k, r in TRANSLATED["Resources"].items() if r["Type"] == "AWS::Events::Rule"}
    assert len(rules) == 3
    for logical_id, rule in rules.items():
        for target in rule["Properties"]["Targets"]:
            assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["RuleDeadLetterQueue", "Arn"]}, logical_id
    policy = TEMPLATE["Resources"]["RuleDeadLetterQueuePolicy"]["Properties"]
    [statement] = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    sources = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert sorted(s["Fn::GetAtt"][0] for s in sources) == sorted(rules)


def test_alarms_watch_queues_executions_functions_and_the_api_and_notify_the_topic() -> None:
    for queue in resources_of_type(TEMPLATE, "AWS::SQS::Queue"):
        alarm = _alarm_on(
            "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", {"Fn::GetAtt": [queue, "QueueName"]}
        )
        assert alarm["Threshold"] == 1 and alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    for metric in ("ExecutionsFailed", "ExecutionsTimedOut"):
        _alarm_on("AWS/States", metric, "StateMachineArn", {"Ref": STATE_MACHINE_ID})
    for logical_id in FUNCTIONS:
        for metric in ("Errors", "Throttles"):
            _alarm_on("AWS/Lambda", metric, "FunctionName", {"Ref": logical_id})
    api = TEMPLATE["Resources"]["SandcastleApi"]["Properties"]
    five_xx = _alarm_on("AWS/ApiGateway", "5XXError", "ApiName", api["Name"])
    assert {"Name": "Stage", "Value": api["StageName"]} in five_xx["Dimensions"]
    reaper = _alarm_on("Sandcastle", "ReaperErrors", "service", "sandcastle")
    assert TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "sandcastle"
    assert reaper["Threshold"] == 1
    for logical_id, alarm in ALARMS.items():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], logical_id
        assert alarm["TreatMissingData"] == "notBreaching", logical_id


def test_the_api_stage_writes_access_logs_without_headers_and_is_throttled() -> None:
    [stage] = [r["Properties"] for r in TRANSLATED["Resources"].values() if r["Type"] == "AWS::ApiGateway::Stage"]
    access = stage["AccessLogSetting"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    fields = json.loads(access["Format"])  # one JSON object per line
    assert {"requestId", "status", "resourcePath", "tenant"} <= set(fields)
    assert "header" not in access["Format"].lower() and "$input" not in access["Format"]  # never the API key
    [throttle] = stage["MethodSettings"]
    assert throttle["ResourcePath"] == "/*" and throttle["HttpMethod"] == "*"
    assert throttle["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRateLimit"}
    assert throttle["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurstLimit"}
    # API Gateway writes access logs through the account's CloudWatch role: it is set before the API.
    account = TEMPLATE["Resources"]["ApiGatewayAccount"]["Properties"]
    assert account["CloudWatchRoleArn"] == {"Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]}
    assert TRANSLATED["Resources"]["SandcastleApi"]["DependsOn"] == "ApiGatewayAccount"


# ---------------------------------------------------------------- what a deploy must configure


@pytest.mark.parametrize(
    ("parameters", "accepted"),
    [
        ({}, False),
        ({"ModelApiKeySecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:model-AbCdEf"}, True),
        ({"ModelBaseUrl": "https://gateway.example.com/v1"}, True),
    ],
)
def test_a_deploy_without_a_model_key_or_endpoint_is_refused(parameters: dict[str, str], accepted: bool) -> None:
    from sandcastle.local.template import Template

    template = Template.load(TEMPLATE_PATH, region="us-east-1", parameter_overrides=parameters)
    rule = TEMPLATE["Rules"]["ModelIsConfigured"]
    assert "RuleCondition" not in rule  # whatever the other parameters say
    [assertion] = rule["Assertions"]

    assert template.resolve(assertion["Assert"]) is accepted
    assert "ModelApiKeySecretArn" in assertion["AssertDescription"] and "ModelBaseUrl" in assertion["AssertDescription"]
    assert TRANSLATED["Rules"] == TEMPLATE["Rules"]  # the transform keeps the rules for CloudFormation


def test_the_cloud_sandbox_backend_is_e2b_only() -> None:
    assert TEMPLATE["Parameters"]["SandboxBackend"]["AllowedValues"] == ["e2b"]


# ---------------------------------------------------------------- grants no broader than needed


def _role_statements(logical_id: str) -> list[dict[str, Any]]:
    role = TRANSLATED["Resources"][f"{logical_id}Role"]["Properties"]
    return [
        s
        for p in json.loads(json.dumps(role.get("Policies", [])))
        for s in _walk(p)
        if isinstance(s, dict) and "Effect" in s
    ]


def test_no_function_may_set_object_acls_bucket_settings_or_use_wildcard_actions() -> None:
    for logical_id in FUNCTIONS:
        for statement in _role_statements(logical_id):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                assert action not in {"s3:PutObjectAcl", "s3:PutLifecycleConfiguration", "s3:DeleteObject"}, logical_id
                assert not action.endswith(":*"), (logical_id, action)


def test_the_tool_runner_writes_only_under_runs_and_reads_only_saved_outputs() -> None:
    s3 = [s for s in _role_statements("RunToolFunction") if "s3:" in json.dumps(s["Action"])]
    assert [(s["Action"], s["Resource"]) for s in s3] == [
        ("s3:PutObject", {"Fn::Sub": "${ArtifactsBucket.Arn}/runs/*"}),
        ("s3:GetObject", {"Fn::Sub": "${ArtifactsBucket.Arn}/runs/*/outputs/*"}),
    ]


def test_the_agent_step_writes_and_reads_only_saved_outputs() -> None:
    """It records large reply values and runs a turn's one tool call: outputs/ only, narrower than RunTool."""
    s3 = [s for s in _role_statements("AgentStepFunction") if "s3:" in json.dumps(s["Action"])]
    assert [(s["Action"], s["Resource"]) for s in s3] == [
        ("s3:PutObject", {"Fn::Sub": "${ArtifactsBucket.Arn}/runs/*/outputs/*"}),
        ("s3:GetObject", {"Fn::Sub": "${ArtifactsBucket.Arn}/runs/*/outputs/*"}),
    ]


@pytest.mark.parametrize(
    "logical_id",
    [
        "PrepareRunFunction",
        "AgentStepFunction",
        "AwaitApprovalFunction",
        "RunToolFunction",
        "FinishRunFunction",
        "FailRunFunction",
        "OnExecutionEndFunction",
        "OnRunFinishedFunction",
        "ReaperFunction",
    ],
)
def test_functions_that_touch_only_runs_are_confined_to_run_items(logical_id: str) -> None:
    """Run items, and at most an update of the tenant's count of unfinished runs (freed as a run ends)."""
    dynamodb = [s for s in _role_statements(logical_id) if "dynamodb:" in json.dumps(s["Action"])]
    assert dynamodb, logical_id
    for statement in dynamodb:
        assert statement["Resource"] == {"Fn::GetAtt": ["RunsTable", "Arn"]}  # the table, not its index
        leading = statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
        if leading == ["TENANT#*"]:
            assert statement["Action"] == "dynamodb:UpdateItem", logical_id
            continue
        if leading == ["POLICY#*"]:  # the approval gate reads the tenant's policy, and only reads it
            assert (logical_id, statement["Action"]) == ("AgentStepFunction", "dynamodb:GetItem")
            continue
        assert statement["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["RUN#*"]}}
        assert "dynamodb:Scan" not in statement["Action"]


def test_only_the_api_and_the_submitter_may_touch_any_item_of_the_table() -> None:
    whole_table = set()
    for logical_id in FUNCTIONS:
        for statement in _role_statements(logical_id):
            if "dynamodb:" in json.dumps(statement["Action"]):
                leading = statement.get("Condition", {}).get("ForAllValues:StringLike", {})
                if "dynamodb:LeadingKeys" not in leading:
                    whole_table.add(logical_id)
    assert whole_table == {"ApiFunction", "SubmitRunFunction"}


def test_the_runtimes_yaml_loader_reads_the_template_as_cfn_lint_does() -> None:
    from cfnlint.decode import cfn_yaml

    from sandcastle.local.template import load_yaml

    assert load_yaml(TEMPLATE_PATH) == json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE_PATH))))


def test_the_sam_transform_is_read_back_from_its_disk_cache_in_a_new_process(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandcastle.local import template as template_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    loaded = template_module.Template.load(TEMPLATE_PATH, region="eu-west-3")
    template_module._transformed.cache_clear()
    first = loaded.transformed()
    template_module._transformed.cache_clear()  # as a new process would start

    def refuse(*_: Any) -> Any:
        raise AssertionError("translated again")

    monkeypatch.setattr(template_module, "sam_translate", refuse)

    assert loaded.transformed() == first
    assert list((tmp_path / "sandcastle").glob("sam-*.json"))
    template_module._transformed.cache_clear()
