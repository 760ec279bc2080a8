"""Module tasks: Python handlers registered under the entry-point group
`batchdeck.modules`.

A handler is an async callable taking a ModuleContext, wrapped by `@module(...)` with its
description and parameter schema:

    @module("greet", "Say hello", params=[Param(name="who", type="string", required=True)])
    async def greet(ctx):
        ctx.log(f"hello {ctx.params['who']}")
        ctx.progress(100, "done")
        return {"greeted": ctx.params["who"]}

and registered in the package's pyproject.toml:

    [project.entry-points."batchdeck.modules"]
    greet = "mypackage.tasks:greet"
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from broker.module_params import validate_params
from broker.types import ModuleInfo, ModuleParam

__all__ = ["Module", "ModuleContext", "Param", "load_modules", "module", "validate_params"]

log = logging.getLogger("batchdeck.runner")

ENTRY_POINT_GROUP = "batchdeck.modules"
LEVELS = ("debug", "info", "warning", "error")

Param = ModuleParam

@dataclass
class ModuleContext:
    """What a handler gets: its inputs, a place for state, and ways to report."""

    params: dict[str, Any]
    context: dict[str, Any]
    state: dict[str, Any]
    execution_id: str
    cancelled: asyncio.Event
    _log: Callable[[str, str], Awaitable[None]]
    _progress: Callable[[float | None, str | None], Awaitable[None]]
    _run: Callable[[list[str]], Awaitable[int]]
    _pending: list[asyncio.Task[None]] = field(default_factory=list)

    def log(self, message: str, level: str = "info") -> None:
        """Log a line (shown live, kept in history); level debug, info, warning or error."""
        if level not in LEVELS:
            level = "info"
        self._pending.append(asyncio.ensure_future(self._log(str(message), level)))

    def progress(self, percent: float | None, text: str | None = None) -> None:
        """Report progress, 0-100."""
        self._pending.append(asyncio.ensure_future(self._progress(percent, text)))

    async def run(self, argv: list[str]) -> int:
        """Run a command with its output logged as this action's; returns its exit code."""
        return await self._run(argv)

    async def settle(self) -> None:
        """Wait for the logs and progress reported so far."""
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)


Handler = Callable[[ModuleContext], Awaitable[Any]]


@dataclass
class Module:
    name: str
    description: str
    params: list[ModuleParam]
    handler: Handler

    def info(self) -> ModuleInfo:
        return ModuleInfo(name=self.name, description=self.description, params=self.params)


def module(name: str, description: str = "", params: list[ModuleParam] | None = None) -> Callable[[Handler], Module]:
    """Declare a handler as a module with its parameter schema."""

    def wrap(handler: Handler) -> Module:
        return Module(name=name, description=description, params=params or [], handler=handler)

    return wrap


def load_modules() -> dict[str, Module]:
    """Every module registered under `batchdeck.modules`; a broken one is logged and skipped."""
    found: dict[str, Module] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as err:  # a broken plugin must not stop the runner
            log.error("module %s (%s) cannot be loaded: %s", entry.name, entry.value, err)
            continue
        if not isinstance(loaded, Module):
            loaded = Module(name=entry.name, description=getattr(loaded, "__doc__", "") or "",
                            params=list(getattr(loaded, "params", [])), handler=loaded)
        found[loaded.name] = loaded
    return found


# ---- built-in modules ---------------------------------------------------------------


@module("noop", "Does nothing and succeeds (for tests and benchmarks).")
async def noop(ctx: ModuleContext) -> dict[str, Any]:
    return {}


@module("sleep", "Waits, then succeeds; stops early when cancelled.",
        params=[Param(name="seconds", type="number", default=1, description="how long to wait", position=0)])
async def sleep(ctx: ModuleContext) -> dict[str, Any]:
    seconds = float(ctx.params.get("seconds", 1))
    try:
        await asyncio.wait_for(ctx.cancelled.wait(), seconds)
    except asyncio.TimeoutError:
        return {"slept": seconds}
    return {"slept": None}


@module("shell", "Runs a shell script with /bin/sh; its output is the action's log.",
        params=[Param(name="script", type="string", required=True, description="the script text", position=0)])
async def shell(ctx: ModuleContext) -> dict[str, Any]:
    code = await ctx.run(["/bin/sh", "-c", ctx.params["script"]])
    if code != 0:
        raise RuntimeError(f"script exited with {code}")
    return {"exit_code": code}
