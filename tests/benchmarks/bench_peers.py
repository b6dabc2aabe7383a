"""Sandcastle against the agent frameworks, per agent step, on the same fake model and the same sandbox path.

Every peer runs the same script: the fake model (``tests/fakes/openai_server.py``, real HTTP on
loopback) answers N turns with one ``run_command {"command": "true"}`` tool call each, then a
final text turn; every tool call goes through the real e2b SDK to one local E2B server
(``sandcastle.e2b_server``, bubblewrap) started for the whole benchmark. Each run creates its
sandbox and kills it at the end, as a Sandcastle run does (PrepareRun, FinishRun). The peers:

- **Sandcastle local runtime (e2b path)**: ``LocalRuntime`` (moto executing the real ASL, the real
  handlers, the ``openai`` policy) pointed at the fake model and the shared E2B server; one runtime
  for the whole benchmark, as ``sandcastle serve`` keeps one; a run is timed from submission to its
  execution's stop;
- **OpenAI Agents SDK + e2b SDK**: ``Runner.run_sync`` with a ``function_tool``;
- **LangGraph ReAct + e2b SDK**: ``langgraph.prebuilt.create_react_agent`` over ``langchain_openai.ChatOpenAI``;
- **floor: openai SDK + e2b SDK**: a hand-written loop, the least any agent can do.

A "tool step" is one model turn that asks for the tool plus that tool call; a run of N tool steps
makes N + 1 model requests. The first/last-10 figures are the gaps between consecutive model
requests as the fake server received them (so they time the same span in every peer), averaged
over the first and the last 10 tool steps of the longest run. Repetitions are interleaved
(peer order rotates) and figures are medians over them.

Needs the benchmark environment (``make bench`` builds ``.venv-bench`` with the Agents SDK and
LangGraph); in another environment the peers that are not installed are left out, and said so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.benchmarks import section, table
from tests.fakes.openai_server import FakeOpenAIServer

E2B_KEY = "bench-local-e2b"
MODEL = "fake-model"
TOOL_DESCRIPTION = "Run a shell command in the sandbox."

SANDCASTLE = "Sandcastle local runtime (e2b path)"
AGENTS_SDK = "OpenAI Agents SDK + e2b SDK"
LANGGRAPH = "LangGraph ReAct + e2b SDK"
FLOOR = "floor: openai SDK + e2b SDK"


@dataclass(frozen=True)
class Sizes:
    short: int
    middle: int
    long: int
    repetitions: int
    cli_runs: int


FULL = Sizes(short=10, middle=50, long=200, repetitions=3, cli_runs=3)
QUICK = Sizes(short=10, middle=25, long=60, repetitions=1, cli_runs=1)


@dataclass(frozen=True)
class RunTiming:
    """One measured run: its wall time and the gap before each model request after the first."""

    steps: int
    wall_ms: float
    step_ms: list[float]
    """``step_ms[k]``: from model request k to request k + 1 (tool step k + 1: model turn, tool, framework)."""

    @property
    def per_step_ms(self) -> float:
        return self.wall_ms / self.steps

    def window_ms(self, first: bool) -> float:
        window = self.step_ms[:10] if first else self.step_ms[-10:]
        return statistics.fmean(window)


Peer = Callable[[int], float]
"""Runs one agent of N tool steps against the scripted model and returns its wall time in ms."""


# --- the peers ---


def _sandbox_options(e2b_url: str) -> dict[str, Any]:
    return {"api_key": E2B_KEY, "api_url": e2b_url, "sandbox_url": e2b_url}


def _floor(model_url: str, e2b_url: str) -> Peer:
    from e2b import Sandbox
    from openai import OpenAI

    client = OpenAI(base_url=model_url, api_key="bench")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "run_command",
                "description": TOOL_DESCRIPTION,
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}},
                    "required": ["command"],
                },
            },
        }
    ]

    def run(steps: int) -> float:
        started = time.perf_counter()
        sandbox = Sandbox.create(timeout=600, **_sandbox_options(e2b_url))
        messages: list[dict[str, Any]] = [{"role": "user", "content": "bench"}]
        while True:
            reply = client.chat.completions.create(model=MODEL, messages=messages, tools=tools)  # type: ignore[arg-type]
            message = reply.choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            if not message.tool_calls:
                break
            for call in message.tool_calls:
                result = sandbox.commands.run(json.loads(call.function.arguments)["command"], timeout=60)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result.stdout})
        sandbox.kill()
        return (time.perf_counter() - started) * 1000

    return run


def _agents_sdk(model_url: str, e2b_url: str) -> Peer:
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from e2b import Sandbox
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=AsyncOpenAI(base_url=model_url, api_key="bench"))
    current: dict[str, Any] = {}

    @function_tool
    def run_command(command: str) -> str:
        """Run a shell command in the sandbox."""
        return current["sandbox"].commands.run(command, timeout=60).stdout

    agent = Agent(name="bench", instructions="bench", model=model, tools=[run_command])

    def run(steps: int) -> float:
        started = time.perf_counter()
        current["sandbox"] = Sandbox.create(timeout=600, **_sandbox_options(e2b_url))
        Runner.run_sync(agent, "bench", max_turns=steps + 5)
        current.pop("sandbox").kill()
        return (time.perf_counter() - started) * 1000

    return run


def _langgraph(model_url: str, e2b_url: str) -> Peer:
    from e2b import Sandbox
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    current: dict[str, Any] = {}

    @tool
    def run_command(command: str) -> str:
        """Run a shell command in the sandbox."""
        return current["sandbox"].commands.run(command, timeout=60).stdout

    graph = create_react_agent(ChatOpenAI(model=MODEL, base_url=model_url, api_key="bench"), [run_command])

    def run(steps: int) -> float:
        started = time.perf_counter()
        current["sandbox"] = Sandbox.create(timeout=600, **_sandbox_options(e2b_url))
        graph.invoke({"messages": [("user", "bench")]}, config={"recursion_limit": 2 * steps + 10})
        current.pop("sandbox").kill()
        return (time.perf_counter() - started) * 1000

    return run


@contextmanager
def _sandcastle(model_url: str, e2b_url: str, home: Path) -> Iterator[Peer]:
    from sandcastle.local.runtime import LocalRuntime
    from sandcastle.runs.records import RunStatus
    from sandcastle.runs.requests import RunRequest

    environment = {
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "bench",
        "DEFAULT_MODEL": MODEL,
        "SANDBOX_BACKEND": "e2b",
        "E2B_API_KEY": E2B_KEY,
        "E2B_API_URL": e2b_url,
        "E2B_SANDBOX_URL": e2b_url,
        "SANDBOX_INTERNET": "false",
        "MAX_STEPS_CEILING": "1000",
    }
    with LocalRuntime(home=home, environment=environment) as runtime:

        def run(steps: int) -> float:
            request = RunRequest(
                instructions="bench", budgets={"max_steps": steps + 2, "max_tool_calls": steps + 1, "timeout_s": 1800}
            )
            started_epoch = time.time()
            submitted = runtime.submit(request)
            ended = getattr(runtime, "executions_ended", None)  # older runtimes: polled slowly
            while True:  # woken when an execution ends: no polling competing with the run for the GIL
                seen = ended.version if ended is not None else 0
                if (execution := runtime.execution(submitted.run_id))["status"] != "RUNNING":
                    break
                ended.wait(seen, timeout_s=5.0) if ended is not None else time.sleep(0.05)
            run = runtime.get_run(submitted.run_id)
            if run.status is not RunStatus.SUCCEEDED or run.usage.tool_calls != steps:
                raise RuntimeError(f"benchmark run {run.run_id} ended {run.status.value}: {run.error}")
            # The execution's own stop time, so the polling interval adds nothing to the wall time.
            stopped = execution["stopDate"].timestamp() - started_epoch
            return stopped * 1000

        yield run


# --- measuring ---


def _measure(fake: FakeOpenAIServer, peer: Peer, steps: int) -> RunTiming:
    if fake.pending:
        raise RuntimeError(f"{fake.pending} scripted replies left over from the previous run")
    for _ in range(steps):
        fake.reply_tool_calls([("run_command", {"command": "true"})])
    fake.reply_text("done")
    first = len(fake.request_times)
    wall_ms = peer(steps)
    times = fake.request_times[first:]
    if len(times) != steps + 1 or fake.pending:
        raise RuntimeError(f"expected {steps + 1} model requests, got {len(times)} ({fake.pending} replies unused)")
    gaps = [(later - earlier) * 1000 for earlier, later in zip(times, times[1:], strict=False)]
    return RunTiming(steps=steps, wall_ms=wall_ms, step_ms=gaps)


def _missing_peers() -> list[str]:
    needed = {AGENTS_SDK: "agents", LANGGRAPH: "langgraph.prebuilt"}
    return [name for name, module in needed.items() if not _installed(module)]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _cli_one_step_ms(runs: int) -> list[float]:
    """``sandcastle run --local`` of a 1-step playbook, as a user types it: a fresh process, wall time to exit."""
    command = Path(sys.executable).with_name("sandcastle")
    argv = [str(command)] if command.exists() else [sys.executable, "-m", "sandcastle.cli"]
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI_", "E2B_", "SANDBOX_", "AWS_")) and name != "SANDCASTLE_URL"
    }
    import sandcastle

    environment["PYTHONPATH"] = str(Path(sandcastle.__file__).parents[1])  # the code this benchmark measures
    timings = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as folder:
        playbook = Path(folder) / "playbook.json"
        playbook.write_text(json.dumps([{"tool": "run_command", "arguments": {"command": "true"}}]))
        for index in range(runs):
            environment["SANDCASTLE_HOME"] = str(Path(folder) / f"home-{index}")
            started = time.perf_counter()
            subprocess.run(
                [*argv, "run", "bench", "--playbook", str(playbook), "--local"],
                env=environment,
                cwd=folder,
                check=True,
                capture_output=True,
            )
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def report(quick: bool = False) -> str:
    from sandcastle.e2b_server import SandboxServer

    sizes = QUICK if quick else FULL
    missing = _missing_peers()
    results: dict[str, dict[int, list[RunTiming]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-peers-") as root,
        FakeOpenAIServer() as fake,
        SandboxServer(Path(root) / "e2b", api_key=E2B_KEY) as server,
        _sandcastle(fake.base_url, server.url, Path(root) / "home") as sandcastle,
    ):
        builders = {FLOOR: _floor, AGENTS_SDK: _agents_sdk, LANGGRAPH: _langgraph}
        peers: dict[str, Peer] = {SANDCASTLE: sandcastle}
        peers.update(
            {name: build(fake.base_url, server.url) for name, build in builders.items() if name not in missing}
        )
        for peer in peers.values():  # warm: clients, connection pools, lazy imports
            _measure(fake, peer, 2)
        names = list(peers)
        for repetition in range(sizes.repetitions):
            for steps in (sizes.short, sizes.middle, sizes.long):
                offset = (repetition + steps) % len(names)
                for name in names[offset:] + names[:offset]:
                    results.setdefault(name, {}).setdefault(steps, []).append(_measure(fake, peers[name], steps))
    cli = _cli_one_step_ms(sizes.cli_runs)
    return _render(results, sizes, cli, missing)


# --- rendering ---


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _render(
    results: dict[str, dict[int, list[RunTiming]]], sizes: Sizes, cli_ms: list[float], missing: list[str]
) -> str:
    short, middle, long = sizes.short, sizes.middle, sizes.long

    def per_step(name: str, steps: int) -> float:
        return _median([run.per_step_ms for run in results[name][steps]])

    def window(name: str, first: bool) -> float:
        return _median([run.window_ms(first) for run in results[name][long]])

    def growth(name: str) -> float:
        return window(name, first=False) / window(name, first=True)

    def marginal(name: str) -> float:
        walls_long = _median([run.wall_ms for run in results[name][long]])
        walls_middle = _median([run.wall_ms for run in results[name][middle]])
        return (walls_long - walls_middle) / (long - middle)

    rows = [
        [
            name,
            per_step(name, short),
            per_step(name, long),
            window(name, first=True),
            window(name, first=False),
            growth(name),
            marginal(name),
        ]
        for name in results
    ]
    headers = [
        "peer",
        f"ms/step, {short} steps",
        f"ms/step, {long} steps",
        f"first 10 of {long}",
        f"last 10 of {long}",
        "last/first",
        f"marginal {middle}->{long}",
    ]
    body = table(headers, rows)
    note = (
        f"ms/step = run wall time (sandbox create .. kill; Sandcastle: submission .. execution stop) / tool steps. "
        f"first/last 10 = mean gap between consecutive model requests over tool steps 1-10 and "
        f"{long - 9}-{long} of the {long}-step run. marginal = (wall at {long} - wall at {middle}) / {long - middle}, "
        f"ms per added step. Medians of {sizes.repetitions} interleaved repetition(s)."
    )
    if missing:
        note += f" Not installed here, left out: {', '.join(missing)} (`make bench` installs them in .venv-bench)."
    sections = [section("Peers: ms per tool step (same fake model, same local E2B server, `true`)", body, note)]

    target_rows: list[list[Any]] = []
    if AGENTS_SDK in results:
        for steps in (short, long):
            ratio = per_step(SANDCASTLE, steps) / per_step(AGENTS_SDK, steps)
            target_rows.append(
                [f"Sandcastle / Agents SDK, ms per step at {steps} steps", ratio, "<= 1.5", _ok(ratio, 1.5)]
            )
    relative_growth = growth(SANDCASTLE) / growth(FLOOR)
    target_rows.append(
        [
            f"Sandcastle growth (last/first 10 of {long}) / the floor's growth",
            relative_growth,
            "<= 1.2",
            _ok(relative_growth, 1.2),
        ]
    )
    cli_median = _median(cli_ms) / 1000
    target_rows.append(
        [
            f"`sandcastle run --local`, 1-step playbook, wall s (median of {len(cli_ms)})",
            cli_median,
            "< 1.5",
            _ok(cli_median, 1.5),
        ]
    )
    sections.append(
        section(
            "Peers: the targets of issue 11 (ratios measured in this run)",
            table(["figure", "value", "target", "met"], target_rows, digits=2),
            "`sandcastle run` is a fresh process (imports, runtime start, one run, archive, exit), playbook model, "
            "its own local E2B server.",
        )
    )
    return "\n\n".join(sections)


def _ok(value: float, limit: float) -> str:
    return "yes" if value <= limit else "no"


if __name__ == "__main__":
    print(report(quick="--quick" in sys.argv))
