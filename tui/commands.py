"""The command palette (ctrl+p): every action of the dashboard by name, and one entry
per batch for start / enable / disable, so nothing needs a key to be remembered."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from tui.app import BatchdeckApp

GLOBAL = (
    ("Go to: batches and executions", "show_main", "the main screen"),
    ("Go to: tasks", "show_tasks", "every task; start, create, edit, delete"),
    ("Go to: runners", "show_runners", "the org's runners, their pools and what they run"),
    ("Go to: history", "show_history", "success rates and durations over time; SQL console"),
    ("Help: key bindings", "help", "every key of the current screen"),
    ("Quit", "quit", "leave the dashboard"),
)


class BatchdeckCommands(Provider):
    @property
    def bd_app(self) -> BatchdeckApp:
        return self.app  # type: ignore[return-value]

    def _entries(self) -> list[tuple[str, Callable[[], Any], str]]:
        entries = [(name, partial(self.app.run_action, action), help_) for name, action, help_ in GLOBAL]
        live = self.bd_app.live
        if live is None:
            return entries
        main = self.bd_app.main_screen
        for batch in sorted(live.batches.values(), key=lambda b: b.name.lower()):
            if batch.deleted_at is not None:
                continue
            entries.append((f"Start batch: {batch.name}", partial(main.start_batch, batch.id), "run it now"))
            toggle = "Disable" if batch.is_enabled else "Enable"
            entries.append((f"{toggle} batch: {batch.name}", partial(main.toggle_batch, batch.id),
                            "stop or resume its schedule"))
        for execution in live.executions.values():
            if not execution.is_final:
                entries.append((f"Cancel execution: {execution.name} {execution.id}",
                                partial(main.cancel_execution, execution.id), execution.status))
        return entries

    async def discover(self) -> Hits:
        for name, run, help_ in self._entries()[: len(GLOBAL)]:
            yield DiscoveryHit(name, run, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, run, help_ in self._entries():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), run, help=help_)
