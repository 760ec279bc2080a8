"""The dashboard application: one NATS connection, the org's live state, the screens.

The app owns the connection and says in the header what state it is in. It connects
in a worker that keeps trying, so the dashboard opens at once even when the server is
not there yet; after a reconnect the live state is loaded again (KV watches re-made).
Changes from NATS are coalesced: screens repaint at most every REFRESH seconds.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from nats.aio.client import Client
from nats.errors import NoServersError
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive

from broker.client import ApiClient
from broker.connect import ConnectOptions, connect
from broker.errors import ApiError
from tui.commands import BatchdeckCommands
from tui.live import Kind, LiveState
from tui.messages import LiveChanged
from tui.screens.help import HelpScreen, binding_rows
from tui.screens.main import MainScreen
from tui.screens.runners import RunnersScreen
from tui.screens.tasks import TasksScreen

REFRESH = 0.15
"""Seconds between repaints while changes stream in."""
RETRY_CONNECT = 2.0


def connection_problem(err: BaseException) -> str | None:
    """Why a try to reach the server failed, in a few words; None for an error that is
    not about reaching it."""
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(err, socket.gaierror):
        return "unknown host name"
    if isinstance(err, (TimeoutError, asyncio.TimeoutError)):
        return "no answer (timed out)"
    if isinstance(err, ssl.SSLError):
        return f"TLS: {err.reason or err}"
    text = str(err).lower()
    if "authorization" in text or "authentication" in text:
        return "authorization failed (check the credentials)"
    if isinstance(err, (OSError, NoServersError)):
        return str(err) or type(err).__name__
    return None


class BatchdeckApp(App[None]):
    TITLE = "batchdeck"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {BatchdeckCommands}
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="quit-ctrl-c"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("t", "show_tasks", "Tasks", id="tasks"),
        Binding("r", "show_runners", "Runners", id="runners"),
        Binding("h", "show_history", "History", id="history"),
    ]

    connection: reactive[str] = reactive("connecting")
    """connecting, connected, reconnecting, unreachable: … — shown in every header."""

    def __init__(self, options: ConnectOptions, org: str, *, clock: Callable[[], datetime] | None = None,
                 nc: Client | None = None, server_label: str | None = None) -> None:
        """`nc`: an open connection to use instead of making one. `clock` and `server_label`
        (the header's server name) make the screens reproducible for snapshots."""
        super().__init__()
        self.server_label = server_label
        self.options = options
        self.org = org
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.nc: Client | None = nc
        self._own_connection = nc is None
        self.api: ApiClient | None = ApiClient(nc, org) if nc is not None else None
        self.live: LiveState | None = None
        self._pending: set[Kind] = set()
        self._flush_scheduled = False

    @property
    def main_screen(self) -> MainScreen:
        return next(s for s in self.screen_stack if isinstance(s, MainScreen))

    @property
    def server(self) -> str:
        if self.server_label is not None:
            return self.server_label
        return self.options.url.split(",")[0].rsplit("@", 1)[-1]  # never show a password

    def on_mount(self) -> None:
        self.push_screen(MainScreen())
        self._connect()

    # ---- connection ------------------------------------------------------------------

    @work(exclusive=True, group="connect")
    async def _connect(self) -> None:
        if self.nc is None:
            while True:
                try:
                    # A service connection keeps trying the first connect too: each failed
                    # try reaches _on_error, which says why in the header.
                    self.nc = await connect(self.options, service=True, disconnected_cb=self._on_disconnected,
                                            reconnected_cb=self._on_reconnected, error_cb=self._on_error,
                                            closed_cb=self._on_closed)
                    break
                except Exception as err:  # nats-py raises several unrelated types for "cannot connect"
                    self.connection = f"unreachable: {err or type(err).__name__}"
                    await asyncio.sleep(RETRY_CONNECT)
            self.api = ApiClient(self.nc, self.org)
            self.connection = "connected"  # the lists follow as the live state loads
        self.live = LiveState(self.api, self._changed, self._live_warning)
        await self.live.start()
        self.connection = "connected"
        self._changed("batches")

    def _live_warning(self, text: str) -> None:
        self.notify(text, title="live view", severity="warning", timeout=10)

    async def _on_disconnected(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            self.connection = "reconnecting"

    async def _on_reconnected(self) -> None:
        self.connection = "connected"
        self.notify("Connection to NATS is back; live state reloaded", title="reconnected")
        self._resync()

    async def _on_error(self, err: Exception) -> None:
        """A try to reach the server failed: the header says why while the connection is
        not up (other errors, e.g. a refused subject, are for the screens to report)."""
        reason = connection_problem(err)
        if reason is None:
            return
        if self.connection == "connecting" or self.connection.startswith("unreachable"):
            self.connection = f"unreachable: {reason}; retrying"
        elif self.connection.startswith("reconnecting"):
            self.connection = f"reconnecting: {reason}"

    async def _on_closed(self) -> None:
        self.connection = "closed"

    @work(exclusive=True, group="resync")
    async def _resync(self) -> None:
        if self.live is not None:
            await self.live.resync()

    async def on_unmount(self) -> None:
        if self.live is not None:
            await self.live.stop()
        if self._own_connection and self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    # ---- live changes, coalesced -----------------------------------------------------

    def _changed(self, kind: Kind) -> None:
        self._pending.add(kind)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.set_timer(REFRESH, self._flush_changes)

    def _flush_changes(self) -> None:  # not `_flush`: Textual's App has one
        kinds, self._pending, self._flush_scheduled = frozenset(self._pending), set(), False
        if self.screen_stack:  # none while the app shuts down
            self.screen.post_message(LiveChanged(kinds))

    def on_screen_resume(self) -> None:
        self._changed("batches")

    # ---- API calls from screens --------------------------------------------------------

    async def call(self, resource: str, verb: str, body: Any = None, *, quiet: bool = False) -> Any | None:
        """An API request; an error becomes a notification and None (the app never crashes on it)."""
        if self.api is None:
            self.notify("Not connected to NATS yet", severity="warning")
            return None
        try:
            return await self.api.call(resource, verb, body)
        except ApiError as err:
            if not quiet:
                self.notify(err.message, title=f"{resource}.{verb}: error {err.code}", severity="error", timeout=8)
            return None

    # ---- navigation --------------------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen(binding_rows(self.screen)))

    def action_show_tasks(self) -> None:
        self._open(TasksScreen, TasksScreen)

    def action_show_runners(self) -> None:
        self._open(RunnersScreen, RunnersScreen)

    def action_show_history(self) -> None:
        from tui.screens.history import HistoryScreen  # plotext loads when charts are first wanted: a faster start

        if self.api is None:
            self.notify("Not connected to NATS yet", severity="warning")
        else:
            api = self.api
            self._open(HistoryScreen, lambda: HistoryScreen(api))

    def action_show_main(self) -> None:
        self._open(MainScreen, None)

    def _open(self, kind: type, make: Callable[[], Any] | None) -> None:
        """Go to a top-level screen: back to the main one, then that one on top (no stack of
        screens growing as the user hops between them)."""
        if isinstance(self.screen, kind):
            return
        while len(self.screen_stack) > 2:  # the default screen, then MainScreen
            self.pop_screen()
        if make is not None:
            self.push_screen(make())
