"""Values too large for where they are recorded: one rule for every value a run records.

``keep_value`` is the rule: a value is kept in its transcript event up to a limit (head and tail,
with its byte count and ``truncated``); when it is clipped, or is not valid UTF-8, its exact bytes
go to S3 and the kept form carries ``full_output: s3://…``. Tool outputs are kept this way at
``OUTPUT_LIMIT_BYTES`` (``tools/base.py``). A model reply's text and tool-call arguments are kept
whole unless the assistant event would not fit its DynamoDB item: then ``fit_reply`` keeps the
largest of them this way until it fits, and ``RunTool`` reads spilled arguments back from S3.

Requests (instructions, playbooks) are not spilled: the model reads them every turn, so a request
too large for its item is refused naming the field (``store/item_size.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sandcastle.runs.records import KeptValue
from sandcastle.runs.transcript import AssistantData

#: What an event's ``data`` may take of its item (DynamoDB's limit is 400 KB, keys and attributes included).
EVENT_DATA_BUDGET_BYTES = 300 * 1024

#: What a run keeps of its answer in the run item and END event (the whole answer is in the transcript).
RESULT_LIMIT_BYTES = 64 * 1024

Saver = Callable[[str, bytes], str]
"""Stores a whole value under a name; returns where it lives (``s3://bucket/key``)."""


def clip_text(data: bytes, limit: int) -> dict[str, Any]:
    """Decode a value for the transcript: head and tail within ``limit`` bytes, flags for what was lost.

    Bytes that are not valid UTF-8 are replaced (and flagged), never a crash.
    """
    total = len(data)
    truncated = total > limit
    if truncated:
        head = data[: limit // 2]
        tail = data[-(limit - len(head)) :]
        omitted = total - len(head) - len(tail)
        text = (
            head.decode("utf-8", errors="replace")
            + f"\n… [{omitted} bytes omitted] …\n"
            + tail.decode("utf-8", errors="replace")
        )
    else:
        text = data.decode("utf-8", errors="replace")
    try:
        data.decode("utf-8")
        binary = False
    except UnicodeDecodeError:
        binary = True
    result: dict[str, Any] = {"text": text, "bytes": total}
    if truncated:
        result["truncated"] = True
    if binary:
        result["not_utf8"] = True
    return result


def keep_value(name: str, data: bytes, limit: int, save: Saver | None) -> dict[str, Any]:
    """The transcript's form of a value: clipped to ``limit``, and — when clipped or not UTF-8 — the
    exact bytes saved whole under ``name``, with the pointer in ``full_output``."""
    kept = clip_text(data, limit)
    if save is not None and (kept.get("truncated") or kept.get("not_utf8")):
        kept["full_output"] = save(name, data)
    return kept


def event_saver(objects: Any, run_id: str, event_key: str) -> Saver:
    """Saves whole values next to the run's files, under a key derived from the event's: a retry overwrites."""

    def save(name: str, data: bytes) -> str:
        key = f"runs/{run_id}/outputs/{event_key.removeprefix('EVT#').replace('#', '-')}-{name}"
        objects.put(key, data)
        return f"s3://{objects.bucket}/{key}"

    return save


def read_saved(objects: Any, pointer: str) -> bytes:
    """The bytes a ``full_output`` pointer of this bucket names."""
    prefix = f"s3://{objects.bucket}/"
    if not pointer.startswith(prefix):
        raise ValueError(f"{pointer} is not in s3://{objects.bucket}")
    return objects.get(pointer.removeprefix(prefix))


def data_size(data: Any) -> int:
    """The bytes ``data`` (a JSON value, or an event payload model) takes in its event item (as JSON text)."""
    if hasattr(data, "model_dump_json"):
        return len(data.model_dump_json(exclude_none=True).encode())
    return len(json.dumps(data, ensure_ascii=False).encode())


def fit_reply(data: AssistantData, *, limit: int, save: Saver, budget: int = EVENT_DATA_BUDGET_BYTES) -> AssistantData:
    """An assistant event's ``data`` that fits its item: while it does not, the largest of the reply's
    text and tool-call arguments is kept by ``keep_value`` (clipped, saved whole, a pointer).

    A kept tool call's ``arguments`` becomes the clipped text and ``arguments_kept`` holds the rest of
    the kept form (``bytes``, ``truncated``, ``full_output``); a kept text's rest is ``text_kept``.
    Raises ``ValueError`` when even every value kept this way does not fit.
    """
    data = data.model_copy(update={"tool_calls": [call.model_copy() for call in data.tool_calls]})
    while data_size(data) > budget:
        candidates: list[tuple[int, str, int]] = [
            (len(call.arguments.encode()), "arguments", index)
            for index, call in enumerate(data.tool_calls)
            if not call.arguments_kept
        ]
        if data.text and not data.text_kept:
            candidates.append((len(data.text.encode()), "text", -1))
        if not candidates:
            raise ValueError(f"the reply takes {data_size(data)} bytes even with every value clipped")
        _, what, index = max(candidates)
        if what == "text":
            kept = keep_value("text", (data.text or "").encode(), limit, save)
            data.text = kept.pop("text")
            data.text_kept = KeptValue.model_validate(kept)
        else:
            call = data.tool_calls[index]
            kept = keep_value(f"call{index}-arguments", call.arguments.encode(), limit, save)
            call.arguments = kept.pop("text")
            call.arguments_kept = KeptValue.model_validate(kept)
    return data
