"""``sandcastle keys create | revoke``: against a deployed stack's table, else a running ``serve``."""

from __future__ import annotations

import argparse
from typing import Any

from sandcastle.cli import output


def add_keys_command(commands: Any) -> None:
    keys = commands.add_parser("keys", help="create or revoke API keys (of a running serve, or a deployed stack)")
    key_commands = keys.add_subparsers(required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create an API key for a tenant and print it (once)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    revoke = key_commands.add_parser("revoke", help="revoke an API key by its id")
    revoke.add_argument("key_id", help="the key's id (key_...), as create printed it")
    for sub in (create, revoke):
        target = sub.add_mutually_exclusive_group()
        target.add_argument("--table", help="the runs table of a deployed stack (uses your AWS credentials)")
        target.add_argument("--stack", help="a deployed stack's name: its RunsTableName output is used")
    create.set_defaults(command=_keys_create_command)
    revoke.set_defaults(command=_keys_revoke_command)


def _keys_create_command(args: argparse.Namespace) -> int:
    return _keys_command(args, create=True)


def _keys_revoke_command(args: argparse.Namespace) -> int:
    return _keys_command(args, create=False)


def _keys_command(args: argparse.Namespace, *, create: bool) -> int:
    """Against a deployed stack's table (``--table``/``--stack``), else the running ``serve``'s admin path."""
    if args.table or args.stack:
        from sandcastle.store.keys import ApiKeyStore, stack_table_name

        keys = ApiKeyStore(args.table or stack_table_name(args.stack))
        try:
            answer = keys.create(args.tenant).model_dump(mode="json") if create else keys.revoke(args.key_id)
        except ValueError as error:  # not a tenant name
            return output.fail(f"--tenant: {error}", output.Exit.USAGE)
        if answer is None:
            return output.fail(f"no API key {args.key_id}", output.Exit.USAGE)
        answer = answer if isinstance(answer, dict) else answer.model_dump(mode="json")
    else:
        from sandcastle.client import ApiError, SandcastleClient, read_serve_state
        from sandcastle.local.runtime import default_home

        state = read_serve_state(default_home().resolve())
        if state is None:
            return output.fail(
                "no local server: start `sandcastle serve` (same SANDCASTLE_HOME), "
                "or pass --table/--stack for a deployed stack",
                output.Exit.UNREACHABLE,
            )
        client = SandcastleClient(state["url"])
        try:
            if create:
                answer = client.create_key(args.tenant, state["admin_token"])
            else:
                answer = client.revoke_key(args.key_id, state["admin_token"])
        except (ApiError, OSError) as error:
            return output.failure(error)
    if create:
        output.say(f"API key for tenant {answer['tenant']} ({answer['key_id']}), shown this once:")
        output.data(answer, [answer["key"]])
    else:
        output.data(answer, [f"revoked {answer['key_id']} (tenant {answer['tenant']})"])
    return 0
