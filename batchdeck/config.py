"""Where the command line finds its system: flags, then the environment, then the
context `batchdeck up` (or `server`) left in its data directory, then the defaults.

The context is a small JSON file, `{data dir}/context.json`, like a kubeconfig: the URL
of the embedded NATS server and the org `up` serves. A second terminal runs
`batchdeck task list` with no flag and no variable and reaches the system the first one
started; `up` reads it back to keep its port across restarts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from broker.connect import DEFAULT_URL
from broker.subjects import DEFAULT_ORG, is_valid_org

ENV_URL = "BATCHDECK_NATS_URL"
ENV_ORG = "BATCHDECK_ORG"
ENV_CREDS = "BATCHDECK_CREDS"
ENV_TOKEN = "BATCHDECK_TOKEN"
ENV_TLS_CA = "BATCHDECK_TLS_CA"
ENV_INBOX_PREFIX = "BATCHDECK_INBOX_PREFIX"
ENV_DATA_DIR = "BATCHDECK_DATA_DIR"
CONTEXT_FILE = "context.json"


def default_org() -> str:
    return os.environ.get(ENV_ORG, DEFAULT_ORG)


def default_data_dir() -> Path:
    """$BATCHDECK_DATA_DIR, else $XDG_DATA_HOME/batchdeck, else ~/.local/share/batchdeck."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "batchdeck"


@dataclass(frozen=True)
class Context:
    """What `batchdeck up` (or `server`) recorded about the system it runs."""

    url: str
    org: str
    pid: int
    path: Path

    @property
    def port(self) -> int | None:
        tail = self.url.rpartition(":")[2]
        return int(tail) if tail.isdigit() else None

    def is_running(self) -> bool:
        """Whether the process that wrote it still runs (it may have stopped, or crashed)."""
        if self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # someone else's process: it exists
        try:  # a pid is reused after its process ends: is it still batchdeck's?
            return b"batchdeck" in Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return True  # no /proc to ask: trust the pid


def read_context(data_dir: Path | None = None) -> Context | None:
    """The context in `data_dir` (default: the default data dir), None when there is none
    or it is unreadable (a broken file must not stop a command that names its server)."""
    path = (data_dir or default_data_dir()) / CONTEXT_FILE
    try:
        raw = json.loads(path.read_text())
        url, org, pid = raw["url"], raw.get("org", DEFAULT_ORG), int(raw.get("pid", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(url, str) or not url.startswith("nats://") or not is_valid_org(org):
        return None
    return Context(url=url, org=org, pid=pid, path=path)


def write_context(data_dir: Path, url: str, org: str) -> Path:
    """Record the system this process runs (atomically: a reader never sees half a file)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CONTEXT_FILE
    partial = path.with_name(f".{CONTEXT_FILE}.{os.getpid()}")
    partial.write_text(json.dumps({"url": url, "org": org, "pid": os.getpid()}, indent=2) + "\n")
    os.replace(partial, path)
    return path


@dataclass(frozen=True)
class Target:
    """The server and org a command talks to, and where the URL came from (for errors)."""

    url: str
    org: str
    context: Context | None = None
    """Set when the URL is the context's."""


def resolve(url_flag: str | None, org_flag: str | None) -> Target:
    """Flag, then environment, then the context, then the defaults (nats://127.0.0.1:4222,
    org `default`). The context's org is taken only with its URL: a command pointed at
    another server does not inherit the local system's org."""
    url = url_flag or os.environ.get(ENV_URL)
    org = org_flag or os.environ.get(ENV_ORG)
    context = read_context() if url is None else None
    if context is not None:
        return Target(url=context.url, org=org or context.org, context=context)
    return Target(url=url or DEFAULT_URL, org=org or DEFAULT_ORG)


def unreachable_hint(target: Target) -> str:
    """What to tell a user whose command could not reach the server."""
    context = target.context
    if context is None:
        if target.url == DEFAULT_URL:
            return (f"nothing answers on the default {DEFAULT_URL} and no `batchdeck up` context was found; "
                    f"start one with `batchdeck up`, or give --nats URL (env {ENV_URL})")
        return ""
    if not context.is_running():
        return f"this URL comes from {context.path}, written by `batchdeck up` (pid {context.pid}), which has stopped"
    return f"this URL comes from {context.path}, written by `batchdeck up` (pid {context.pid})"
