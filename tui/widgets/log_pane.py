"""The log pane: one execution's log, history then live (broker.log_feed).

Lines live in a bounded list (the newest `max_lines`) and are drawn by a line-API
ScrollView that renders only the rows on screen, each at most once while it stays in
an LRU cache: a task printing 10 000 lines a second costs one list extend and one
repaint per batch, never a widget or a call per line.

Follow mode holds the view at the bottom while it is there; scrolling up turns it off
and counts the new lines instead. Pause holds new lines back altogether. A level
filter, and a search that highlights its matches, narrow what is shown.
"""

from __future__ import annotations

import contextlib
import re
from bisect import bisect_left, bisect_right
from operator import attrgetter
from typing import Any, NamedTuple

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Input, Static
from textual.worker import Worker, WorkerState

from broker.client import ApiClient
from broker.log_feed import log_batches
from broker.timestamps import parse_iso

DEFAULT_MAX_LINES = 100_000
LOG_FOLLOW_GROUP = "log-follow"
RENDER_CACHE_ROWS = 2048
MAX_LINE_CELLS = 10_000
"""The widest a line may scroll horizontally (cells); longer lines are cut there."""

LEVEL_RANK = {"debug": 0, "info": 1, "warning": 2, "error": 3}
LEVEL_FILTERS = ("all", "info", "warning", "error")
"""The level filter's cycle: the lowest level shown."""
FILTER_LABELS = {"all": "all levels", "info": "info+", "warning": "warning+", "error": "errors"}
LEVEL_STYLES = {"error": "red", "warning": "yellow", "debug": "dim"}
STREAM_MARKS = {"stderr": ("▍", "bold red"), "runner": ("»", "cyan")}
"""The mark before the message of a line not from stdout, and its style."""
PREFIX_CELLS = len("1234567  12:34:56  ")

# Styles built once: a line is rendered from Segments directly, Rich Text would cost more.
_PLAIN = Style()
_DIM = Style(dim=True)
_FOUND = Style(reverse=True)
_LEVEL_STYLES = {level: Style.parse(style) for level, style in LEVEL_STYLES.items()}
_STREAM_MARKS = {stream: (mark, Style.parse(style)) for stream, (mark, style) in STREAM_MARKS.items()}

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Entry(NamedTuple):
    """A line in the pane: `seq` numbers lines in arrival order (idx may repeat across
    a clear), so rows, matches and the render cache can refer to it."""

    seq: int
    line: dict[str, Any]


_seq_of = attrgetter("seq")


def line_segments(line: dict[str, Any], base: Style = _PLAIN, find: re.Pattern[str] | None = None,
                  found: Style = _FOUND) -> list[Segment]:
    """`idx  HH:MM:SS  msg` (local time) over `base`: the message in its level's colour,
    stderr and runner lines marked before it, what `find` matches in it styled `found`."""
    mark, mark_style = _STREAM_MARKS.get(line.get("stream") or "stdout", (" ", _PLAIN))
    message = _printable(line.get("msg") or "")[:MAX_LINE_CELLS]
    message_style = base + _LEVEL_STYLES.get(line.get("level") or "info", _PLAIN)
    segments = [Segment(f"{line.get('idx') or 0:>7}  {_clock(line.get('ts'))} ", base + _DIM),
                Segment(mark, base + mark_style)]
    if find is None:
        return [*segments, Segment(message, message_style)]
    position = 0
    for match in find.finditer(message):
        segments.append(Segment(message[position:match.start()], message_style))
        segments.append(Segment(match.group(), message_style + found))
        position = match.end()
    segments.append(Segment(message[position:], message_style))
    return [segment for segment in segments if segment.text]


def _clock(ts: Any) -> str:
    try:
        return parse_iso(ts).astimezone().strftime("%H:%M:%S")
    except (TypeError, ValueError, AttributeError):
        return "--:--:--"


def _printable(msg: str) -> str:
    # A task's colours and cursor moves would garble the pane: drop escapes, show other controls.
    return _CONTROL.sub("�", _ANSI_ESCAPE.sub("", msg).expandtabs())


class LogBook:
    """The pane's lines (the newest `max_lines`), the rows the level filter shows, and
    the rows a search matches. Plain data: no Textual."""

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self.entries: list[Entry] = []
        self.rows: list[Entry] = []
        """The entries the level filter shows, oldest first."""
        self.matches: list[int] = []
        """Seqs of the rows the search term matches, oldest first."""
        self.level = "all"
        self.term = ""
        self.width = 0
        """Cells of the widest line held."""
        self._needle = ""
        self._next_seq = 0

    def add(self, lines: list[dict[str, Any]]) -> tuple[int, int]:
        """Take `lines` (oldest first); return (rows added, rows dropped off the top
        because more than `max_lines` lines are held)."""
        first = self._next_seq
        self._next_seq += len(lines)
        entries = [Entry(first + n, line) for n, line in enumerate(lines)]
        del entries[:-self.max_lines]  # of a batch larger than the pane, only the newest fit
        self.entries.extend(entries)
        shown = [entry for entry in entries if self._shows(entry)] if self.level != "all" else entries
        self.rows.extend(shown)
        if self.term:
            self.matches.extend(entry.seq for entry in shown if self._matches(entry))
        if entries:
            longest = max(len(entry.line.get("msg") or "") for entry in entries)
            self.width = min(MAX_LINE_CELLS, max(self.width, PREFIX_CELLS + longest))
        return len(shown), self._trim()

    def clear(self) -> None:
        self.entries.clear()
        self.rows.clear()
        self.matches.clear()
        self.term = self._needle = ""
        self.width = 0

    def set_level(self, level: str) -> None:
        """Show lines of `level` and above (`all`: every line)."""
        self.level = level
        self.rows = [entry for entry in self.entries if self._shows(entry)] if level != "all" else list(self.entries)
        self._find()

    def set_term(self, term: str) -> None:
        """Match the rows whose message holds `term` (any case); "" ends the search."""
        self.term = term
        self._needle = term.lower()
        self._find()

    def row_at_or_after(self, seq: int) -> int:
        """The index of the first row whose seq is >= `seq` (len(rows) if none)."""
        return bisect_left(self.rows, seq, key=_seq_of)

    def match_after(self, seq: int) -> int | None:
        """The first match after `seq`, wrapping to the first one."""
        if not self.matches:
            return None
        position = bisect_right(self.matches, seq)
        return self.matches[position % len(self.matches)]

    def match_before(self, seq: int) -> int | None:
        """The last match before `seq`, wrapping to the last one."""
        if not self.matches:
            return None
        return self.matches[bisect_left(self.matches, seq) - 1]

    def _shows(self, entry: Entry) -> bool:
        return LEVEL_RANK.get(entry.line.get("level") or "info", 1) >= LEVEL_RANK[self.level]

    def _matches(self, entry: Entry) -> bool:
        return self._needle in (entry.line.get("msg") or "").lower()

    def _find(self) -> None:
        self.matches = [entry.seq for entry in self.rows if self._matches(entry)] if self.term else []

    def _trim(self) -> int:
        excess = len(self.entries) - self.max_lines
        if excess <= 0:
            return 0
        first_kept = self.entries[excess].seq
        del self.entries[:excess]
        dropped = self.row_at_or_after(first_kept)
        del self.rows[:dropped]
        del self.matches[:bisect_left(self.matches, first_kept)]
        return dropped


class LogView(ScrollView, can_focus=True, inherit_bindings=False):
    """Draws a LogBook's rows; follows the bottom while it is there."""

    # Home/end belong to the pane (top/bottom also set follow mode); the rest scrolls.
    BINDINGS = [
        Binding("up", "scroll_up", "Scroll up", show=False),
        Binding("down", "scroll_down", "Scroll down", show=False),
        Binding("left", "scroll_left", "Scroll left", show=False),
        Binding("right", "scroll_right", "Scroll right", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
    ]
    COMPONENT_CLASSES = {"log-view--match", "log-view--current"}
    DEFAULT_CSS = """
    LogView {
        height: 1fr;
        background: $surface;
        &:focus { background-tint: $foreground 5%; }
        & > .log-view--match { background: $secondary; color: auto; text-style: bold; }
        & > .log-view--current { background: $primary 40%; }
    }
    """

    class Changed(Message):
        """Follow mode or the count of unseen lines changed (bursts collapse into one)."""

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, LogView.Changed)

    def __init__(self, book: LogBook, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.book = book
        self.following = True
        self.new_lines = 0
        """Rows added below the screen since follow mode went off."""
        self.current_match: int | None = None
        """The seq of the search match the user moved to."""
        self._cache: LRUCache[tuple[int, str, bool], Strip] = LRUCache(RENDER_CACHE_ROWS)
        self._styles: tuple[Style, Style, Style] | None = None

    @property
    def top_seq(self) -> int | None:
        """The seq of the first row on screen."""
        row = round(self.scroll_y)
        return self.book.rows[row].seq if row < len(self.book.rows) else None

    def rows_added(self, added: int, dropped: int) -> None:
        """After the book took lines: stay at the bottom, or keep the user's place."""
        self._resize_content()
        if self.current_match is not None and (not self.book.matches or self.current_match < self.book.matches[0]):
            self.current_match = None  # dropped off the top
        if self.following:
            self._jump(self.max_scroll_y)
        else:
            self.new_lines += added
            if dropped:
                self._jump(max(0, self.scroll_y - dropped))
            self.post_message(self.Changed())
        first_new = len(self.book.rows) - added
        if self.following or dropped or first_new < self.scroll_y + self.size.height:
            self.refresh()  # else the new rows are all below the screen: the scrollbar alone changed

    def rows_replaced(self, keep_seq: int | None) -> None:
        """After the rows changed (filter, clear): show `keep_seq` on top, or the bottom."""
        self._resize_content()
        if self.following or keep_seq is None:
            self._jump(self.max_scroll_y if self.following else 0)
        else:
            self._jump(self.book.row_at_or_after(keep_seq))
        self.refresh()

    def reset(self) -> None:
        self._cache.clear()
        self.current_match = None
        self.new_lines = 0
        self.following = True
        self.rows_replaced(None)

    def follow(self, on: bool) -> None:
        """Turn follow mode on (jump to the bottom) or off (stay)."""
        self.following = on
        if on:
            self.new_lines = 0
            self._jump(self.max_scroll_y)
        self.post_message(self.Changed())

    def go_top(self) -> None:
        self._jump(0)  # follow mode goes off in watch_scroll_y (if it scrolled)

    def show_match(self, seq: int | None) -> None:
        """Scroll the match `seq` to the middle of the screen and mark it; follow goes off."""
        self.current_match = seq
        if seq is not None:
            self.following = False
            self._jump(max(0, self.book.row_at_or_after(seq) - self.size.height // 2))
        self.post_message(self.Changed())
        self.refresh()

    def _resize_content(self) -> None:
        # Setting `virtual_size` lays the whole screen out again, for every batch. Only a
        # scrollbar appearing or going needs that; otherwise updating the scrollbars will do.
        size = Size(self.book.width, len(self.book.rows))
        if size == self.virtual_size:
            return
        scrollbars = (self.show_vertical_scrollbar, self.show_horizontal_scrollbar)
        self.set_reactive(ScrollView.virtual_size, size)
        self._scroll_update(size)
        if (self.show_vertical_scrollbar, self.show_horizontal_scrollbar) != scrollbars:
            self.refresh(layout=True)

    def _jump(self, y: float) -> None:
        # force: scrolling is refused until the scrollbar shows, which only the next layout does.
        self.scroll_to(y=y, animate=False, force=True)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        at_bottom = self.is_vertical_scroll_end
        if at_bottom != self.following:  # the user scrolled away from the bottom, or back to it
            self.following = at_bottom
            self.new_lines = 0
            self.post_message(self.Changed())

    def on_resize(self) -> None:
        if self.following:
            self._jump(self.max_scroll_y)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()
        self._styles = None

    @property
    def line_styles(self) -> tuple[Style, Style, Style]:
        """The base, search-match and current-match styles, until the CSS changes
        (computing `rich_style` for every line would cost more than rendering it)."""
        if self._styles is None:
            self._styles = (self.rich_style, self.get_component_rich_style("log-view--match"),
                            self.get_component_rich_style("log-view--current"))
        return self._styles

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        row = scroll_y + y
        width = self.size.width
        base = self.line_styles[0]
        if row >= len(self.book.rows):
            return Strip.blank(width, base)
        return self.row_strip(row).crop_extend(scroll_x, scroll_x + width, base)

    def row_strip(self, row: int) -> Strip:
        """The whole rendered row `row` (cached while the search term stays the same)."""
        entry = self.book.rows[row]
        key = (entry.seq, self.book.term, entry.seq == self.current_match)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._cache[key] = self._render_entry(entry, current=key[2])
        return strip

    def _render_entry(self, entry: Entry, current: bool) -> Strip:
        base, found, current_style = self.line_styles
        find = re.compile(re.escape(_printable(self.book.term)), re.IGNORECASE) if self.book.term else None
        segments = line_segments(entry.line, base + current_style if current else base, find, found)
        return Strip(segments, sum(cell_len(segment.text) for segment in segments))


class LogPane(Widget):
    """One execution's log with follow, pause, search and a level filter.

    `follow_execution(api, id)` streams an execution into it; `append_lines` and
    `clear` feed it directly.
    """

    BINDINGS = [
        Binding("f", "toggle_follow", "Follow", id="log_pane.follow"),
        Binding("G,end", "bottom", "Bottom", id="log_pane.bottom"),
        Binding("g,home", "top", "Top", id="log_pane.top"),
        Binding("p", "toggle_pause", "Pause", id="log_pane.pause"),
        Binding("slash", "open_search", "Search", id="log_pane.search"),
        Binding("n", "next_match", "Next match", id="log_pane.next_match"),
        Binding("N", "previous_match", "Prev match", id="log_pane.previous_match"),
        Binding("l", "cycle_level", "Level", id="log_pane.level"),
        Binding("escape", "close_search", "Close search", id="log_pane.close_search"),
    ]
    DEFAULT_CSS = """
    LogPane {
        height: 1fr;
        & > #log-status { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
        & > #log-search { dock: bottom; display: none; }
        &.-searching > #log-search { display: block; }
    }
    """

    def __init__(self, *, max_lines: int = DEFAULT_MAX_LINES, **kwargs: Any) -> None:
        """`max_lines`: the most lines held; older ones are dropped as new ones come."""
        if max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, not {max_lines}")
        super().__init__(**kwargs)
        self.book = LogBook(max_lines)
        self.execution_id: str | None = None
        self.paused = False
        self.held_count = 0
        """Lines that came while paused (some may be dropped again past max_lines)."""
        self._held: list[dict[str, Any]] = []
        self._feed_state = ""
        """How the followed log stream stands: "", "run ended" or "error: …"."""
        self._worker: Worker[None] | None = None
        self._status = Static(id="log-status")
        self._view = LogView(self.book, id="log-lines")

    def compose(self) -> ComposeResult:
        yield self._status
        yield self._view
        yield Input(placeholder="search the log (enter: find, escape: close)", id="log-search")

    def on_mount(self) -> None:
        self._status.update(self._status_line())  # `is_mounted` turns true only after this handler

    # ---- public API -------------------------------------------------------------

    @property
    def view(self) -> LogView:
        """The scrolling view of the lines."""
        return self._view

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The lines shown (the level filter applied), oldest first."""
        return [entry.line for entry in self.book.rows]

    @property
    def following(self) -> bool:
        return self._view.following

    @property
    def status_text(self) -> str:
        """The status line as plain text."""
        return self._status_line().plain

    def focus(self, scroll_visible: bool = True) -> LogPane:
        """Focus the lines (the pane itself takes no keys but through them)."""
        self._view.focus(scroll_visible)
        return self

    def follow_execution(self, api: ApiClient, execution_id: str | None) -> Worker[None] | None:
        """Show `execution_id`'s log (stored lines, then live ones) until its run ends,
        in place of what the pane showed; None just clears the pane."""
        self.clear()
        self.execution_id = execution_id
        if execution_id is None:
            self.workers.cancel_group(self, LOG_FOLLOW_GROUP)
            self._worker = None
            self._update_status()
            return None
        self._worker = self._stream_log(api, execution_id)
        return self._worker

    def append_lines(self, lines: list[dict[str, Any]]) -> None:
        """Add LogLine dicts (oldest first) in one update; held back while paused."""
        if not lines:
            return
        if self.paused:
            self.held_count += len(lines)
            self._held.extend(lines)
            del self._held[:-self.book.max_lines]
        else:
            self._view.rows_added(*self.book.add(lines))
        self._update_status()

    def clear(self) -> None:
        """Empty the pane: lines, held lines, search; follow on, pause off."""
        self.book.clear()
        self._held.clear()
        self.held_count = 0
        self.paused = False
        self._feed_state = ""
        self._view.reset()
        self._update_status()

    # ---- streaming --------------------------------------------------------------

    # exit_on_error=False: a lost connection or a failing store shows in the status line
    # (on_worker_state_changed) instead of closing the dashboard.
    @work(exclusive=True, group=LOG_FOLLOW_GROUP, exit_on_error=False)
    async def _stream_log(self, api: ApiClient, execution_id: str) -> None:
        # aclosing: a cancelled worker (another execution chosen) releases its subscriptions now.
        async with contextlib.aclosing(log_batches(api, execution_id, follow=True)) as batches:
            async for batch in batches:
                self.append_lines(batch)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self._worker:
            return  # a worker of an execution no longer shown
        if event.state == WorkerState.SUCCESS:
            self._feed_state = "run ended"
        elif event.state == WorkerState.ERROR:
            self._feed_state = f"error: {event.worker.error}"
        self._update_status()

    # ---- actions ----------------------------------------------------------------

    def action_toggle_follow(self) -> None:
        self._view.follow(not self._view.following)

    def action_bottom(self) -> None:
        self._view.follow(True)

    def action_top(self) -> None:
        self._view.go_top()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            held, self._held, self.held_count = self._held, [], 0
            if held:
                self._view.rows_added(*self.book.add(held))
        self._update_status()

    def action_cycle_level(self) -> None:
        keep = self._view.top_seq
        self.book.set_level(LEVEL_FILTERS[(LEVEL_FILTERS.index(self.book.level) + 1) % len(LEVEL_FILTERS)])
        self._view.rows_replaced(keep)
        self._update_status()

    def action_open_search(self) -> None:
        self.add_class("-searching")
        search = self.query_one("#log-search", Input)
        search.value = self.book.term
        search.focus()
        self.refresh_bindings()

    def action_close_search(self) -> None:
        """Close the search box; with it closed, end the search."""
        if self.has_class("-searching"):
            self.remove_class("-searching")
            self._view.focus()
        else:
            self._search("")
        self.refresh_bindings()

    def action_next_match(self) -> None:
        current = self._view.current_match
        self._view.show_match(self.book.match_after(self._start_seq() - 1 if current is None else current))
        self._update_status()

    def action_previous_match(self) -> None:
        current = self._view.current_match
        self._view.show_match(self.book.match_before(self._start_seq() if current is None else current))
        self._update_status()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("next_match", "previous_match"):
            return True if self.book.matches else None  # None: shown, greyed out
        if action == "close_search":
            return True if self.has_class("-searching") or self.book.term else None
        return True

    # ---- events -----------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.remove_class("-searching")
        self._view.focus()
        self._search(event.value)

    def on_log_view_changed(self, event: LogView.Changed) -> None:
        event.stop()
        self._update_status()

    # ---- helpers ----------------------------------------------------------------

    def _search(self, term: str) -> None:
        self.book.set_term(term)
        self._view.current_match = None
        if self.book.matches:
            self._view.show_match(self.book.match_after(self._start_seq() - 1))
        self._view.refresh()
        self.refresh_bindings()
        self._update_status()

    def _start_seq(self) -> int:
        """Where a search starts: the first row on screen."""
        top = self._view.top_seq
        return top if top is not None else 0

    def _update_status(self) -> None:
        if self.is_mounted:
            self._status.update(self._status_line(), layout=False)

    def _status_line(self) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(self.execution_id or "no execution", "bold")
        shown, held = len(self.book.rows), len(self.book.entries)
        count = f"{shown:,} lines" if shown == held else f"{shown:,} of {held:,} lines"
        line.append(f" · {count} · {FILTER_LABELS[self.book.level]} · ")
        if self.paused:
            line.append(f"paused · {self.held_count:,} new lines", "bold yellow")
        elif self._view.following:
            line.append("following", "green")
        else:
            line.append(f"not following · {self._view.new_lines:,} new lines", "yellow")
        if self.book.term:
            line.append(f" · /{self.book.term} {self._match_position()}")
        if self._feed_state:
            line.append(f" · {self._feed_state}", "red" if self._feed_state.startswith("error") else "dim")
        return line

    def _match_position(self) -> str:
        matches, current = self.book.matches, self._view.current_match
        if current is None or not matches:
            return f"{len(matches)} matches"
        return f"{bisect_left(matches, current) + 1}/{len(matches)}"
