"""The notifier's command-line flags, shared by `batchdeck notifier` and `batchdeck up`,
and the settings they make. Secrets may come from the environment instead, so they
need not show in a process list."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from broker.subjects import is_valid_org
from notifier.destinations import WebhookPolicy
from notifier.email import SmtpSettings
from notifier.service import NotifierSettings

ENV_SMTP_URL = "BATCHDECK_SMTP_URL"
ENV_SMTP_FROM = "BATCHDECK_SMTP_FROM"
ENV_WEBHOOK_SECRET = "BATCHDECK_WEBHOOK_SECRET"
"""`SECRET` or `ORG=SECRET`, several separated by commas."""
ENV_WEBHOOK_ALLOW = "BATCHDECK_WEBHOOK_ALLOW"
"""Host names, addresses or CIDR networks webhooks may go to besides public addresses, comma separated."""


def add_flags(parser: argparse.ArgumentParser, *, tuning: bool) -> None:
    """The delivery flags; with `tuning`, also attempts, backoff and age (`notifier`)."""
    group = parser.add_argument_group("notifications")
    group.add_argument("--smtp-url", default=None, metavar="URL",
                       help="SMTP server: smtp://, smtp+starttls:// or smtps://[user:password@]host[:port] "
                            f"(env {ENV_SMTP_URL})")
    group.add_argument("--smtp-from", default=None, metavar="ADDRESS",
                       help=f"sender address (env {ENV_SMTP_FROM}; default batchdeck@HOST)")
    group.add_argument("--smtp-ca-file", default=None, type=Path, metavar="FILE",
                       help="CA file to verify the SMTP server's TLS (default: the system's)")
    group.add_argument("--webhook-secret", action="append", default=None, metavar="[ORG=]SECRET",
                       help="HMAC-SHA256 key signing webhook bodies, for one org or (without ORG=) every org; "
                            f"repeat per org (env {ENV_WEBHOOK_SECRET}, comma separated)")
    group.add_argument("--webhook-allow", action="append", default=None, metavar="HOST|CIDR",
                       help="also post webhooks to this host name or network; by default only public addresses "
                            "are (no loopback, private, link-local or metadata address); repeat "
                            f"(env {ENV_WEBHOOK_ALLOW}, comma separated)")
    if not tuning:
        return
    group.add_argument("--max-attempts", type=int, default=5, metavar="N",
                       help="tries of one delivery before it is recorded failed (default 5)")
    group.add_argument("--retry-backoff", type=float, default=2.0, metavar="SECONDS",
                       help="pause before the second try, doubled before each next one (default 2)")
    group.add_argument("--webhook-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="how long one webhook POST may take (default 10)")
    group.add_argument("--max-age", type=float, default=24.0, metavar="HOURS",
                       help="runs that ended longer ago are not reported (default 24)")
    group.add_argument("--name", help="notifier instance id (default: host-pid-random)")
    group.add_argument("--only-org", default=None, metavar="ORG",
                       help="serve this org only, through a consumer of its own (default: every org)")


def configured(args: argparse.Namespace) -> bool:
    """Whether any channel is set up (by flag or environment)."""
    return bool(_smtp_url(args) or _secret_entries(args))


def settings(args: argparse.Namespace) -> NotifierSettings:
    """NotifierSettings from the flags and the environment; ValueError on a bad value."""
    smtp = None
    if url := _smtp_url(args):
        ca_file = str(args.smtp_ca_file) if args.smtp_ca_file else None
        smtp = SmtpSettings.from_url(url, args.smtp_from or os.environ.get(ENV_SMTP_FROM), ca_file=ca_file)
    allow = args.webhook_allow or [e for e in os.environ.get(ENV_WEBHOOK_ALLOW, "").split(",") if e.strip()]
    result = NotifierSettings(smtp=smtp, webhook_secrets=parse_secrets(_secret_entries(args)),
                              webhook_policy=WebhookPolicy.parse(allow))
    if hasattr(args, "max_attempts"):
        if args.max_attempts < 1:
            raise ValueError("--max-attempts must be at least 1")
        if args.retry_backoff < 0 or args.webhook_timeout <= 0 or args.max_age <= 0:
            raise ValueError("--retry-backoff must be 0 or more; --webhook-timeout and --max-age more than 0")
        result.max_attempts, result.retry_backoff = args.max_attempts, args.retry_backoff
        result.webhook_timeout, result.max_age = args.webhook_timeout, args.max_age * 3600.0
        if args.only_org is not None and not is_valid_org(args.only_org):
            raise ValueError(f"--only-org {args.only_org!r} is invalid: use 1-32 of a-z, 0-9, '_' and '-'")
        result.org = args.only_org
    return result


def parse_secrets(entries: list[str]) -> dict[str, bytes]:
    """`SECRET` (every org, key `*`) or `ORG=SECRET` entries, by org. What precedes the
    first `=` is an org only if it is a valid org name: a base64 secret may end in `=`."""
    secrets: dict[str, bytes] = {}
    for entry in entries:
        org, sep, secret = entry.partition("=")
        if not (sep and is_valid_org(org)):
            org, secret = "*", entry
        if not secret:
            raise ValueError(f"webhook secret {_masked(entry)!r}: expected SECRET or ORG=SECRET")
        if len(secret) < 16:
            raise ValueError(f"the webhook secret for {org!r} is shorter than 16 characters")
        secrets[org] = secret.encode()
    return secrets


def _smtp_url(args: argparse.Namespace) -> str | None:
    return args.smtp_url or os.environ.get(ENV_SMTP_URL) or None


def _secret_entries(args: argparse.Namespace) -> list[str]:
    if args.webhook_secret:
        return list(args.webhook_secret)
    return [item.strip() for item in os.environ.get(ENV_WEBHOOK_SECRET, "").split(",") if item.strip()]


def _masked(entry: str) -> str:
    org, sep, _ = entry.partition("=")
    return f"{org}=***" if sep else "***"
