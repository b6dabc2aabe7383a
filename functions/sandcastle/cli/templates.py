"""``sandcastle templates``: build, list and delete the local sandbox server's templates.

sandcastle templates build python-app --from ./app --start-cmd "python3 -m http.server 8000"

A template is a tree of files (a directory, or an image tarball ``.tar``/``.tar.gz``) copied into
``/home/user`` of every sandbox created from it, plus an optional start command run in the
background when it starts; a run picks it with ``sandbox.template`` (``--template``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sandcastle.cli.output import Exit, data, fail, table


def add_templates_command(commands: Any) -> None:
    templates = commands.add_parser("templates", help="build, list and delete local sandbox templates")
    actions = templates.add_subparsers(required=True, metavar="ACTION")
    build = actions.add_parser("build", help="prepare a template from a directory or an image tarball")
    build.add_argument("name", help="the template's name (a-z 0-9 _ -): what runs ask for as sandbox.template")
    build.add_argument("--from", dest="source", type=Path, required=True, help="a directory or a .tar/.tar.gz")
    build.add_argument("--start-cmd", help="started in the background in every new sandbox of this template")
    build.set_defaults(command=_build_command)
    listing = actions.add_parser("list", help="the templates and snapshots the local sandbox server knows")
    listing.set_defaults(command=_list_command)
    delete = actions.add_parser("delete", help="delete a template or snapshot")
    delete.add_argument("name")
    delete.set_defaults(command=_delete_command)


def _store() -> Any:
    from sandcastle.e2b_server.templates import TemplateStore
    from sandcastle.local.runtime import default_home

    return TemplateStore(default_home().resolve() / "templates")


def _build_command(args: argparse.Namespace) -> int:
    from sandcastle.errors import InvalidSandboxRequest

    store = _store()
    try:
        info = store.build(args.name, args.source, start_cmd=args.start_cmd)
    except InvalidSandboxRequest as error:
        return fail(str(error), Exit.USAGE)
    data(
        _document(info) | {"path": str(store.root / info.template_id)},
        [
            f"template {info.template_id} built in {store.root / info.template_id}",
            f'create sandboxes from it with Sandbox.create("{info.template_id}") or a run\'s --template',
        ],
    )
    return 0


def _document(info: Any) -> dict[str, Any]:
    return {
        "template_id": info.template_id,
        "kind": info.kind,
        "created_at": info.created_at.isoformat(timespec="seconds"),
        "start_cmd": info.start_cmd,
        "names": list(info.names),
    }


def _list_command(args: argparse.Namespace) -> int:
    infos = _store().list()
    table(
        {"templates": [_document(info) for info in infos]},
        ["NAME", "KIND", "CREATED", "ALSO NAMED", "START COMMAND"],
        (
            [
                info.template_id,
                info.kind,
                info.created_at.isoformat(timespec="seconds"),
                ", ".join(info.names) or None,
                info.start_cmd,
            ]
            for info in infos
        ),
    )
    return 0


def _delete_command(args: argparse.Namespace) -> int:
    if not _store().delete(args.name):
        return fail(f"no template or snapshot named {args.name}", Exit.USAGE)
    data({"deleted": args.name}, [f"deleted {args.name}"])
    return 0
