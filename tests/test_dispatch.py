"""The dispatcher on its own (msgscript.dispatch): the in-memory store, a stub executor and locks written here.

Every failure of a run becomes an error Result with the text docs/decisions.md and docs/clustering.md give it,
and the outcome the metrics count; a subject without scripts, or a store that cannot answer, is the Reply's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest

from msgscript.dispatch import _BACKSTOP_MARGIN_S, Dispatcher
from msgscript.errors import LockError, NoScripts, ScriptError, StoreError
from msgscript.executors.base import Executor, RunContext
from msgscript.locks import Lock, NoLock
from msgscript.message import Message, Reply, Result
from msgscript.metrics import Metrics, Outcome
from msgscript.script import Script
from msgscript.store.memory_store import MemoryStore

SUBJECT = "funcs.test"
TIMEOUT_S = 5.0
"""The dispatcher's default script timeout: far longer than any test that does not time out takes."""
SHORT_TIMEOUT_S = 0.05

Behaviour = Callable[[Script, Message, RunContext], Awaitable[Result]]


async def echo(script: Script, message: Message, ctx: RunContext) -> Result:
    return Result(payload=script.name.encode() + b":" + message.payload)


class StubExecutor:
    """An Executor whose runs do what the test says (echo by default); it records every run."""

    name: ClassVar[str] = "stub"

    def __init__(self, behaviour: Behaviour = echo) -> None:
        self.behaviour = behaviour
        self.runs: list[tuple[Script, Message, RunContext]] = []

    async def run(self, script: Script, message: Message, ctx: RunContext) -> Result:
        self.runs.append((script, message, ctx))
        return await self.behaviour(script, message, ctx)


class RefusingLock:
    """A lock never had in time: `hold` yields False, as EtcdLock does when the wait reaches the timeout."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, float]] = []

    @contextlib.asynccontextmanager
    async def hold(self, key: str, timeout_s: float) -> AsyncIterator[bool]:
        self.asked.append((key, timeout_s))
        yield False


class BrokenLock:
    """A lock whose backend fails: `hold` raises LockError, as EtcdLock does when etcd cannot be reached."""

    @contextlib.asynccontextmanager
    async def hold(self, key: str, timeout_s: float) -> AsyncIterator[bool]:
        raise LockError(f"failed to get lock on key {key}: etcd unreachable")
        yield True  # makes this a generator; never reached


class SlowLock:
    """A lock granted after `wait_s`; it records when it was held and released."""

    def __init__(self, wait_s: float = 0.0) -> None:
        self.wait_s = wait_s
        self.events: list[str] = []

    @contextlib.asynccontextmanager
    async def hold(self, key: str, timeout_s: float) -> AsyncIterator[bool]:
        await asyncio.sleep(self.wait_s)
        self.events.append(f"held {key}")
        try:
            yield True
        finally:
            self.events.append(f"released {key}")


class BrokenStore(MemoryStore):
    """A store that cannot answer which scripts a subject has."""

    async def scripts_for(self, subject: str) -> list[Script]:
        raise StoreError("etcd unreachable")

    def scripts_now(self, subject: str) -> list[Script]:
        raise StoreError("etcd unreachable")


def stub_script(name: str = "one", **fields: Any) -> Script:
    return Script(subject=SUBJECT, name=name, content="-- run by the stub", executor_header="stub", **fields)


def message(payload: bytes = b"John") -> Message:
    return Message(subject=SUBJECT, payload=payload)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(in_flight=lambda: 0, in_flight_limit=1, scripts_loaded=lambda: 0, nats_reconnects=lambda: 0)


def runs(metrics: Metrics, script: Script, outcome: Outcome) -> float:
    """How many runs of `script` the metrics counted with this outcome."""
    labels = {"subject": script.subject, "name": script.name, "executor": script.executor, "outcome": outcome}
    return metrics.registry.get_sample_value("msgscript_executions_total", labels) or 0.0


def make_dispatcher(
    executor: Executor,
    *scripts: Script,
    store: MemoryStore | None = None,
    lock: Lock | None = None,
    metrics: Metrics | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Dispatcher:
    """A dispatcher with `executor` as "stub", over `store` (a fresh MemoryStore by default) holding `scripts`."""
    store = MemoryStore() if store is None else store
    for script in scripts:
        store.add(script)
    lock = NoLock() if lock is None else lock
    return Dispatcher(store, {"stub": executor}, lock, script_timeout_s=timeout_s, metrics=metrics)


# the run and its context


async def test_the_executors_result_is_the_reply(metrics: Metrics) -> None:
    executor = StubExecutor()
    script = stub_script()
    reply = await make_dispatcher(executor, script, metrics=metrics).dispatch(message())
    assert reply == Reply(results=(Result(payload=b"one:John"),))
    assert runs(metrics, script, "ok") == 1


async def test_the_executor_gets_the_script_the_message_and_the_deadline() -> None:
    executor = StubExecutor()
    script = stub_script()
    before = time.monotonic()
    await make_dispatcher(executor, script).dispatch(message())
    after = time.monotonic()
    [(ran, got, ctx)] = executor.runs
    assert (ran, got) == (script, message())
    assert ctx.timeout_s == TIMEOUT_S
    assert before + TIMEOUT_S <= ctx.deadline <= after + TIMEOUT_S
    assert ctx.libraries == ()


async def test_the_scripts_own_timeout_wins_over_the_default() -> None:
    executor = StubExecutor()
    await make_dispatcher(executor, stub_script(timeout_s=2.5)).dispatch(message())
    [(_, _, ctx)] = executor.runs
    assert ctx.timeout_s == 2.5
    assert ctx.deadline - time.monotonic() <= 2.5


async def test_an_error_result_is_counted_as_an_error(metrics: Metrics) -> None:
    async def fail(script: Script, message: Message, ctx: RunContext) -> Result:
        return Result(http_code=500, error="bad input")

    script = stub_script()
    reply = await make_dispatcher(StubExecutor(fail), script, metrics=metrics).dispatch(message())
    assert reply == Reply(results=(Result(http_code=500, error="bad input"),))
    assert (runs(metrics, script, "ok"), runs(metrics, script, "error")) == (0, 1)


async def test_unknown_executor_is_an_error_result(metrics: Metrics) -> None:
    executor = StubExecutor()
    script = Script(subject=SUBJECT, name="old", content="", executor_header="cobol")
    reply = await make_dispatcher(executor, script, metrics=metrics).dispatch(message())
    assert reply == Reply(results=(Result.failure("unknown executor 'cobol'"),))
    assert executor.runs == []
    assert runs(metrics, script, "error") == 1


# libraries


async def test_libraries_reach_the_executor_in_require_order() -> None:
    store = MemoryStore()
    store.add_library("b", "-- b")
    store.add_library("a", "-- a")
    executor = StubExecutor()
    await make_dispatcher(executor, stub_script(libraries=("b", "a")), store=store).dispatch(message())
    [(_, _, ctx)] = executor.runs
    assert ctx.libraries == ("-- b", "-- a")


async def test_a_missing_library_is_skipped_by_a_lenient_store() -> None:
    store = MemoryStore()
    store.add_library("a", "-- a")
    executor = StubExecutor()
    reply = await make_dispatcher(executor, stub_script(libraries=("nope", "a")), store=store).dispatch(message())
    assert reply == Reply(results=(Result(payload=b"one:John"),))
    assert executor.runs[0][2].libraries == ("-- a",)


async def test_a_missing_library_of_a_strict_store_is_an_error_result(metrics: Metrics) -> None:
    executor = StubExecutor()
    script = stub_script(libraries=("nope",))
    store = MemoryStore(missing_libraries_are_errors=True)
    reply = await make_dispatcher(executor, script, store=store, metrics=metrics).dispatch(message())
    assert reply == Reply(results=(Result.failure("failed to read librairies: library 'nope' not found"),))
    assert executor.runs == []
    assert runs(metrics, script, "error") == 1


# the lock


async def test_a_locked_script_runs_while_the_lock_is_held() -> None:
    lock = SlowLock()

    async def record(script: Script, message: Message, ctx: RunContext) -> Result:
        lock.events.append("run")
        return await echo(script, message, ctx)

    reply = await make_dispatcher(StubExecutor(record), stub_script(lock=True), lock=lock).dispatch(message())
    assert reply == Reply(results=(Result(payload=b"one:John"),))
    assert lock.events == ["held one_lock", "run", "released one_lock"]


async def test_a_script_without_lock_does_not_take_it() -> None:
    lock = SlowLock()
    await make_dispatcher(StubExecutor(), stub_script(), lock=lock).dispatch(message())
    assert lock.events == []


async def test_the_lock_wait_counts_against_the_deadline() -> None:
    executor = StubExecutor()
    script = stub_script(lock=True, timeout_s=2.0)
    started = time.monotonic()
    await make_dispatcher(executor, script, lock=SlowLock(wait_s=0.2)).dispatch(message())
    [(_, _, ctx)] = executor.runs
    assert started + 2.0 <= ctx.deadline < started + 2.0 + 0.2


async def test_a_refused_lock_is_a_timeout_result(metrics: Metrics) -> None:
    executor = StubExecutor()
    lock = RefusingLock()
    script = stub_script(lock=True, timeout_s=1.5)
    reply = await make_dispatcher(executor, script, lock=lock, metrics=metrics).dispatch(message())
    assert reply == Reply(results=(Result.failure("failed to get lock: timed out after 1.5s"),))
    assert lock.asked == [("one_lock", 1.5)]
    assert executor.runs == []
    assert (runs(metrics, script, "timeout"), runs(metrics, script, "error")) == (1, 0)


async def test_a_lock_error_is_an_error_result_with_its_text(metrics: Metrics) -> None:
    executor = StubExecutor()
    script = stub_script(lock=True)
    reply = await make_dispatcher(executor, script, lock=BrokenLock(), metrics=metrics).dispatch(message())
    assert reply == Reply(results=(Result.failure("failed to get lock on key one_lock: etcd unreachable"),))
    assert executor.runs == []
    assert runs(metrics, script, "error") == 1


# failures and timeouts


async def test_a_script_error_is_an_error_result_logged_without_traceback(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail(script: Script, message: Message, ctx: RunContext) -> Result:
        raise ScriptError("<string>:1: boom")

    script = stub_script()
    with caplog.at_level(logging.INFO, logger="msgscript.dispatch"):
        reply = await make_dispatcher(StubExecutor(fail), script, metrics=metrics).dispatch(message())
    assert reply == Reply(results=(Result.failure("<string>:1: boom"),))
    assert runs(metrics, script, "error") == 1
    [record] = [r for r in caplog.records if r.name == "msgscript.dispatch"]
    assert (record.levelno, record.exc_info) == (logging.INFO, None)


async def test_an_unexpected_exception_is_an_internal_error_result_logged_with_traceback(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(script: Script, message: Message, ctx: RunContext) -> Result:
        raise RuntimeError("bug in the executor")

    script = stub_script()
    with caplog.at_level(logging.INFO, logger="msgscript.dispatch"):
        reply = await make_dispatcher(StubExecutor(crash), script, metrics=metrics).dispatch(message())
    assert reply == Reply(results=(Result.failure("internal error: bug in the executor"),))
    assert runs(metrics, script, "error") == 1
    [record] = [r for r in caplog.records if r.name == "msgscript.dispatch"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


async def test_a_timeout_reported_by_the_executor_is_a_timeout_result(metrics: Metrics) -> None:
    async def overrun(script: Script, message: Message, ctx: RunContext) -> Result:
        raise ctx.timed_out()

    script = stub_script()
    dispatcher = make_dispatcher(StubExecutor(overrun), script, metrics=metrics, timeout_s=SHORT_TIMEOUT_S)
    reply = await dispatcher.dispatch(message())
    assert reply == Reply(results=(Result.failure("script timed out after 50ms"),))
    assert runs(metrics, script, "timeout") == 1


async def test_an_executor_ignoring_its_deadline_is_cut_off_after_the_margin(metrics: Metrics) -> None:
    cancelled = asyncio.Event()

    async def ignore_deadline(script: Script, message: Message, ctx: RunContext) -> Result:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Result(payload=b"too late")

    script = stub_script()
    dispatcher = make_dispatcher(StubExecutor(ignore_deadline), script, metrics=metrics, timeout_s=SHORT_TIMEOUT_S)
    started = time.monotonic()
    reply = await dispatcher.dispatch(message())
    elapsed = time.monotonic() - started
    assert reply == Reply(results=(Result.failure("script timed out after 50ms"),))
    assert cancelled.is_set()
    assert SHORT_TIMEOUT_S + _BACKSTOP_MARGIN_S <= elapsed < SHORT_TIMEOUT_S + _BACKSTOP_MARGIN_S + 1.0
    assert runs(metrics, script, "timeout") == 1


async def test_a_cancelled_run_is_counted_as_cancelled(metrics: Metrics) -> None:
    started = asyncio.Event()

    async def hang(script: Script, message: Message, ctx: RunContext) -> Result:
        started.set()
        await asyncio.sleep(60)
        return Result()

    script = stub_script()
    task = asyncio.create_task(make_dispatcher(StubExecutor(hang), script, metrics=metrics).dispatch(message()))
    await asyncio.wait_for(started.wait(), TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs(metrics, script, "cancelled") == 1


# several scripts


async def test_the_scripts_of_a_subject_run_concurrently() -> None:
    both_running = asyncio.Event()
    running = 0

    async def meet(script: Script, message: Message, ctx: RunContext) -> Result:
        # Each run waits for the other: run one after the other, they would never finish.
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        await both_running.wait()
        return await echo(script, message, ctx)

    dispatcher = make_dispatcher(StubExecutor(meet), stub_script("one"), stub_script("two"))
    async with asyncio.timeout(TIMEOUT_S):
        reply = await dispatcher.dispatch(message())
    assert reply.error == ""
    assert sorted(result.payload or b"" for result in reply.results or ()) == [b"one:John", b"two:John"]


async def test_one_failing_script_does_not_fail_the_others() -> None:
    async def fail_one(script: Script, message: Message, ctx: RunContext) -> Result:
        if script.name == "bad":
            raise RuntimeError("bug")
        return await echo(script, message, ctx)

    reply = await make_dispatcher(StubExecutor(fail_one), stub_script("bad"), stub_script("good")).dispatch(message())
    assert sorted((r.error, r.payload) for r in reply.results or ()) == [
        ("", b"good:John"),
        ("internal error: bug", None),
    ]


async def test_durable_scripts_do_not_run_for_a_message() -> None:
    executor = StubExecutor()
    dispatcher = make_dispatcher(executor, stub_script("core"), stub_script("queued", durable=True))
    reply = await dispatcher.dispatch(message())
    assert reply == Reply(results=(Result(payload=b"core:John"),))
    assert [script.name for script, _, _ in executor.runs] == ["core"]


# finding the scripts


async def test_scripts_for_leaves_out_durable_scripts() -> None:
    core, queued = stub_script("core"), stub_script("queued", durable=True)
    assert await make_dispatcher(StubExecutor(), core, queued).scripts_for(SUBJECT) == [core]


async def test_scripts_for_a_subject_without_scripts_raises_no_scripts() -> None:
    with pytest.raises(NoScripts) as raised:
        await make_dispatcher(StubExecutor(), stub_script()).scripts_for("funcs.other")
    assert (raised.value.subject, raised.value.durable) == ("funcs.other", False)
    assert str(raised.value) == "script not found for subject: funcs.other"


async def test_scripts_for_a_subject_with_only_durable_scripts_says_so() -> None:
    with pytest.raises(NoScripts) as raised:
        await make_dispatcher(StubExecutor(), stub_script(durable=True)).scripts_for(SUBJECT)
    assert (raised.value.subject, raised.value.durable) == (SUBJECT, True)


async def test_scripts_for_passes_a_store_error_on() -> None:
    with pytest.raises(StoreError, match="^etcd unreachable$"):
        await make_dispatcher(StubExecutor(), store=BrokenStore()).scripts_for(SUBJECT)


async def test_dispatch_without_scripts_is_the_replys_error() -> None:
    executor = StubExecutor()
    reply = await make_dispatcher(executor, stub_script(durable=True)).dispatch(message())
    assert reply == Reply(error=f"failed to get scripts for subject: script not found for subject: {SUBJECT}")
    assert executor.runs == []


async def test_dispatch_turns_a_store_error_into_the_replys_error() -> None:
    reply = await make_dispatcher(StubExecutor(), store=BrokenStore()).dispatch(message())
    assert reply == Reply(error="failed to get scripts for subject: etcd unreachable")


# answering without waiting (dispatch_now)


class InlineStub(StubExecutor):
    """A StubExecutor that can also finish runs at once: `run_now` answers with `now` (None sends the run on
    to `run`); it records those runs apart."""

    def __init__(self, now: Callable[[Script, Message, RunContext], Result | None], behaviour: Behaviour = echo):
        super().__init__(behaviour)
        self.now = now
        self.runs_now: list[Script] = []

    def run_now(self, script: Script, message: Message, ctx: RunContext) -> Result | None:
        self.runs_now.append(script)
        return self.now(script, message, ctx)


def echo_now(script: Script, message: Message, ctx: RunContext) -> Result:
    return Result(payload=b"now:" + message.payload)


async def test_a_run_that_finishes_at_once_is_answered_without_waiting(metrics: Metrics) -> None:
    executor = InlineStub(echo_now)
    script = stub_script()
    reply = make_dispatcher(executor, script, metrics=metrics).dispatch_now(message())
    assert reply == Reply(results=(Result(payload=b"now:John"),))
    assert (executor.runs_now, executor.runs) == ([script], [])
    assert runs(metrics, script, "ok") == 1


async def test_a_run_that_has_to_wait_is_left_to_dispatch(metrics: Metrics) -> None:
    executor = InlineStub(lambda script, message, ctx: None)
    script = stub_script()
    dispatcher = make_dispatcher(executor, script, metrics=metrics)
    assert dispatcher.dispatch_now(message()) is None
    assert runs(metrics, script, "ok") == 0  # nothing ran yet
    assert await dispatcher.dispatch(message()) == Reply(results=(Result(payload=b"one:John"),))
    assert runs(metrics, script, "ok") == 1


@pytest.mark.parametrize(
    "scripts",
    [
        [stub_script(lock=True)],
        [stub_script(libraries=("a",))],
        [stub_script("one"), stub_script("two")],
        [],
    ],
    ids=["lock", "libraries", "two scripts", "no script"],
)
async def test_what_may_wait_is_left_to_dispatch(scripts: list[Script]) -> None:
    executor = InlineStub(echo_now)
    assert make_dispatcher(executor, *scripts).dispatch_now(message()) is None
    assert executor.runs_now == []


async def test_an_executor_without_run_now_is_left_to_dispatch() -> None:
    executor = StubExecutor()
    assert make_dispatcher(executor, stub_script()).dispatch_now(message()) is None
    assert executor.runs == []


async def test_a_failed_run_now_is_the_same_error_result_as_in_dispatch(metrics: Metrics) -> None:
    def fail(script: Script, message: Message, ctx: RunContext) -> Result:
        raise ScriptError("error executing Lua script: boom")

    script = stub_script()
    reply = make_dispatcher(InlineStub(fail), script, metrics=metrics).dispatch_now(message())
    assert reply == Reply(results=(Result(error="error executing Lua script: boom"),))
    assert runs(metrics, script, "error") == 1


async def test_a_store_failure_is_left_to_dispatch() -> None:
    executor = InlineStub(echo_now)
    dispatcher = make_dispatcher(executor, stub_script(), store=BrokenStore())
    assert dispatcher.dispatch_now(message()) is None
    reply = await dispatcher.dispatch(message())
    assert reply.error == "failed to get scripts for subject: etcd unreachable"
