"""The log pane in a tiny app driven with Textual's Pilot: a flood of lines stays within
`max_lines` and the keys still answer; follow mode, pause, search and the level filter
as an operator uses them; and, against the session's real nats-server, an execution's
log followed live, each line once, in order. `log_batches` (history then live) is read
on its own too: from the stream with duplicates, and from a real store then the stream.

The log arrives asynchronously over NATS: those tests poll with deadlines, never
assert on wall-clock speed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from expectations import eventually
from test_store import ACME, _stack

from broker import ids, subjects
from broker.client import ApiClient
from broker.log_feed import log_batches
from broker.timestamps import to_iso
from tui.widgets.log_pane import DEFAULT_MAX_LINES, LogPane, line_segments

SIZE = (120, 40)


class PaneApp(App[None]):
    """A screen holding one LogPane, animations off so scrolls land at once."""

    def __init__(self, max_lines: int = DEFAULT_MAX_LINES) -> None:
        super().__init__()
        self.max_lines = max_lines
        self.animation_level = "none"

    def compose(self) -> ComposeResult:
        yield LogPane(max_lines=self.max_lines)

    @property
    def pane(self) -> LogPane:
        return self.query_one(LogPane)


def make_lines(first: int, count: int, execution_id: str = "EXEC1", **fields: Any) -> list[dict[str, Any]]:
    """LogLine dicts idx first..first+count-1, message `line {idx}` unless `msg` is given
    as a function of idx."""
    message: Callable[[int], str] = fields.pop("msg", lambda idx: f"line {idx}")
    return [{"idx": idx, "ts": to_iso(datetime.now(UTC)), "level": "info", "stream": "stdout", "action_index": 0,
             "msg": message(idx), "execution_id": execution_id, **fields} for idx in range(first, first + count)]


def idxs(pane: LogPane) -> list[int]:
    return [line["idx"] for line in pane.rows]


def screen_lines(pane: LogPane) -> list[str]:
    """The text of each line the view shows now."""
    return [pane.view.render_line(y).text.rstrip() for y in range(pane.view.size.height)]


async def until(pilot: Pilot, probe: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Let the app run until `probe()` holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        assert loop.time() < deadline, f"{what} not reached within {timeout:g} s"
        await pilot.pause(0.05)


# ---- the pane on its own ----------------------------------------------------------------


async def test_a_flood_of_lines_keeps_only_the_newest_max_lines_and_the_keys_still_answer():
    app = PaneApp(max_lines=20_000)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.pane
        for first in range(1, 50_001, 1000):
            pane.append_lines(make_lines(first, 1000))
            await pilot.pause()

        assert idxs(pane) == list(range(30_001, 50_001))
        assert pane.following and pane.view.is_vertical_scroll_end
        assert screen_lines(pane)[-1].startswith("  50000  ")
        assert "20,000 lines" in pane.status_text

        await asyncio.wait_for(pilot.press("g"), timeout=30)
        assert pane.view.scroll_y == 0 and not pane.following
        assert screen_lines(pane)[0].startswith("  30001  ")


async def test_follow_mode_keeps_the_bottom_until_the_user_scrolls_up_and_f_resumes_it():
    app = PaneApp()
    async with app.run_test(size=SIZE) as pilot:
        pane = app.pane
        pane.append_lines(make_lines(1, 100))
        await pilot.pause()
        pane.append_lines(make_lines(101, 50))
        await pilot.pause()
        assert pane.following and pane.view.is_vertical_scroll_end
        assert screen_lines(pane)[-1].endswith("line 150")
        assert "following" in pane.status_text

        await pilot.press("pageup")
        assert not pane.following
        top = pane.view.scroll_y
        pane.append_lines(make_lines(151, 30))
        await pilot.pause()
        assert pane.view.scroll_y == top, "new lines do not move a reader who scrolled up"
        assert "not following · 30 new lines" in pane.status_text

        await pilot.press("f")
        assert pane.following and pane.view.is_vertical_scroll_end
        assert screen_lines(pane)[-1].endswith("line 180")
        assert "following" in pane.status_text and "new lines" not in pane.status_text
        pane.append_lines(make_lines(181, 5))
        await pilot.pause()
        assert screen_lines(pane)[-1].endswith("line 185")

        await pilot.press("f")  # f again: stop following where we are
        pane.append_lines(make_lines(186, 5))
        await pilot.pause()
        assert screen_lines(pane)[-1].endswith("line 185")
        assert "not following · 5 new lines" in pane.status_text
        await pilot.press("G")
        assert pane.following and screen_lines(pane)[-1].endswith("line 190")


async def test_pause_holds_new_lines_back_with_their_count_until_unpaused():
    app = PaneApp()
    async with app.run_test(size=SIZE) as pilot:
        pane = app.pane
        pane.append_lines(make_lines(1, 10))
        await pilot.press("p")
        pane.append_lines(make_lines(11, 15))
        pane.append_lines(make_lines(26, 5))
        await pilot.pause()
        assert idxs(pane) == list(range(1, 11))
        assert not any("line 11" in text for text in screen_lines(pane))
        assert "paused · 20 new lines" in pane.status_text

        await pilot.press("p")
        assert idxs(pane) == list(range(1, 31))
        assert "paused" not in pane.status_text and "following" in pane.status_text
        assert any(text.endswith("line 30") for text in screen_lines(pane))


async def test_search_highlights_matches_and_n_and_N_move_between_them():
    app = PaneApp()
    async with app.run_test(size=SIZE) as pilot:
        pane = app.pane
        pane.append_lines(make_lines(1, 500, msg=lambda idx: f"step {idx} found the NEEDLE" if idx % 100 == 0
                                     else f"step {idx}"))
        await pilot.press("g", "slash")
        await pilot.press(*"needle", "enter")
        assert "/needle 1/5" in pane.status_text
        assert pane.view.current_match is not None

        row = pane.book.row_at_or_after(pane.view.current_match)
        assert pane.rows[row]["idx"] == 100
        highlight = pane.view.line_styles[1]
        assert highlight.bgcolor is not None
        marked = [segment.text for segment in pane.view.row_strip(row) if segment.style
                  and segment.style.bgcolor == highlight.bgcolor]
        assert marked == ["NEEDLE"]
        assert not [segment for segment in pane.view.row_strip(row - 1) if segment.style
                    and segment.style.bgcolor == highlight.bgcolor]

        await pilot.press("n")
        row = pane.book.row_at_or_after(pane.view.current_match)
        assert pane.rows[row]["idx"] == 200 and "/needle 2/5" in pane.status_text
        assert any(text.endswith("step 200 found the NEEDLE") for text in screen_lines(pane)), "the match is on screen"
        await pilot.press("N", "N")
        assert pane.rows[pane.book.row_at_or_after(pane.view.current_match)]["idx"] == 500, "N wraps to the last"

        await pilot.press("escape")
        assert "/needle" not in pane.status_text and not pane.book.matches


async def test_escape_closes_the_search_box_without_searching():
    app = PaneApp()
    async with app.run_test(size=SIZE) as pilot:
        pane = app.pane
        pane.append_lines(make_lines(1, 10))
        await pilot.press("slash", "n")
        assert pane.query_one("#log-search").has_focus, "typing goes to the search box"
        await pilot.press("escape")
        assert pane.view.has_focus and not pane.has_class("-searching")
        assert not pane.book.term and "/n" not in pane.status_text


async def test_the_level_filter_cycles_from_all_to_errors_and_back():
    app = PaneApp()
    levels = ["debug", "info", "warning", "error"]
    async with app.run_test(size=SIZE) as pilot:
        pane = app.pane
        for idx in range(1, 41):
            pane.append_lines(make_lines(idx, 1, level=levels[idx % 4]))
        assert len(pane.rows) == 40 and "all levels" in pane.status_text

        await pilot.press("l")
        assert {line["level"] for line in pane.rows} == {"info", "warning", "error"}
        await pilot.press("l")
        assert {line["level"] for line in pane.rows} == {"warning", "error"}
        assert "20 of 40 lines · warning+" in pane.status_text
        assert not [text for text in screen_lines(pane) if text.endswith(("line 1", "line 5", "line 9"))], "info"
        await pilot.press("l")
        assert {line["level"] for line in pane.rows} == {"error"}
        pane.append_lines(make_lines(41, 4, level="info"))
        assert len(pane.rows) == 10, "new lines pass the filter too"
        await pilot.press("l")
        assert len(pane.rows) == 44 and "all levels" in pane.status_text


def test_a_line_reads_idx_time_and_message_in_its_level_colour_with_stderr_marked():
    [out] = make_lines(7, 1, msg=lambda _: "all good")
    [err] = make_lines(12345, 1, level="error", stream="stderr", msg=lambda _: "disk\tfull\x1b[31m!")
    assert re.fullmatch(r"      7  \d\d:\d\d:\d\d  all good", "".join(s.text for s in line_segments(out)))
    segments = line_segments(err)
    assert re.fullmatch(r"  12345  \d\d:\d\d:\d\d ▍disk    full!", "".join(s.text for s in segments))
    assert segments[-1].style.color.name == "red" and segments[1].text == "▍"


# ---- against a real nats-server -----------------------------------------------------------


async def publish(nc: Client, subject: str, events: list[dict[str, Any]]) -> None:
    js = nc.jetstream()
    for event in events:
        await js.publish(subject, json.dumps(event).encode())


def succeeded(execution_id: str) -> dict[str, Any]:
    return {"id": execution_id, "status": "succeeded", "updated_at": to_iso(datetime.now(UTC))}


async def test_following_an_execution_shows_each_line_once_in_order_until_the_run_ends(nc, api, org):
    execution_id = ids.new_id()
    log = subjects.exec_event(org, execution_id, "log")
    await publish(nc, log, make_lines(1, 300, execution_id) + make_lines(150, 20, execution_id))
    app = PaneApp()
    async with app.run_test(size=SIZE) as pilot:
        pane = app.pane
        worker = pane.follow_execution(api, execution_id)
        await until(pilot, lambda: len(pane.rows) >= 300, what="the 300 lines published before")

        await publish(nc, log, make_lines(290, 211, execution_id))  # 290..300 again, then 301..500
        await publish(nc, subjects.exec_event(org, execution_id, "state"), [succeeded(execution_id)])
        await asyncio.wait_for(worker.wait(), timeout=20)
        await pilot.pause()

        assert idxs(pane) == list(range(1, 501))
        assert pane.status_text.startswith(execution_id) and "run ended" in pane.status_text
        assert screen_lines(pane)[-1].endswith("line 500")

        pane.follow_execution(api, None)
        await pilot.pause()
        assert pane.rows == [] and pane.status_text.startswith("no execution")


async def test_choosing_another_execution_shows_only_its_log_and_stops_following_the_first(nc, api, org):
    first, second = ids.new_id(), ids.new_id()
    await publish(nc, subjects.exec_event(org, first, "log"), make_lines(1, 50, first))
    await publish(nc, subjects.exec_event(org, second, "log"), make_lines(1, 20, second, msg=lambda idx: f"b{idx}"))
    app = PaneApp()
    async with app.run_test(size=SIZE) as pilot:
        pane = app.pane
        following_first = pane.follow_execution(api, first)
        await until(pilot, lambda: len(pane.rows) == 50, what="the first execution's lines")

        following_second = pane.follow_execution(api, second)
        await publish(nc, subjects.exec_event(org, first, "log"), make_lines(51, 10, first))
        await until(pilot, lambda: len(pane.rows) == 20, what="the second execution's lines")
        await pilot.pause(0.3)  # time for a stray line of the first to show, were it still followed
        assert {line["execution_id"] for line in pane.rows} == {second}
        assert following_first.is_cancelled and not following_second.is_finished

        pane.follow_execution(api, None)
        await pilot.pause()
        assert following_second.is_cancelled and pane.rows == []


async def collect(api: ApiClient, execution_id: str, follow: bool = False, after_idx: int = 0) -> list[list[int]]:
    """The idx of each line `log_batches` yields, batch by batch."""
    batches = []
    async for batch in log_batches(api, execution_id, follow=follow, after_idx=after_idx):
        batches.append([line["idx"] for line in batch])
    return batches


async def test_log_batches_yields_each_stream_line_once_however_often_it_was_published(nc, api, org):
    execution_id = ids.new_id()
    log = subjects.exec_event(org, execution_id, "log")
    await publish(nc, log, make_lines(1, 100, execution_id) + make_lines(50, 70, execution_id)
                  + make_lines(120, 1, execution_id) + make_lines(1, 5, execution_id))

    batches = await asyncio.wait_for(collect(api, execution_id), timeout=20)
    assert all(batches) and sum(batches, []) == list(range(1, 121))
    assert sum(await asyncio.wait_for(collect(api, execution_id, after_idx=100), timeout=20), []) == list(
        range(101, 121))

    # Following, it waits for the run to end: lines published meanwhile come, then it stops.
    follower = asyncio.create_task(collect(api, execution_id, follow=True))
    await asyncio.sleep(0.8)  # longer than QUIET_SECONDS: without the final state it must not stop
    assert not follower.done()
    await publish(nc, log, make_lines(121, 10, execution_id))
    await publish(nc, subjects.exec_event(org, execution_id, "state"), [succeeded(execution_id)])
    assert sum(await asyncio.wait_for(follower, timeout=20), []) == list(range(1, 131))


async def test_log_batches_reads_the_stores_pages_then_only_newer_stream_lines(tmp_path: Path):
    async with _stack(tmp_path, with_store=True) as stack:
        execution_id = ids.new_id()
        log = subjects.exec_event(ACME, execution_id, "log")
        await stack.publish_lines(ACME, execution_id, 4500)  # more than two pages of the store's 2000

        async def stored() -> bool:
            rows = await stack.sql("SELECT count(*) AS n FROM logs WHERE execution_id = ?", [execution_id])
            return rows[0]["n"] == 4500

        await eventually(stored, 30.0, 0.2, "4500 lines stored")
        # Lines 1..4500 now only in the store, 4490..4600 on the stream (the store may take them too).
        await stack.js.purge_stream("BD_EVENTS", subject=log)
        await publish(stack.nc, log, make_lines(4490, 111, execution_id))

        batches = await asyncio.wait_for(collect(stack.api(), execution_id), timeout=30)
        assert sum(batches, []) == list(range(1, 4601))
        stored_part = batches[:next(n for n, batch in enumerate(batches) if batch[-1] >= 4500) + 1]
        assert len(stored_part) >= 3 and all(len(batch) <= 2000 for batch in stored_part), "paged by the store"


async def test_without_jetstream_the_log_is_the_history_then_the_orgs_events_with_no_gap(tmp_path: Path,
                                                                                          monkeypatch):
    """A user of an org's account has no JetStream: the history comes from the store and
    the live lines from the org's events. Lines published before the follower subscribed
    that the store had not ingested yet are asked of it again until it has them."""
    from broker import streams

    async def no_jetstream(nc: Any, timeout: float = 5.0) -> bool:
        return False

    monkeypatch.setattr(streams, "has_jetstream", no_jetstream)
    async with _stack(tmp_path, with_store=False) as stack:
        execution_id = ids.new_id()
        log = subjects.exec_event(ACME, execution_id, "log")
        await publish(stack.nc, log, make_lines(1, 50, execution_id))  # no store: in no history yet
        follower = asyncio.create_task(collect(stack.api(), execution_id, follow=True))
        await asyncio.sleep(0.5)
        await publish(stack.nc, log, make_lines(51, 10, execution_id))  # live, after a gap of 50
        await asyncio.sleep(1.0)
        assert not follower.done()
        await stack.start_store()  # the store ingests 1..60: the gap is filled from it
        await publish(stack.nc, log, make_lines(61, 5, execution_id))
        await publish(stack.nc, subjects.exec_event(ACME, execution_id, "state"), [succeeded(execution_id)])
        assert sum(await asyncio.wait_for(follower, timeout=30), []) == list(range(1, 66))
