"""The container's transcript cache: it saves reads and never hides an event.

Each test writes events the way the run loop does (through ``RunStore.append_event``) in the orders
retries and parallel tool calls allow, then checks that ``read_transcript`` answers exactly what a
full read of the table answers (``list_events``).
"""

from __future__ import annotations

from sandcastle.runs.records import RunError
from sandcastle.runs.transcript import (
    AssistantData,
    SystemData,
    ToolResultData,
    UserData,
    assistant_event,
    error_event,
    system_event,
    tool_result_event,
    user_event,
)
from sandcastle.store.dynamo import RunStore
from sandcastle.store.transcript_cache import ReadEvent, TranscriptCache
from sandcastle.wiring import Dependencies


def _opening(store: RunStore, run_id: str) -> None:
    store.append_event(system_event(run_id, SystemData(text="system")))
    store.append_event(user_event(run_id, UserData(text="do it")))


def _turn(store: RunStore, run_id: str, step: int, *, results: tuple[int, ...] = (0,)) -> None:
    store.append_event(assistant_event(run_id, step, AssistantData(text=f"turn {step}")))
    for index in results:
        _result(store, run_id, step, index)


def _result(store: RunStore, run_id: str, step: int, index: int) -> None:
    store.append_event(tool_result_event(run_id, step, index, ToolResultData(tool_call_id=f"call_{step}_{index}")))


def _keys(events: list) -> list[str]:
    return [event.key for event in events]


def test_a_read_again_queries_only_the_unsealed_tail_and_answers_the_whole_transcript(deps: Dependencies) -> None:
    store = deps.store
    _opening(store, "r1")
    for step in range(1, 6):
        _turn(store, "r1", step)
    assert _keys(store.read_transcript("r1")) == _keys(store.list_events("r1"))

    # steps 0-4 are sealed (step 5 was seen); the next read queries from after step 4's last event
    kept, after = store.transcripts.sealed("r1")
    assert after == "EVT#000004#001#tool_result" and len(kept) == 2 + 4 * 2
    _turn(store, "r1", 6)

    assert _keys(store.read_transcript("r1")) == _keys(store.list_events("r1"))


def test_a_tool_result_written_late_with_a_lower_key_is_not_missed(deps: Dependencies) -> None:
    # Given turn 1 made two calls and the second's result arrived first (parallel tool calls)
    store = deps.store
    _opening(store, "r1")
    _turn(store, "r1", 1, results=(1,))
    first = store.read_transcript("r1")

    # When the first call's result is written after that read
    _result(store, "r1", 1, 0)

    # Then the next read has it: the newest turn is never kept, so it is queried again
    assert _keys(store.read_transcript("r1")) == _keys(store.list_events("r1"))
    assert len(store.read_transcript("r1")) == len(first) + 1


def test_the_run_end_keys_seal_nothing_and_are_always_read(deps: Dependencies) -> None:
    # Given a failed turn's error recorded while one of its tool calls was still running
    store = deps.store
    _opening(store, "r1")
    _turn(store, "r1", 1, results=(1,))
    store.append_event(error_event("r1", 1, RunError(type="States.TaskFailed", message="one call failed")))
    assert _keys(store.read_transcript("r1"))[-1] == "EVT#999998#000#error"

    # When the late call's result lands after that read
    _result(store, "r1", 1, 0)

    # Then it is read, and so is the error after it
    assert _keys(store.read_transcript("r1")) == _keys(store.list_events("r1"))
    assert "EVT#000001#001#tool_result" in _keys(store.read_transcript("r1"))
    kept, _ = store.transcripts.sealed("r1")
    assert all(not event.key.startswith("EVT#99999") for event in kept)


def test_one_runs_cached_events_are_never_another_runs(deps: Dependencies) -> None:
    store = deps.store
    for run_id in ("r1", "r2"):
        _opening(store, run_id)
        _turn(store, run_id, 1)
        _turn(store, run_id, 2)
        store.read_transcript(run_id)

    assert {event.run_id for event in store.read_transcript("r2")} == {"r2"}
    assert store.read_transcript("r3") == []


# --- the cache alone: its bounds, and reads that race ---


def _read(run_id: str, step: int, position: int, size: int = 100) -> ReadEvent:
    return ReadEvent(
        assistant_event(run_id, step, AssistantData(text="x")).model_copy(
            update={"key": f"EVT#{step:06d}#{position:03d}#assistant"}
        ),
        size,
    )


def test_it_keeps_the_most_recently_read_runs_within_its_run_count() -> None:
    cache = TranscriptCache(max_runs=2)
    for run_id in ("a", "b", "c"):
        cache.add(run_id, None, [_read(run_id, 0, 0), _read(run_id, 1, 0)])
    cache.sealed("b")  # read again: most recent
    cache.add("d", None, [_read("d", 0, 0), _read("d", 1, 0)])

    assert [run_id for run_id in "abcd" if cache.sealed(run_id)[1]] == ["b", "d"]


def test_it_keeps_no_more_bytes_than_its_budget() -> None:
    cache = TranscriptCache(max_bytes=1000)
    cache.add("a", None, [_read("a", 0, 0, size=600), _read("a", 1, 0)])
    cache.add("b", None, [_read("b", 0, 0, size=600), _read("b", 1, 0)])
    assert cache.size <= 1000 and cache.sealed("a") == ([], None) and cache.sealed("b")[1] is not None

    cache.add("huge", None, [_read("huge", 0, 0, size=5000), _read("huge", 1, 0)])  # alone over the budget
    assert cache.size == 0 and cache.sealed("huge") == ([], None)


def test_a_read_that_lost_a_race_to_extend_the_entry_adds_nothing() -> None:
    cache = TranscriptCache()
    opening = [_read("a", 0, 0), _read("a", 0, 1)]
    _, after_one = cache.sealed("a")
    _, after_two = cache.sealed("a")  # two threads read from the start at once
    cache.add("a", after_one, [*opening, _read("a", 1, 0)])
    cache.add("a", after_two, [*opening, _read("a", 1, 0)])

    kept, _ = cache.sealed("a")
    assert [event.key for event in kept] == ["EVT#000000#000#assistant", "EVT#000000#001#assistant"]


def test_a_tail_read_after_its_entry_was_evicted_is_not_kept_as_the_transcript() -> None:
    cache = TranscriptCache(max_runs=1)
    cache.add("a", None, [_read("a", 0, 0), _read("a", 1, 0)])
    _, after = cache.sealed("a")
    cache.add("b", None, [_read("b", 0, 0), _read("b", 1, 0)])  # evicts a

    cache.add("a", after, [_read("a", 1, 0), _read("a", 2, 0)])

    assert cache.sealed("a") == ([], None)
