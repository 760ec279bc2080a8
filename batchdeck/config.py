"""Defaults the command line reads from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from broker.connect import DEFAULT_URL
from broker.subjects import DEFAULT_ORG

ENV_URL = "BATCHDECK_NATS_URL"
ENV_ORG = "BATCHDECK_ORG"
ENV_CREDS = "BATCHDECK_CREDS"
ENV_TOKEN = "BATCHDECK_TOKEN"
ENV_TLS_CA = "BATCHDECK_TLS_CA"
ENV_INBOX_PREFIX = "BATCHDECK_INBOX_PREFIX"
ENV_DATA_DIR = "BATCHDECK_DATA_DIR"


def default_url() -> str:
    return os.environ.get(ENV_URL, DEFAULT_URL)


def default_org() -> str:
    return os.environ.get(ENV_ORG, DEFAULT_ORG)


def default_data_dir() -> Path:
    """$BATCHDECK_DATA_DIR, else $XDG_DATA_HOME/batchdeck, else ~/.local/share/batchdeck."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "batchdeck"
