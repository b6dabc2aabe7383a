"""What a repository costs a run: submit → end of a one-command playbook run on the local runtime, without a
repository, with one (clone outside the sandbox, copy into ``~/repo``, export ``changes.patch``), and with a push
too — a small repository served by ``git daemon`` on loopback."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from tests.benchmarks import section, table


def report(*, quick: bool = False) -> str:
    from sandcastle.local.runtime import LocalRuntime
    from sandcastle.runs.requests import RunRequest
    from tests.integration.git_servers import git_daemon, make_origin
    from tests.integration.test_repository_runs import PROJECT

    runs = 2 if quick else 5
    saved = {name: os.environ.pop(name) for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL") if name in os.environ}
    rows = []
    try:
        with tempfile.TemporaryDirectory() as temp:
            root = Path(temp)
            make_origin(root / "remotes", PROJECT)
            with git_daemon(root / "remotes") as url, LocalRuntime(home=root / "home") as runtime:
                playbook = [{"tool": "run_command", "arguments": {"command": "echo hi > ~/repo/x.txt; true"}}]
                cases: list[tuple[str, dict]] = [
                    ("no repository", {}),
                    ("repository", {"repository": {"url": f"{url}/origin.git"}}),
                    ("repository + push", {"repository": {"url": f"{url}/origin.git"}, "push": {"branch": "b"}}),
                ]
                for label, fields in cases:
                    times = []
                    for n in range(runs):
                        request = {"instructions": "x", "playbook": playbook, **fields}
                        if "push" in fields:
                            request["push"] = {"branch": f"bench-{n}"}
                        started = time.perf_counter()
                        run = runtime.submit(RunRequest.model_validate(request))
                        run = runtime.wait(run.run_id, timeout_s=120)
                        times.append((time.perf_counter() - started) * 1000)
                        assert run.status.value == "SUCCEEDED", run.error
                    rows.append((label, min(times), statistics.median(times), max(times)))
    finally:
        os.environ.update(saved)
    return section(
        "Runs on a repository (submit → end, one tool call)",
        table(["run", "best ms", "median ms", "worst ms"], rows, digits=0),
        f"{runs} runs each; a {len(PROJECT)}-file repository over git:// on loopback.",
    )
