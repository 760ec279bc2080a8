"""Every shell command in the README's fenced `bash` blocks, run as printed against a live
`batchdeck up --demo`, in a second "terminal" that has no flag and no variable: the
commands find the system through the context `up` records in its data dir.

A command the test cannot run here (another machine's host, docker, the suite itself)
is listed in NOT_RUN with the reason; a README command that is neither run nor listed
fails the test, and so does a NOT_RUN entry the README no longer has. The one
substitution: `01JDZ...` stands for an execution id, the one the README's last start
printed (before any, the newest execution of the demo).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from processes import up_banner

README = Path(__file__).parents[1] / "README.md"
BATCHDECK = [sys.executable, "-m", "batchdeck"]
EXECUTION_PLACEHOLDER = "01JDZ..."
STARTED = re.compile(r"started execution (01[0-9A-Z]{24})")

NOT_RUN = {
    "pip install -e . && batchdeck up --demo":
        "the test's own `batchdeck up --demo --headless` (the dashboard needs a terminal: test_tui_terminal.py)",
    'pip install -e ".[test]" && pytest': "the suite itself",
    "batchdeck tui": "a dashboard: needs a terminal (test_tui_terminal.py drives one in tmux)",
    "batchdeck runner --nats nats://nats-1:4222": "names a host of a cluster, not this machine",
    "batchdeck server --data-dir /var/lib/batchdeck": "a second server beside the test's `up`",
    "batchdeck broker --nats nats://nats-1:4222": "names a host of a cluster",
    "batchdeck scheduler --nats nats://nats-1:4222": "names a host of a cluster",
    "batchdeck store --nats nats://nats-1:4222": "names a host of a cluster",
    "cp deploy/compose.env.example .env": "docker compose (test_deploy.py checks the compose files)",
    "docker compose up -d --build": "docker compose (no docker here)",
    "docker compose run --rm cli batch list": "docker compose (no docker here)",
}


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks, in order, continuation lines joined,
    comment-only lines left out."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(command.strip())
    return commands


def not_run_reason(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def start_up(env: dict[str, str]) -> subprocess.Popen[bytes]:
    up = subprocess.Popen([*BATCHDECK, "up", "--demo", "--headless"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    up_banner(up)
    return up


def test_every_command_of_the_readme_runs_as_printed(tmp_path: Path):
    commands = readme_commands()
    assert len(commands) > 30, commands
    listed_but_gone = [prefix for prefix in NOT_RUN if not any(c.startswith(prefix) for c in commands)]
    assert not listed_but_gone, f"NOT_RUN names commands the README no longer has: {listed_but_gone}"

    data_dir, work = tmp_path / "data", tmp_path / "work"
    (work / "deploy" / "nats").mkdir(parents=True)  # where the README's nats-config writes
    (work / "batch.toml").write_text(re.search(r"```toml\n(id = .*?)```", README.read_text(), re.DOTALL).group(1))
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHDECK_NATS_URL", "BATCHDECK_ORG")}
    env["BATCHDECK_DATA_DIR"] = str(data_dir)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the `batchdeck` script
    up = start_up(env)
    execution_id: str | None = None
    ran = 0
    try:
        for command in commands:
            if not_run_reason(command) is not None:
                continue
            if EXECUTION_PLACEHOLDER in command:
                execution_id = execution_id or newest_execution(env)
                command = command.replace(EXECUTION_PLACEHOLDER, execution_id)
            result = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                                    timeout=120)
            assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
            ran += 1
            if (started := STARTED.findall(result.stdout)):
                execution_id = started[-1]
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=90)
    assert ran >= 25
    assert (work / "failed.csv").read_text().startswith("org,id,")  # the README's CSV export
    assert "umbrella" in (work / "deploy" / "nats" / "auth.conf").read_text()


def newest_execution(env: dict[str, str]) -> str:
    listed = subprocess.run([*BATCHDECK, "exec", "list", "--sort=-queued_at", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    items = json.loads(listed.stdout)["items"]
    assert items, "the demo started no run"
    return items[0]["id"]
