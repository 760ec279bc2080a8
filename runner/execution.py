"""Executing one claimed run: its actions in order, with templates, retries, timeouts,
cancel and hand-back, keeping `bd_execs` and the state events current.

Every write to the execution is compare-and-set: the broker sets `cancel_requested` on
the same record, and a blind write would erase it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import msgspec

from broker.buckets import Buckets
from broker.records import VersionConflict
from broker.timestamps import now_iso, parse_iso
from broker.types import ActionState, Execution, RunCommand, Task, TaskRuntime
from runner import log_limits, templates
from runner.events import EventStream
from runner.log_limits import Quota
from runner.modules import Module, ModuleContext, validate_params
from runner.process import run_process
from runner.starts import StartCounter
from runner.transient import through_leader_changes

log = logging.getLogger("batchdeck.runner")

PROGRESS_SAVE_INTERVAL = 1.0
"""Seconds between writes of progress to bd_execs (progress events go out at once)."""


class FinishedElsewhere(Exception):
    """The execution became final under us (the broker cancelled it while queued)."""


@dataclass
class Outcome:
    status: str  # an ExecutionStatus
    exit_code: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True
    """False when running it again cannot help (a bad template, a missing module)."""


@dataclass
class ActiveRun:
    """A run this runner holds: what the cancel handler and shutdown reach into."""

    command: RunCommand
    execution: Execution
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    handback: bool = False


@dataclass
class RunEnvironment:
    """What every run of one runner shares."""

    js: Any
    buckets: Buckets
    runner_id: str
    modules: dict[str, Module]
    grace: float
    starts: StartCounter
    inherited: dict[str, str] = field(default_factory=dict)
    """The runner's variables a task's process gets (runner.environment)."""


class RunExecutor:
    def __init__(self, env: RunEnvironment, run: ActiveRun, events: EventStream) -> None:
        self.env = env
        self.run = run
        self.events = events
        self.org = run.command.org
        self._last_progress_save = 0.0

    @property
    def execution(self) -> Execution:
        return self.run.execution

    # ---- persistence ---------------------------------------------------------------

    async def save(self, publish: bool = True) -> None:
        """Compare-and-set the execution, keeping a cancel flag set meanwhile. The lines
        logged before are stored first: whoever reads a final state finds every line."""
        await self.events.flush()
        execs, what = self.env.buckets.execs, f"saving execution {self.execution.id}"
        while True:
            try:
                # Tried again through a leader change: a write that did land comes back
                # as a VersionConflict, handled below.
                self.run.execution = await through_leader_changes(what, lambda: execs.update(
                    self.org, self.execution.id, self.execution, self.execution.version))
                break
            except VersionConflict:
                stored = await through_leader_changes(what, lambda: execs.get(self.org, self.execution.id))
                if stored is None:
                    log.warning("execution %s vanished from bd_execs; writing it again", self.execution.id)
                    self.run.execution = await through_leader_changes(
                        what, lambda: execs.put(self.org, self.execution.id, self.execution))
                    break
                if stored.is_final and not self.execution.is_final:
                    self.run.execution = stored
                    self.run.cancel.set()
                    raise FinishedElsewhere(stored.status) from None
                if stored.cancel_requested and not self.execution.cancel_requested:
                    self.execution.cancel_requested = True
                    self.run.cancel.set()
                self.execution.version = stored.version
        if publish:
            await self.events.state(self.execution)

    async def _runner_line(self, text: str, level: str = "info", action_index: int | None = None) -> None:
        await self.events.log(text, stream="runner", action_index=action_index, level=level)

    # ---- the run -------------------------------------------------------------------

    async def execute(self) -> None:
        """Run every action; leave the execution final (or queued, when handed back)."""
        execution = self.execution
        execution.status, execution.runner_id = "running", self.env.runner_id
        execution.started_at = execution.started_at or now_iso()
        execution.error = None
        # Stored with the first action's start: one write instead of two.
        final = await self._run_actions()
        if self.run.handback:
            await self._hand_back()
            return
        await self._finish(final)

    async def _run_actions(self) -> Outcome:
        """Actions in order; a failure stops the run unless that action continues on
        error; a cancel or timeout always stops it. The run ends as the action that
        stopped it, else as the first that failed, else succeeded."""
        stopped_by: Outcome | None = None
        first_failure: Outcome | None = None
        last_result: dict[str, Any] | None = None
        for index, task in enumerate(self.run.command.tasks):
            action = self.execution.actions[index]
            if stopped_by is not None or self.run.cancel.is_set():
                action.status = "canceled" if self.run.cancel.is_set() else "skipped"
                continue
            outcome = await self._run_action(index, task)
            if outcome.result is not None:
                last_result = outcome.result
            if outcome.status == "succeeded":
                continue
            first_failure = first_failure or outcome
            if outcome.status != "failed" or not self._continues(index):
                stopped_by = outcome
        final = stopped_by or first_failure or Outcome("succeeded")
        if final.status == "succeeded" and self.run.cancel.is_set():
            final = Outcome("canceled", error="canceled between actions")
        final.result = last_result
        return final

    def _continues(self, index: int) -> bool:
        batch = self.run.command.batch
        return bool(batch and batch.actions[index].continue_on_error)

    async def _run_action(self, index: int, task: Task) -> Outcome:
        action = self.execution.actions[index]
        # One quota for the action, whatever its tries (runner.log_limits).
        self.events.quota = Quota(task.log_max_lines or log_limits.DEFAULT_LINES,
                                  task.log_max_bytes or log_limits.DEFAULT_BYTES)
        attempts = 0
        while True:
            attempts += 1
            action.status, action.started_at, action.finished_at = "running", now_iso(), None
            action.exit_code = action.error = None
            await asyncio.gather(self.save(), self.env.starts.started(self.org, task.id))
            outcome = await self._run_once(index, task)
            action.status, action.exit_code, action.error = outcome.status, outcome.exit_code, outcome.error
            action.finished_at = now_iso()
            if outcome.status != "failed" or not outcome.retryable or attempts > task.retries or self.run.cancel.is_set():
                break
            delay = task.retry_backoff_sec * (2 ** (attempts - 1))
            await self._runner_line(
                f"action {index} attempt {attempts} failed ({outcome.error or 'exit ' + str(outcome.exit_code)}); "
                f"retry {attempts} of {task.retries} in {delay:g} s", "warning", index,
            )
            await self.save()
            try:
                await asyncio.wait_for(self.run.cancel.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if self.run.cancel.is_set():
                outcome = Outcome("canceled", outcome.exit_code, error="canceled while waiting to retry")
                action.status, action.error = outcome.status, outcome.error
                break
        quota = self.events.quota
        if quota.dropped_lines:
            self.execution.log_dropped_lines += quota.dropped_lines
            self.execution.log_dropped_bytes += quota.dropped_bytes
            await self._runner_line(quota.marker(), "warning", index)
        if outcome.status != "succeeded" and outcome.error and not self.run.handback:
            await self._runner_line(f"action {index} {outcome.status}: {outcome.error}", "error", index)
        if index < len(self.run.command.tasks) - 1:
            await self.save()  # the last action's end is stored with the run's end
        return outcome

    async def _run_once(self, index: int, task: Task) -> Outcome:
        if task.kind == "module":
            return await self._run_module(index, task)
        return await self._run_command(index, task)

    # ---- command actions ---------------------------------------------------------

    def _values(self, task: Task) -> dict[str, Any]:
        return {**self.run.command.context, **task.params}

    def _environment(self, task: Task, index: int) -> dict[str, str]:
        return {
            **self.env.inherited,
            **task.env,
            "BATCHDECK_EXECUTION_ID": self.execution.id,
            "BATCHDECK_ACTION_INDEX": str(index),
            "BATCHDECK_ATTEMPT": str(self.execution.attempt),
            "BATCHDECK_ORG": self.org,
        }

    async def _run_command(self, index: int, task: Task) -> Outcome:
        try:
            argv = templates.command_argv(task.command or [], self._values(task), task.shell, task.params)
        except templates.TemplateError as err:
            return Outcome("failed", error=str(err), retryable=False)
        result: dict[str, Any] = {}

        async def sink(stream: str, line: str) -> None:
            if stream == "stdout" and line.startswith("::"):
                if await self._control_line(index, line, result):
                    return
            await self.events.log(line, stream=stream, action_index=index)

        ran = await run_process(
            argv, env=self._environment(task, index), cwd=task.cwd, sink=sink, timeout=task.timeout_sec,
            cancel=self.run.cancel, grace=self.env.grace, skip=self.events.past_quota,
        )
        if ran.outcome == "failed_to_start":
            return Outcome("failed", error=ran.error, retryable=False)
        if ran.outcome == "timed_out":
            return Outcome("timed_out", ran.exit_code, error=f"timed out after {task.timeout_sec:g} s")
        if ran.outcome == "canceled":
            return Outcome("canceled", ran.exit_code, error="canceled")
        value = result.get("value")
        if ran.exit_code != 0:
            return Outcome("failed", ran.exit_code, value, error=f"exited with code {ran.exit_code}")
        return Outcome("succeeded", 0, value)

    async def _control_line(self, index: int, line: str, result: dict[str, Any]) -> bool:
        """`::progress N text` and `::result {json}`; True when the line was one."""
        word, _, rest = line[2:].partition(" ")
        if word == "progress":
            number, _, text = rest.strip().partition(" ")
            try:
                percent = max(0.0, min(100.0, float(number)))
            except ValueError:
                return False
            await self._progress(index, percent, text or None)
            return True
        if word == "result":
            try:
                value = json.loads(rest)
            except ValueError:
                return False
            result["value"] = value if isinstance(value, dict) else {"value": value}
            return True
        return False

    async def _progress(self, index: int, percent: float | None, text: str | None) -> None:
        if percent is not None:
            percent = max(0.0, min(100.0, float(percent)))
        count = len(self.run.command.tasks)
        overall = None if percent is None else round((index * 100 + percent) / count, 2)
        self.execution.progress_percent, self.execution.progress_text = overall, text
        await self.events.progress(overall, text)
        if time.monotonic() - self._last_progress_save > PROGRESS_SAVE_INTERVAL:
            self._last_progress_save = time.monotonic()
            await self.save(publish=False)

    # ---- module actions ----------------------------------------------------------

    async def _run_module(self, index: int, task: Task) -> Outcome:
        module = self.env.modules.get(task.module or "")
        if module is None:
            return Outcome("failed", error=f"module {task.module!r} is not installed on runner {self.env.runner_id}",
                           retryable=False)
        try:
            params = validate_params(module.params, task.params)
        except ValueError as err:
            return Outcome("failed", error=f"invalid params for module {module.name!r}: {err}", retryable=False)
        runtime = await through_leader_changes(f"reading the state of task {task.id}",
                                               lambda: self.env.buckets.task_state.get(self.org, task.id))
        stored_state = runtime.state if runtime is not None else {}
        exit_codes: list[int] = []

        async def run_argv(argv: list[str]) -> int:
            async def sink(stream: str, line: str) -> None:
                await self.events.log(line, stream=stream, action_index=index)

            ran = await run_process(argv, env=self._environment(task, index), cwd=task.cwd, sink=sink, timeout=None,
                                    cancel=self.run.cancel, grace=self.env.grace, skip=self.events.past_quota)
            if ran.error:
                await self._runner_line(ran.error, "error", index)
            exit_codes.append(ran.exit_code if ran.exit_code is not None else -1)
            return exit_codes[-1]

        ctx = ModuleContext(
            params=params, context=dict(self.run.command.context), state=msgspec.json.decode(msgspec.json.encode(stored_state)),
            execution_id=self.execution.id, cancelled=asyncio.Event(),
            _log=lambda text, level: self.events.log(text, stream="stdout", action_index=index, level=level),
            _progress=lambda percent, text: self._progress(index, percent, text),
            _run=run_argv,
        )
        handler = asyncio.create_task(module.handler(ctx))
        outcome = await self._await_handler(handler, ctx, task)
        await ctx.settle()
        if outcome.status == "succeeded" and ctx.state != stored_state:
            await self._save_state(task, ctx.state)
        return outcome

    async def _await_handler(self, handler: asyncio.Task[Any], ctx: ModuleContext, task: Task) -> Outcome:
        canceled = asyncio.ensure_future(self.run.cancel.wait())
        try:
            done, _ = await asyncio.wait({handler, canceled}, timeout=task.timeout_sec,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            canceled.cancel()
        if handler in done:
            return _handler_outcome(handler)
        status = "canceled" if self.run.cancel.is_set() else "timed_out"
        ctx.cancelled.set()  # the polite way first, the asyncio way after the grace
        try:
            await asyncio.wait_for(asyncio.shield(handler), self.env.grace)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the handler's own failure is moot now
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        error = "canceled" if status == "canceled" else f"timed out after {task.timeout_sec:g} s"
        return Outcome(status, error=error)

    # ---- task runtime --------------------------------------------------------------

    async def _save_state(self, task: Task, state: dict[str, Any]) -> None:
        """Persist a module's state for its next run (last writer wins between runs
        that overlap, as each read the state when it started)."""
        records, what = self.env.buckets.task_state, f"saving the state of task {task.id}"
        while True:
            current = await through_leader_changes(what, lambda: records.get(self.org, task.id))
            try:
                if current is None:
                    await through_leader_changes(what, lambda: records.create(self.org, task.id,
                                                                              TaskRuntime(state=state)))
                else:
                    await through_leader_changes(what, lambda version=current.version: records.update(
                        self.org, task.id, TaskRuntime(state=state), version))
                return
            except VersionConflict:
                await asyncio.sleep(random.uniform(0, 0.01))

    # ---- endings -------------------------------------------------------------------

    async def _finish(self, outcome: Outcome) -> None:
        execution = self.execution
        execution.status = outcome.status  # type: ignore[assignment]
        execution.finished_at = now_iso()
        execution.duration_ms = _ms_between(execution.started_at, execution.finished_at)
        execution.result = outcome.result
        execution.error = outcome.error or _first_error(execution.actions)
        if outcome.status == "succeeded":
            execution.progress_percent = 100.0
        await self.save()

    async def _hand_back(self) -> None:
        execution = self.execution
        execution.status, execution.runner_id, execution.started_at = "queued", None, None
        execution.progress_percent = execution.progress_text = None
        execution.error = f"handed back by runner {self.env.runner_id} at shutdown; runs again from the start"
        for action in execution.actions:
            action.status, action.exit_code, action.error = "queued", None, None
            action.started_at = action.finished_at = None
        await self._runner_line(execution.error, "warning")
        await self.save()


def _handler_outcome(handler: asyncio.Task[Any]) -> Outcome:
    try:
        value = handler.result()
    except asyncio.CancelledError:
        return Outcome("canceled", error="canceled")
    except Exception as err:  # the handler's failure is the action's failure
        return Outcome("failed", error=f"{type(err).__name__}: {err}")
    if value is None:
        return Outcome("succeeded", result=None)
    return Outcome("succeeded", result=value if isinstance(value, dict) else {"value": msgspec.to_builtins(value)})


def _first_error(actions: list[ActionState]) -> str | None:
    for action in actions:
        if action.error and action.status != "succeeded":
            return f"action {action.index}: {action.error}"
    return None


def _ms_between(start: str | None, end: str | None) -> int | None:
    if not start or not end:
        return None
    return int((parse_iso(end) - parse_iso(start)).total_seconds() * 1000)


def deadline_passed(deadline: str | None) -> bool:
    return bool(deadline) and parse_iso(deadline) < datetime.now(timezone.utc)  # type: ignore[arg-type]
