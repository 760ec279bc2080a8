"""Create or edit a batch: schedule, actions and policies of `broker.types.BatchSpec`.

While the user types the cron expression the form says it in words and lists the next
five fire times, so a schedule is checked before it is saved. The form builds the spec
and hands it to the caller's `save`; an `ApiError` from it is shown in the form.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from cron_descriptor import Options, get_description
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.suggester import SuggestFromList
from textual.widgets import Input, Select, SelectionList, Static, Switch

from broker import schedule
from broker.types import BatchSpec
from tui.screens.form_screen import FormError, FormScreen, field_row, hint, inline_row, spec_defaults, spec_request
from tui.screens.form_screen import Save as SaveBatch  # what `save` must be

CONCURRENCY = [("forbid · skip while running", "forbid"), ("allow · run side by side", "allow"),
               ("replace · cancel the running", "replace")]
CATCH_UP = [("last · one run for missed ticks", "last"), ("none · skip missed ticks", "none"),
            ("all · every missed tick", "all")]
CRON_EXAMPLES = "e.g. 0 3 * * * (03:00 daily) · */15 * * * * · 0 9 * * 1-5 · @hourly"
PREVIEW_COUNT = 5
# English, 24-hour: the times listed under the description are 24-hour too.
DESCRIBE = Options(locale_code="en_GB", use_24hour_time_format=True)


# What a field holds when the stored batch leaves it out: the contract's own defaults.
SPEC_DEFAULTS = spec_defaults(BatchSpec)


class BatchForm(FormScreen):
    """Dismisses with what `save` returned (the stored batch), or None when cancelled or
    when an edit changed nothing (no request is sent then)."""

    WHAT = "batch"

    def __init__(self, save: SaveBatch, batch: dict[str, Any] | None = None, tasks: Sequence[dict] = ()) -> None:
        super().__init__(save, f"Edit batch {batch['id']}" if batch else "New batch")
        self.original = batch
        self.task_names = {task["id"]: task.get("name") or task["id"] for task in tasks}
        # A stored structured schedule is edited as its cron; unchanged text keeps it.
        self.initial_cron = _cron_text(batch)

    # ---- layout ------------------------------------------------------------------

    def compose_fields(self) -> ComposeResult:
        batch = self.original or {}
        yield from self.new_id_field(self.original is None)
        action_ids = [action["task_id"] for action in batch.get("actions", [])]
        yield field_row("Name", Input(batch.get("name", ""), id="name", max_length=200), required=True)
        yield field_row("Description", Input(batch.get("description", ""), id="description", max_length=4000))
        yield field_row("Cron", Input(self.initial_cron, id="cron", placeholder="minute hour day month weekday",
                                      max_length=200), required=True)
        yield field_row("Timezone", Input(batch.get("timezone", "UTC"), id="timezone", max_length=64,
                                          suggester=SuggestFromList(_zone_names(), case_sensitive=False)))
        with Vertical(classes="bd-preview"):
            yield Static(id="cron-summary", classes="bd-preview-summary", markup=False)
            yield Static(id="cron-times", classes="bd-preview-times", markup=False)
            yield Static(id="cron-error", classes="bd-preview-error -hidden", markup=False)
        yield self._switches_row(batch)
        task_list = field_row("Tasks", SelectionList[str](*self._task_choices(action_ids), id="task-list"))
        task_list.set_class(not self.task_names, "-hidden")
        yield task_list
        yield field_row("Actions", Input(", ".join(action_ids), id="action-ids",
                                         placeholder="task ids, comma-separated, in the order they run"),
                        required=True)
        yield hint(id="actions-hint")
        yield field_row("Pool", Input(batch.get("pool") or "", id="pool", max_length=32,
                                      placeholder="each task's own pool"))
        yield field_row("Concurrency", Select(CONCURRENCY, id="concurrency", allow_blank=False,
                                              value=batch.get("concurrency", "forbid")))
        yield field_row("Catch up", Select(CATCH_UP, id="catch-up", allow_blank=False,
                                           value=batch.get("catch_up", "last")))

    def _task_choices(self, action_ids: list[str]) -> list[tuple[str, str, bool]]:
        return [(f"{name}  ({task_id})", task_id, task_id in action_ids) for task_id, name in self.task_names.items()]

    def _switches_row(self, batch: dict[str, Any]) -> Horizontal:
        return inline_row(
            ("Enabled", Switch(bool(batch.get("is_enabled", True)), id="enabled")),
            ("Run on startup", Switch(bool(batch.get("run_on_startup", False)), id="run-on-startup")),
        )

    def on_mount(self) -> None:
        self._show_schedule()
        self._show_actions()

    # ---- live feedback -----------------------------------------------------------

    @on(Input.Changed, "#cron")
    @on(Input.Changed, "#timezone")
    def _schedule_changed(self) -> None:
        self._show_schedule()

    def _show_schedule(self) -> None:
        """The schedule in words and its next fire times, or why it is not valid."""
        expression = self.query_one("#cron", Input).value
        tz_name = self.query_one("#timezone", Input).value.strip() or "UTC"
        words, lines, problem = "", [], ""
        try:
            if expression.strip():
                words, lines = describe_schedule(expression, tz_name, datetime.now(timezone.utc))
            else:  # nothing typed yet: examples, not an error
                schedule.zone(tz_name)
                lines = [CRON_EXAMPLES]
        except ValueError as err:  # schedule.ScheduleError is a ValueError
            problem = str(err)
        self.show_text("#cron-summary", words)
        self.show_text("#cron-times", "\n".join(lines))
        self.show_text("#cron-error", problem)

    @on(SelectionList.SelectionToggled, "#task-list")
    def _task_toggled(self, event: SelectionList.SelectionToggled) -> None:
        """A ticked task runs after those already listed; an unticked one is dropped."""
        task_id = event.selection.value
        ids = self._action_ids()
        if task_id in event.selection_list.selected:
            ids.append(task_id)
        else:
            ids = [other for other in ids if other != task_id]
        self.query_one("#action-ids", Input).value = ", ".join(ids)

    @on(Input.Changed, "#action-ids")
    def _action_ids_changed(self) -> None:
        # The text is the truth (it holds the order and repeats); the list mirrors it.
        # Setting selections programmatically sends no SelectionToggled, so no loop.
        task_list = self.query_one("#task-list", SelectionList)
        ids = set(self._action_ids())
        task_list.deselect_all()
        for task_id in ids & set(self.task_names):
            task_list.select(task_id)
        self._show_actions()

    def _show_actions(self) -> None:
        ids = self._action_ids()
        steps = [f"{number}. {self.task_names.get(task_id, f'{task_id} (unknown task)')}"
                 for number, task_id in enumerate(ids, 1)]
        self.query_one("#actions-hint", Static).update(
            "runs " + " → ".join(steps) if steps else "tick tasks or type their ids; they run in the order listed")

    # ---- building the spec -------------------------------------------------------

    def _action_ids(self) -> list[str]:
        text = self.query_one("#action-ids", Input).value
        return [task_id.strip() for task_id in text.split(",") if task_id.strip()]

    def _actions(self) -> list[dict[str, Any]]:
        """The actions in the chosen order; a task kept from the stored batch keeps its
        action's params and continue_on_error, which this form does not edit."""
        ids = self._action_ids()
        if not ids:
            raise FormError("actions: choose at least one task to run")
        unused = list((self.original or {}).get("actions", []))
        actions = []
        for task_id in ids:
            kept = next((action for action in unused if action["task_id"] == task_id), None)
            if kept is not None:
                unused.remove(kept)
            actions.append(kept or {"task_id": task_id})
        return actions

    def _schedule_fields(self) -> dict[str, Any]:
        expression = self.query_one("#cron", Input).value.strip()
        tz_name = self.query_one("#timezone", Input).value.strip() or "UTC"
        try:
            schedule.normalize_cron(expression)
            schedule.zone(tz_name)
        except schedule.ScheduleError as err:  # it says what is wrong
            raise FormError(str(err)) from None
        batch = self.original or {}
        if expression == self.initial_cron and batch.get("schedule") is not None:
            return {"timezone": tz_name}  # the structured schedule stays as stored
        return {"cron_expression": expression, "schedule": None, "timezone": tz_name}

    def _spec(self) -> dict[str, Any]:
        """Every field the form holds, as BatchSpec data; FormError names a bad field."""
        return {
            "name": self.query_one("#name", Input).value.strip(),
            "description": self.query_one("#description", Input).value.strip(),
            **self._schedule_fields(),
            "is_enabled": self.query_one("#enabled", Switch).value,
            "run_on_startup": self.query_one("#run-on-startup", Switch).value,
            "actions": self._actions(),
            "pool": self.query_one("#pool", Input).value.strip() or None,
            "concurrency": self.query_one("#concurrency", Select).value,
            "catch_up": self.query_one("#catch-up", Select).value,
        }

    def build(self) -> dict[str, Any] | None:
        """The body for `save`: the whole spec for a new batch; for an edit, `id`,
        `version` and the changed fields, or None when nothing changed."""
        request = spec_request(self._spec(), self.original, SPEC_DEFAULTS)
        return {**self.chosen_id(), **request} if request is not None else None


# ---- schedule preview ------------------------------------------------------------


def describe_schedule(expression: str, tz_name: str, now: datetime) -> tuple[str, list[str]]:
    """The schedule in words and its next fire times after `now`, one line each, in the
    batch's timezone and in UTC; raises ValueError (ScheduleError) saying what is wrong."""
    cron = schedule.normalize_cron(expression)
    zone = schedule.zone(tz_name)
    times = schedule.next_times(expression, tz_name, after=now, count=PREVIEW_COUNT)
    with_seconds = len(cron.split(" ")) == 6
    lines = [_time_line(time, zone, with_seconds) for time in times]
    if not lines:
        lines = ["never fires again"]
    return _in_words(cron), lines


def _in_words(cron: str) -> str:
    try:
        words = get_description(cron, DESCRIBE)
    except Exception:  # the words are a nicety; broker.cron (above) is the judge of validity
        return cron
    fields = cron.split(" ")
    if ", or on " in words and any(field.startswith(("*", "?")) for field in (fields[-3], fields[-1])):
        # cron-descriptor says "or" whenever day-of-month is not exactly `*`; classic cron
        # (and broker.cron) want both days when either field starts with `*` (`*/2`).
        words = words.replace(", or on ", ", and only on ")
    return words


def _time_line(time: datetime, zone: zoneinfo.ZoneInfo, with_seconds: bool) -> str:
    clock = "%H:%M:%S" if with_seconds else "%H:%M"
    local = time.astimezone(zone)
    line = local.strftime(f"%a %Y-%m-%d {clock} %Z")
    if local.tzname() != "UTC":
        line += time.strftime(f"   {'%Y-%m-%d ' if local.date() != time.date() else ''}{clock} UTC")
    return line


@functools.cache
def _zone_names() -> list[str]:
    return sorted(zoneinfo.available_timezones())


def _cron_text(batch: dict[str, Any] | None) -> str:
    """The stored schedule as the cron text the form edits."""
    batch = batch or {}
    if batch.get("cron_expression"):
        return batch["cron_expression"]
    if batch.get("schedule"):
        return schedule.structured_to_cron(batch["schedule"])
    return ""
