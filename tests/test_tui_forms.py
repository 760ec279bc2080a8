"""The dashboard's dialogs, driven with keys the way an operator drives them.

Each scenario opens one dialog in a bare host app and checks what the user would see
and what the dialog hands back. The dialogs do not talk to NATS themselves: the app
passes them a `save` coroutine, so here `save` is a plain async function that records
what it was given.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input, Select, SelectionList, Static, TextArea

from broker.errors import BadRequest
from tui.screens.batch_form import BatchForm
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen, binding_rows
from tui.screens.start_form import StartForm
from tui.screens.task_form import TaskForm

SIZE = (120, 40)


class Host(App):
    """Opens one dialog on mount and keeps what it dismissed with."""

    def __init__(self, dialog: Screen) -> None:
        super().__init__()
        self.dialog = dialog
        self.results: list[Any] = []

    def on_mount(self) -> None:
        self.push_screen(self.dialog, self.results.append)


class Recorder:
    """A `save` that records each request and answers like the API would."""

    def __init__(self, error: Exception | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.error = error

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return {"id": "saved-1", "version": 1, **request}


def shown(app: App, selector: str) -> str:
    """The text a Static shows, or "" while it is hidden."""
    widget = app.screen.query_one(selector, Static)
    return str(widget.content) if widget.display else ""


async def type_into(pilot, selector: str, text: str) -> None:
    """Type `text` key by key into an emptied input, as a user does."""
    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    field.value = ""
    await pilot.press(*text)
    await pilot.pause()


async def fill(pilot, selector: str, text: str) -> None:
    """Set an input at once (it still reports the change) where typing is not the point."""
    pilot.app.screen.query_one(selector, Input).value = text
    await pilot.pause()


async def fill_in(pilot, fields: dict[str, str]) -> None:
    """`fill` each input in turn."""
    for selector, text in fields.items():
        await fill(pilot, selector, text)


async def settle(pilot) -> None:
    """Let a save started by a key finish and its result reach the screen."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def press_save(pilot) -> None:
    """Press ctrl+s as the user does and let what it started settle."""
    await pilot.press("ctrl+s")
    await settle(pilot)


# ---- confirm ------------------------------------------------------------------------


async def test_confirm_answers_yes_with_y_and_enter_and_no_with_n_and_escape():
    for key, expected in (("y", True), ("enter", True), ("n", False), ("escape", False)):
        app = Host(ConfirmScreen("Delete task", "Delete task backup? Its history stays."))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert "Delete task backup?" in shown(app, ".bd-message")
            await pilot.press(key)
            await pilot.pause()
            assert app.results == [expected], key
            assert not isinstance(app.screen, ConfirmScreen)


# ---- help ---------------------------------------------------------------------------


async def test_help_lists_the_rows_by_section_and_escape_closes_it():
    rows = [("Executions", "c", "Cancel the execution"), ("Executions", "ctrl+r", "Restart"),
            ("Everywhere", "q", "Quit")]
    app = Host(HelpScreen(rows))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        sections = [str(s.content) for s in app.screen.query(".bd-help-section").results(Static)]
        keys = [str(s.content) for s in app.screen.query(".bd-help-key").results(Static)]
        descriptions = [str(s.content) for s in app.screen.query(".bd-help-description").results(Static)]
        assert sections == ["Executions", "Everywhere"]
        assert keys == ["c", "ctrl+r", "q"]
        assert descriptions == ["Cancel the execution", "Restart", "Quit"]
        # One key column: every key cell is as wide as the widest.
        assert len({cell.size.width for cell in app.screen.query(".bd-help-key")}) == 1
        await pilot.press("escape")
        await pilot.pause()
        assert app.results == [None]


async def test_binding_rows_name_where_each_key_comes_from():
    class Main(Screen):
        BINDINGS = [Binding("c", "cancel_run", "Cancel run", id="main.cancel"),
                    Binding("x", "cancel_run", "Cancel run", id="main.cancel2", show=False)]

    class Dashboard(App):
        BINDINGS = [Binding("question_mark", "help", "Help", id="app.help")]

        def on_mount(self) -> None:
            self.push_screen(Main())

    app = Dashboard()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        rows = binding_rows(app.screen)
    assert ("This screen", "c x", "Cancel run") in rows
    assert ("Everywhere", "?", "Help") in rows
    sections = [section for section, _, _ in rows]
    assert sections.index("This screen") < sections.index("Everywhere")


# ---- batch form ---------------------------------------------------------------------

TASKS = [{"id": "backup", "name": "Back up"}, {"id": "report", "name": "Report"}]


def utc_times(text: str) -> list[datetime]:
    return [datetime.strptime(m, "%Y-%m-%d %H:%M") for m in re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d) UTC", text)]


async def test_batch_form_describes_the_cron_as_it_is_typed():
    app = Host(BatchForm(Recorder(), tasks=TASKS))
    async with app.run_test(size=SIZE) as pilot:
        await type_into(pilot, "#cron", "*/15 * * * *")
        assert shown(app, "#cron-summary") == "Every 15 minutes"
        times = utc_times(shown(app, "#cron-times"))
        assert len(times) == 5
        assert {later - earlier for earlier, later in pairwise(times)} == {timedelta(minutes=15)}
        assert shown(app, "#cron-error") == ""


async def test_batch_form_says_which_days_as_the_scheduler_counts_them():
    app = Host(BatchForm(Recorder(), tasks=TASKS))
    async with app.run_test(size=SIZE) as pilot:
        await fill(pilot, "#cron", "0 0 */2 * 1")  # `*/2` starts with `*`: odd days that are Mondays
        assert shown(app, "#cron-summary") == "At 00:00, every 2 days, and only on Monday"
        times = utc_times(shown(app, "#cron-times"))
        assert len(times) == 5 and all(t.weekday() == 0 and t.day % 2 == 1 for t in times)
        await fill(pilot, "#cron", "0 0 1 * 1")  # both restricted: either
        assert shown(app, "#cron-summary") == "At 00:00, on day 1 of the month, or on Monday"


async def test_batch_form_shows_times_in_the_batch_timezone_and_in_utc():
    app = Host(BatchForm(Recorder(), tasks=TASKS))
    async with app.run_test(size=SIZE) as pilot:
        await fill(pilot, "#cron", "0 9 * * *")
        await fill(pilot, "#timezone", "Asia/Kolkata")
        first = shown(app, "#cron-times").splitlines()[0]
        assert re.search(r"09:00 IST .* 03:30 UTC$", first), first
        await fill(pilot, "#timezone", "Mars/Olympus")
        assert "not a known IANA timezone" in shown(app, "#cron-error")


async def test_batch_form_refuses_an_invalid_cron_without_calling_save():
    save = Recorder()
    app = Host(BatchForm(save, tasks=TASKS))
    async with app.run_test(size=SIZE) as pilot:
        await fill_in(pilot, {"#name": "nightly", "#action-ids": "backup"})
        await type_into(pilot, "#cron", "61 * * * *")
        assert "'61' is out of range 0-59 in the minute field" in shown(app, "#cron-error")
        assert shown(app, "#cron-summary") == ""
        await press_save(pilot)
        assert save.requests == []
        assert "'61' is out of range 0-59 in the minute field" in shown(app, "#form-error")
        assert isinstance(app.screen, BatchForm)


async def test_batch_form_keeps_open_with_the_api_error():
    save = Recorder(error=BadRequest("name is taken"))
    app = Host(BatchForm(save, tasks=TASKS))
    async with app.run_test(size=SIZE) as pilot:
        await fill_in(pilot, {"#name": "nightly", "#cron": "0 3 * * *", "#action-ids": "backup"})
        await press_save(pilot)
        assert len(save.requests) == 1
        assert isinstance(app.screen, BatchForm)
        assert shown(app, "#form-error") == "name is taken"
        assert app.results == []


async def test_batch_form_saves_the_spec_and_dismisses_with_the_result():
    save = Recorder()
    app = Host(BatchForm(save, tasks=TASKS))
    async with app.run_test(size=SIZE) as pilot:
        await fill_in(pilot, {"#name": "nightly", "#cron": "0 3 * * *", "#timezone": "Europe/Berlin",
                              "#action-ids": "report, backup"})
        await press_save(pilot)
    assert save.requests == [{
        "name": "nightly", "description": "", "cron_expression": "0 3 * * *", "timezone": "Europe/Berlin",
        "is_enabled": True, "run_on_startup": False,
        "actions": [{"task_id": "report"}, {"task_id": "backup"}],
        "concurrency": "forbid", "catch_up": "last",
    }]
    assert app.results == [{"id": "saved-1", "version": 1, **save.requests[0]}]


async def test_batch_form_ticking_tasks_appends_them_in_order():
    app = Host(BatchForm(Recorder(), tasks=TASKS))
    async with app.run_test(size=SIZE) as pilot:
        task_list = app.screen.query_one("#task-list")
        task_list.focus()
        await pilot.press("down", "space", "up", "space")  # tick Report, then Back up
        await pilot.pause()
        assert app.screen.query_one("#action-ids", Input).value == "report, backup"
        assert shown(app, "#actions-hint") == "runs 1. Report → 2. Back up"


async def test_batch_form_edit_sends_only_what_changed():
    stored = {"id": "nightly", "version": 4, "name": "nightly", "description": "", "cron_expression": "0 3 * * *",
              "schedule": None, "timezone": "UTC", "is_enabled": True, "run_on_startup": False,
              "actions": [{"task_id": "backup", "params": {"full": True}, "continue_on_error": False}],
              "pool": None, "concurrency": "forbid", "catch_up": "last"}
    save = Recorder()
    app = Host(BatchForm(save, batch=stored, tasks=TASKS))
    async with app.run_test(size=SIZE) as pilot:
        assert app.screen.query_one("#task-list", SelectionList).selected == ["backup"]
        await fill(pilot, "#action-ids", "backup, report")
        await press_save(pilot)
    # The kept action keeps its params, which this form does not edit.
    assert save.requests == [{"id": "nightly", "version": 4, "actions": [
        {"task_id": "backup", "params": {"full": True}, "continue_on_error": False}, {"task_id": "report"}]}]


# ---- task form ----------------------------------------------------------------------


async def test_task_form_splits_a_quoted_command_line_into_argv():
    save = Recorder()
    app = Host(TaskForm(save))
    async with app.run_test(size=SIZE) as pilot:
        await fill(pilot, "#name", "greet")
        await type_into(pilot, "#command", 'echo "a b" c')
        assert shown(app, "#command-hint") == 'argv ["echo", "a b", "c"]'
        await press_save(pilot)
    assert save.requests[0]["command"] == ["echo", "a b", "c"]
    assert save.requests[0]["kind"] == "command"
    assert app.results == [{"id": "saved-1", "version": 1, **save.requests[0]}]


async def test_task_form_refuses_bad_params_json_and_unclosed_quotes():
    save = Recorder()
    app = Host(TaskForm(save))
    async with app.run_test(size=SIZE) as pilot:
        await fill_in(pilot, {"#name": "greet", "#command": "echo hi"})
        app.screen.query_one("#params", TextArea).load_text('{"who": }')
        await press_save(pilot)
        assert shown(app, "#form-error").startswith("params: not valid JSON")
        await fill(pilot, "#command", 'echo "hi')
        app.screen.query_one("#params", TextArea).load_text("{}")
        await press_save(pilot)
        assert "No closing quotation" in shown(app, "#form-error")
        await fill(pilot, "#command", "echo hi")
        await type_into(pilot, "#timeout", "1e")
        await press_save(pilot)
        assert shown(app, "#form-error").startswith("timeout:")
        assert save.requests == []
        assert isinstance(app.screen, TaskForm)


async def test_task_form_prefills_params_from_the_chosen_module():
    modules = [{"name": "sleep", "description": "Sleeps.", "params": [
        {"name": "seconds", "type": "number", "default": 1.5, "required": False, "description": "how long"}]}]
    save = Recorder()
    app = Host(TaskForm(save, modules=modules))
    async with app.run_test(size=SIZE) as pilot:
        await fill(pilot, "#name", "nap")
        app.screen.query_one("#kind", Select).value = "module"
        app.screen.query_one("#module", Select).value = "sleep"
        await pilot.pause()
        assert "seconds (number) · how long" in shown(app, "#module-hint")
        await press_save(pilot)
    assert save.requests[0]["module"] == "sleep"
    assert save.requests[0]["params"] == {"seconds": 1.5}
    assert "command" not in save.requests[0]


async def test_task_form_editing_a_module_task_keeps_its_params():
    modules = [{"name": "sleep", "params": [{"name": "seconds", "type": "number", "default": 1.5}]}]
    stored = {"id": "nap", "version": 2, "name": "nap", "kind": "module", "module": "sleep",
              "params": {"seconds": 30}}
    save = Recorder()
    app = Host(TaskForm(save, task=stored, modules=modules))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.screen.query_one("#params", TextArea).text == '{\n  "seconds": 30\n}'
        await fill(pilot, "#name", "long nap")
        await press_save(pilot)
    assert save.requests == [{"id": "nap", "version": 2, "name": "long nap"}]


async def test_task_form_edit_sends_id_version_and_the_changed_fields():
    stored = {"id": "greet", "version": 7, "name": "greet", "description": "", "kind": "command",
              "command": ["echo", "a b"], "module": None, "params": {}, "shell": False, "pool": "default",
              "timeout_sec": 30.0, "retries": 0, "cancellable": True, "trace": True, "state": {}}
    save = Recorder(error=BadRequest("task 'greet' changed meanwhile (version 8)"))
    app = Host(TaskForm(save, task=stored))
    async with app.run_test(size=SIZE) as pilot:
        assert app.screen.query_one("#command", Input).value == "echo 'a b'"
        await fill(pilot, "#retries", "3")
        await press_save(pilot)
        assert save.requests == [{"id": "greet", "version": 7, "retries": 3}]
        assert shown(app, "#form-error") == "task 'greet' changed meanwhile (version 8)"
        assert isinstance(app.screen, TaskForm)


async def test_a_new_task_or_batch_takes_the_id_typed_and_refuses_one_that_is_no_id():
    for make, fields in ((lambda save: TaskForm(save), {"#name": "etl", "#command": "etl.sh"}),
                         (lambda save: BatchForm(save, tasks=TASKS),
                          {"#name": "nightly", "#cron": "0 3 * * *", "#action-ids": "backup"})):
        save = Recorder()
        app = Host(make(save))
        async with app.run_test(size=SIZE) as pilot:
            await fill_in(pilot, fields)
            await type_into(pilot, "#record-id", "nightly etl!")  # what is no id cannot be typed
            assert app.screen.query_one("#record-id", Input).value == "nightlyetl"
            await fill(pilot, "#record-id", "-etl")
            await press_save(pilot)
            assert save.requests == [] and shown(app, "#form-error").startswith("id: 1-64 letters")
            await fill(pilot, "#record-id", "nightly-etl")
            await press_save(pilot)
        assert save.requests[0]["id"] == "nightly-etl", save.requests


async def test_a_new_record_without_an_id_gets_one_from_the_api_and_an_edit_has_no_id_field():
    save = Recorder()
    app = Host(TaskForm(save))
    async with app.run_test(size=SIZE) as pilot:
        await fill_in(pilot, {"#name": "etl", "#command": "etl.sh"})
        await press_save(pilot)
    assert "id" not in save.requests[0]  # the API makes a ULID
    stored = {"id": "greet", "version": 7, "name": "greet", "command": ["echo"], "kind": "command"}
    app = Host(TaskForm(Recorder(), task=stored))
    async with app.run_test(size=SIZE):
        assert not app.screen.query("#record-id")


# ---- start form ---------------------------------------------------------------------


async def test_start_form_converts_typed_params_and_enter_on_the_last_starts():
    params = [{"name": "label", "type": "string", "default": "x"},
              {"name": "count", "type": "integer", "required": True}]
    save = Recorder()
    app = Host(StartForm("Start task greet", save, params=params))
    async with app.run_test(size=SIZE) as pilot:
        await type_into(pilot, "#param-1", "42")
        await pilot.press("enter")
        await settle(pilot)
    assert save.requests == [{"context": {}, "params": {"count": 42}}]
    assert app.results == [{"id": "saved-1", "version": 1, "context": {}, "params": {"count": 42}}]


async def test_start_form_refuses_bad_context_json_and_missing_required_params():
    save = Recorder()
    app = Host(StartForm("Start task greet", save, params=[{"name": "count", "type": "integer", "required": True}]))
    async with app.run_test(size=SIZE) as pilot:
        await press_save(pilot)
        assert shown(app, "#form-error") == "count: required"
        await fill(pilot, "#param-0", "3")
        app.screen.query_one("#context", TextArea).load_text('{"region": "eu"')
        await press_save(pilot)
        assert shown(app, "#form-error").startswith("context: not valid JSON")
        assert save.requests == []
        assert isinstance(app.screen, StartForm)


async def test_start_form_for_a_batch_sends_only_the_context():
    save = Recorder()
    app = Host(StartForm("Start batch nightly", save))
    async with app.run_test(size=SIZE) as pilot:
        app.screen.query_one("#context", TextArea).load_text('{"region": "eu"}')
        await press_save(pilot)
    assert save.requests == [{"context": {"region": "eu"}}]
