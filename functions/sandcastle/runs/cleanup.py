"""What every ending of a run does with its sandbox: keep its output files, then kill it.

One place for both, so each ending (finish, fail, cancel, the reaper) tolerates the same things:
a sandbox that is already gone is not an error, and a failure to keep artifacts or to kill never
keeps the run from reaching its terminal status (the reaper kills what a failed kill left).
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_lambda_powertools import Logger

from sandcastle.errors import SandboxGone
from sandcastle.runs.records import Artifact, Run
from sandcastle.wiring import Dependencies

logger = Logger(child=True)


def kill_sandbox(sandbox_id: str | None, deps: Dependencies, *, reraise: bool = False) -> bool:
    """Kill a sandbox; True when this call killed it, False when it was already gone (or there is none).

    Any other failure is logged and answered False (the reaper will kill it), or raised with
    ``reraise`` — for the reaper itself, which counts it.
    """
    if not sandbox_id:
        return False
    try:
        return bool(deps.sandboxes.kill(sandbox_id))
    except SandboxGone:
        return False
    except Exception:
        if reraise:
            raise
        logger.exception("could not kill the sandbox; the reaper will", extra={"sandbox_id": sandbox_id})
        return False


@dataclass(frozen=True)
class KeptArtifacts:
    """The artifacts kept from a run's ``~/output/``, and why none could be, when that failed."""

    artifacts: list[Artifact]
    failure: str | None = None
    """``<error type>: <message>`` (redacted) when the files could not be kept; None when they were."""


def keep_artifacts(run: Run, deps: Dependencies) -> KeptArtifacts:
    """Copy the run's output files to S3 (``export_artifacts``); a failure is logged and returned, never raised.

    For endings that must end the run whatever happens to its files (a failed or overdue run).
    """
    from sandcastle.runs.artifacts import export_artifacts  # here: kill_sandbox's users (cancel, the API) need none

    try:
        return KeptArtifacts(export_artifacts(run, deps))
    except Exception as error:
        logger.exception("could not keep the run's artifacts", extra={"run_id": run.run_id})
        return KeptArtifacts([], failure=f"{type(error).__name__}: {deps.redactor.text(str(error))}")
