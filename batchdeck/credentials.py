"""How a runner takes its NATS credentials without showing them to its tasks.

A task can read its runner's command line and first environment
(`/proc/$PPID/cmdline`, `/proc/$PPID/environ`; `ps e`), whatever the runner later
deletes from `os.environ`. So a runner refuses a password or token on its command line,
and when its environment carries one (`BATCHDECK_NATS_URL` with `user:password@`,
`BATCHDECK_TOKEN`), it starts itself again without them, handing them over through a
pipe that only the new process image reads (and closes). Tasks get a clean environment
besides (runner.environment). A creds file (`--creds`) is read by path: keep it where
tasks cannot read it (another user's file, a mount only the runner has).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from batchdeck import config

SECRET_VARIABLES = (config.ENV_URL, config.ENV_TOKEN)
HANDOVER_VARIABLE = "BATCHDECK_CREDENTIALS_FD"
"""The pipe's file descriptor in the restarted process's environment."""


def has_credentials(url: str) -> bool:
    """Whether any server of a comma separated NATS URL list carries `user:password@`
    (or a bare token as user)."""
    for one in url.split(","):
        try:
            parts = urlsplit(one.strip() if "://" in one else f"nats://{one.strip()}")
        except ValueError:
            continue
        if parts.username or parts.password:
            return True
    return False


def on_command_line(argv: Sequence[str]) -> str | None:
    """The flag that puts a secret on the command line (`--nats` with credentials,
    `--token`), or None."""
    for index, arg in enumerate(argv):
        flag, equals, inline = arg.partition("=")
        if flag not in ("--nats", "--token"):
            continue
        value = inline if equals else (argv[index + 1] if index + 1 < len(argv) else "")
        if flag == "--token" or has_credentials(value):
            return flag
    return None


def restart_without_secrets(argv: Sequence[str]) -> None:
    """When the environment holds a secret: replace this process with `batchdeck ARGV`
    without it (never returns then), the secrets waiting in a pipe; else return."""
    secrets = {name: os.environ[name] for name in SECRET_VARIABLES
               if os.environ.get(name) and (name != config.ENV_URL or has_credentials(os.environ[name]))}
    if not secrets or HANDOVER_VARIABLE in os.environ:
        return
    read_end, write_end = os.pipe()
    os.write(write_end, json.dumps(secrets).encode())  # a few hundred bytes: the pipe holds them
    os.close(write_end)
    os.set_inheritable(read_end, True)
    env = {name: value for name, value in os.environ.items() if name not in SECRET_VARIABLES}
    env[HANDOVER_VARIABLE] = str(read_end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "batchdeck", *argv], env)


def take_handover() -> dict[str, str]:
    """The secrets a restart handed over (empty when there was none); the pipe is closed."""
    fd = os.environ.pop(HANDOVER_VARIABLE, None)
    if fd is None:
        return {}
    with os.fdopen(int(fd), "rb") as pipe:
        return json.loads(pipe.read() or b"{}")
