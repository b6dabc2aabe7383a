"""``sandcastle completion bash|zsh``: a shell completion script made from the parser itself.

Why not argcomplete: it would run Python (and import the CLI) at every Tab press, and it would be a
dependency of the package the Lambdas ship; the words to complete are the parser's commands and
options, which a static script generated from the same parser carries as well.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_completion_command(commands: Any) -> None:
    completion = commands.add_parser("completion", help="print a shell completion script (bash or zsh)")
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(command=_completion_command)


def _completion_command(args: argparse.Namespace) -> int:
    from sandcastle.cli import _parser

    print(completion_script(_parser(), args.shell))
    return 0


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash function completing ``sandcastle``'s commands and their options (zsh loads it through bashcompinit)."""
    cases = []
    for path, words in sorted(_words(parser, "").items()):
        cases.append(f'        "{path}") words="{" ".join(words)}" ;;')
    body = "\n".join(cases)
    script = f"""_sandcastle() {{
    local cur path="" word i words
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        case " $(_sandcastle_words "$path") " in *" $word "*) path="$path $word" ;; esac
    done
    COMPREPLY=($(compgen -W "$(_sandcastle_words "$path")" -- "$cur"))
}}
_sandcastle_words() {{
    case "$1" in
{body}
    esac
    echo "$words"
}}
complete -o default -F _sandcastle sandcastle
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def _words(parser: argparse.ArgumentParser, path: str) -> dict[str, list[str]]:
    """Each command path ("", " runs", " runs list") and the words that may follow it."""
    words: list[str] = []
    found: dict[str, list[str]] = {}
    for action in parser._actions:  # argparse has no public walk over its tree
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                found.update(_words(sub, f"{path} {name}"))
        else:
            words.extend(action.option_strings)
            if action.choices and not action.option_strings:
                words.extend(str(choice) for choice in action.choices)
    found[path] = words
    return found
