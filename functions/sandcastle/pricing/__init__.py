"""List prices as data (``prices.json``: one section per source of cost, each price with its page and the
day it was read), and what a run's AWS usage costs at them.

Only arithmetic here: what was used (transitions, invocations, request units, requests) is counted by
whoever asks — a benchmark on the local stack, later the run itself.
"""

from __future__ import annotations

import json
import math
from datetime import date
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PRICES_FILE = Path(__file__).with_name("prices.json")


class Price(BaseModel):
    """One list price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usd: Decimal
    """US dollars per ``per``."""
    per: str
    source: str
    """The page the price was read on."""
    checked: date
    """The day it was read there."""
    note: str | None = None


class PriceSection(BaseModel):
    """The prices of one source of cost (``aws``; later a model provider, a sandbox provider)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str | None = None
    prices: dict[str, Price]


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    about: str
    currency: Literal["USD"]
    sections: dict[str, PriceSection]

    def price(self, section: str, name: str) -> Price:
        """The price ``name`` of ``section``; a ``KeyError`` naming both when the table has none."""
        try:
            return self.sections[section].prices[name]
        except KeyError:
            raise KeyError(f"{PRICES_FILE.name} has no price {section}/{name}") from None


@cache
def price_table(path: Path = PRICES_FILE) -> PriceTable:
    """The table in ``path`` (``prices.json`` beside this module), read once."""
    return PriceTable.model_validate(json.loads(path.read_text(), parse_float=Decimal))


# --- the AWS cost of a run ---


class LambdaUsage(BaseModel):
    """One function's invocations: Lambda bills each one's duration, rounded up to 1 ms, times its memory."""

    model_config = ConfigDict(extra="forbid")

    function: str
    memory_mb: int
    architecture: Literal["arm64", "x86_64"] = "arm64"
    durations_ms: list[float] = Field(default_factory=list)
    """One entry per invocation."""

    @property
    def gb_seconds(self) -> Decimal:
        billed_ms = sum(math.ceil(ms) for ms in self.durations_ms)
        return Decimal(billed_ms) / 1000 * Decimal(self.memory_mb) / 1024


class AwsUsage(BaseModel):
    """What a run used of the AWS services that bill per use (storage, logs and data transfer left out)."""

    model_config = ConfigDict(extra="forbid")

    state_transitions: int = 0
    lambdas: list[LambdaUsage] = Field(default_factory=list)
    dynamodb_read_units: Decimal = Decimal(0)
    dynamodb_write_units: Decimal = Decimal(0)
    s3_put_requests: int = 0
    """PUT, COPY, POST, LIST."""
    s3_get_requests: int = 0
    """GET, HEAD and the rest."""


class AwsCost(BaseModel):
    """US dollars, by service."""

    step_functions: Decimal
    lambda_requests: Decimal
    lambda_duration: Decimal
    dynamodb: Decimal
    s3: Decimal

    @property
    def total(self) -> Decimal:
        return self.step_functions + self.lambda_requests + self.lambda_duration + self.dynamodb + self.s3


def aws_cost(usage: AwsUsage, table: PriceTable | None = None) -> AwsCost:
    """What ``usage`` costs at the table's AWS list prices (no free tier deducted)."""
    prices = table or price_table()

    def usd(name: str) -> Decimal:
        return prices.price("aws", name).usd

    return AwsCost(
        step_functions=usage.state_transitions * usd("stepfunctions.standard.state_transition"),
        lambda_requests=sum(len(f.durations_ms) for f in usage.lambdas) * usd("lambda.request"),
        lambda_duration=sum(
            (f.gb_seconds * usd(f"lambda.duration.{f.architecture}") for f in usage.lambdas), Decimal(0)
        ),
        dynamodb=usage.dynamodb_read_units * usd("dynamodb.on_demand.read_request_unit")
        + usage.dynamodb_write_units * usd("dynamodb.on_demand.write_request_unit"),
        s3=usage.s3_put_requests * usd("s3.standard.put_request")
        + usage.s3_get_requests * usd("s3.standard.get_request"),
    )
