"""``sandcastle artifacts``: a run's artifacts, from a running server's API, else this machine's run archive."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sandcastle.cli import output

_HEADERS = ("NAME", "BYTES", "SHA256", "WHERE")


def add_artifacts_command(commands: Any) -> None:
    artifacts = commands.add_parser("artifacts", help="list (and download) a run's artifacts")
    artifacts.add_argument("run_id")
    artifacts.add_argument("--download", type=Path, metavar="DIR", help="copy the files into DIR")
    artifacts.set_defaults(command=_artifacts_command)


def _artifacts_command(args: argparse.Namespace) -> int:
    """List a run's artifacts: from a running server's API, else from this machine's run archive."""
    import shutil
    import urllib.request

    from sandcastle.client import ApiError, find_server
    from sandcastle.local.run_archive import archive_dir, archived_run
    from sandcastle.local.runtime import default_home

    home = default_home()
    server = find_server(home)
    if server is not None:
        client = server[0]
        try:
            listing = client.request("GET", f"/runs/{args.run_id}/artifacts")[1]
        except (ApiError, OSError) as error:
            return output.failure(error, where=f"{client.base_url}: ")
        rows = [(a["name"], a["size"], a["sha256"], a["url"]) for a in listing["artifacts"]]
        output.table(listing, _HEADERS, rows)
        for artifact in listing["artifacts"]:
            if args.download:
                target = args.download / artifact["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                with urllib.request.urlopen(artifact["url"], timeout=60) as response:  # noqa: S310 - our own URL
                    target.write_bytes(response.read())
        return 0
    run = archived_run(home, args.run_id)
    if run is None:
        return output.fail(
            f"no run {args.run_id} on this machine ({archive_dir(home, args.run_id)}) "
            "and no server running (sandcastle serve)",
            output.Exit.USAGE,
        )
    source = archive_dir(home, run.run_id) / "artifacts"
    document = {
        "artifacts": [
            {**artifact.model_dump(mode="json"), "path": str(source / artifact.name)} for artifact in run.artifacts
        ]
    }
    output.table(document, _HEADERS, [(a.name, a.size, a.sha256, source / a.name) for a in run.artifacts])
    for artifact in run.artifacts:
        if args.download:
            target = args.download / artifact.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / artifact.name, target)
    return 0
