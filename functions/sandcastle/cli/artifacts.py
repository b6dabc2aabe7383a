"""``sandcastle artifacts``: a run's artifacts, from a running server's API, else this machine's run archive."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


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
            print(f"sandcastle: {client.base_url}: {error}", file=sys.stderr)
            return 1
        for artifact in listing["artifacts"]:
            print(f"{artifact['name']}  {artifact['size']} bytes  sha256 {artifact['sha256']}  {artifact['url']}")
            if args.download:
                target = args.download / artifact["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                with urllib.request.urlopen(artifact["url"], timeout=60) as response:  # noqa: S310 - our own URL
                    target.write_bytes(response.read())
        return 0
    run = archived_run(home, args.run_id)
    if run is None:
        print(
            f"sandcastle: no run {args.run_id} on this machine ({archive_dir(home, args.run_id)}) "
            "and no server running (sandcastle serve)",
            file=sys.stderr,
        )
        return 1
    source = archive_dir(home, run.run_id) / "artifacts"
    for artifact in run.artifacts:
        print(f"{artifact.name}  {artifact.size} bytes  sha256 {artifact.sha256}  {source / artifact.name}")
        if args.download:
            target = args.download / artifact.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / artifact.name, target)
    return 0
