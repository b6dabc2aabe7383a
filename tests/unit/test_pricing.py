"""The price table (``functions/sandcastle/pricing/prices.json``) and the AWS cost of a run's usage."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from sandcastle.pricing import AwsUsage, LambdaUsage, aws_cost, price_table


def test_every_price_says_where_and_when_it_was_read() -> None:
    table = price_table()
    assert table.currency == "USD" and "aws" in table.sections
    for section in table.sections.values():
        for name, price in section.prices.items():
            assert price.usd > 0, name
            assert price.source.startswith("https://"), name
            assert date(2024, 1, 1) <= price.checked <= date.today(), name
    assert table.sections["aws"].region == "us-east-1"


def test_the_table_keeps_list_prices_exactly() -> None:
    # Decimal from the JSON text: $0.025 per 1,000 transitions is exactly 0.000025, not a float near it
    assert price_table().price("aws", "stepfunctions.standard.state_transition").usd == Decimal("0.000025")


def test_the_aws_cost_of_usage_is_each_count_times_its_price() -> None:
    usage = AwsUsage(
        state_transitions=1000,
        lambdas=[
            LambdaUsage(function="AgentStep", memory_mb=512, architecture="arm64", durations_ms=[999.2, 1000.0]),
            LambdaUsage(function="Old", memory_mb=1024, architecture="x86_64", durations_ms=[500.0]),
        ],
        dynamodb_read_units=Decimal(2_000_000),
        dynamodb_write_units=Decimal(1_000_000),
        s3_put_requests=1000,
        s3_get_requests=1000,
    )

    cost = aws_cost(usage)

    assert cost.step_functions == Decimal("0.025")
    assert cost.lambda_requests == 3 * Decimal("0.0000002")
    # 999.2 ms is billed as 1000 ms: 2 s × 0.5 GB on Arm, 0.5 s × 1 GB on x86
    assert cost.lambda_duration == 1 * Decimal("0.0000133334") + Decimal("0.5") * Decimal("0.0000166667")
    assert cost.dynamodb == Decimal("0.25") + Decimal("0.625")
    assert cost.s3 == Decimal("0.005") + Decimal("0.0004")
    assert cost.total == sum(
        (cost.step_functions, cost.lambda_requests, cost.lambda_duration, cost.dynamodb, cost.s3), Decimal(0)
    )


def test_a_price_the_table_lacks_is_named() -> None:
    with pytest.raises(KeyError, match="prices.json has no price aws/lambda.duration.riscv"):
        price_table().price("aws", "lambda.duration.riscv")
