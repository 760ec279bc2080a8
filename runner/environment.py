"""What a task's process inherits from the runner: a clean environment.

A runner holds secrets its tasks must not see (its NATS credentials, whatever else its
own environment carries), and a task is code an org's admin chose. So a process gets
only an allow-list of the runner's variables (where programs are, whose home, which
language and zone), the names the runner was told to pass on (`--pass-env`), the
task's own `env`, and batchdeck's `BATCHDECK_*` facts about the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM")
"""Variables every task's process gets from the runner's environment (when set)."""
INHERITED_PREFIXES = ("LC_",)
NEVER_PASSED = frozenset({"BATCHDECK_NATS_URL", "BATCHDECK_TOKEN", "BATCHDECK_CREDS", "BATCHDECK_CREDENTIALS_FD"})
"""The runner's own connection settings: not passed on even when named in `--pass-env`."""


def base_environment(runner_env: Mapping[str, str], pass_env: Iterable[str] = ()) -> dict[str, str]:
    """The variables of `runner_env` a task's process inherits."""
    wanted = set(INHERITED) | set(pass_env)
    return {name: value for name, value in runner_env.items()
            if (name in wanted or name.startswith(INHERITED_PREFIXES)) and name not in NEVER_PASSED}
