"""The one place that reads configuration.

Settings come from environment variables (12-factor). Any secret may instead be
given as a path in ``<NAME>_FILE`` (e.g. ``STRIPE_SECRET_KEY_FILE``), which is how
the app role hands secrets over without putting them in the environment of
``docker inspect``. Everything is validated at start-up; on error the app exits
with one message listing every missing or invalid setting.

To add a setting: add one ``Setting`` to ``SETTINGS`` below. The app reads it as
``current_app.config["NAME"]``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click


class SettingsError(click.ClickException):
    """Raised with every problem found, one per line.

    A ClickException so that ``flask --app paydrop ...`` and ``paydrop ...``
    print the list and exit 1 instead of showing a traceback.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def _str(value: str) -> str:
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


MIN_SECRET_KEY_LENGTH = 32


def _secret_key(value: str) -> str:
    if len(value) < MIN_SECRET_KEY_LENGTH:
        raise ValueError(f"must be at least {MIN_SECRET_KEY_LENGTH} characters "
                         "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(48))')")
    return value


def _rate_limit(value: str) -> str:
    """Attempts/seconds, both positive; kept as text (ratelimit.py builds the Limit)."""
    try:
        attempts, seconds = (int(part) for part in value.split("/"))
    except ValueError:
        attempts = seconds = 0
    if attempts <= 0 or seconds <= 0:
        raise ValueError("must be attempts/seconds, e.g. 10/300")
    return value


def _location_prefix(value: str) -> str:
    if not (value.startswith("/") and value.endswith("/")):
        raise ValueError('must start and end with "/", e.g. /_protected/')
    return value


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
            raise ValueError(f"must be a URL with scheme {' or '.join(schemes)}")
        return value

    return parse


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An empty value means "not set" and is kept as ""; anything else must parse."""

    def parse_optional(value: str) -> Any:
        return parse(value) if value else value

    return parse_optional


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return value

    return parse


def _secret_key_list(value: str) -> tuple[str, ...]:
    keys = tuple(part.strip() for part in value.split(",") if part.strip())
    for key in keys:
        _secret_key(key)
    return keys


def _secret_list(value: str) -> tuple[str, ...]:
    secrets = tuple(part.strip() for part in value.split(",") if part.strip())
    if not secrets:
        raise ValueError("must hold at least one secret")
    return secrets


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip()) for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any] = _str
    default: str | None = None  # None means required
    secret: bool = False  # may come from NAME_FILE; never logged
    help: str = ""


_DB_URL = _url("postgresql", "postgres")

SETTINGS: tuple[Setting, ...] = (
    # Core
    Setting("SECRET_KEY", _secret_key, secret=True, help="signs sessions, CSRF tokens and download links"),
    Setting("SECRET_KEY_FALLBACKS", _secret_key_list, "", secret=True,
            help="previous SECRET_KEYs, comma-separated: links and tokens they signed stay valid "
                 "until they expire (key rotation); nothing new is signed with them"),
    Setting("APP_ENVIRONMENT", default="production", help="shown in /api/health"),
    Setting("APP_VERSION", default="", help="release shown in /api/health and X-Release"),
    Setting("APP_EXPOSE_RELEASE_HEADER", _bool, "false", help="add X-Release to every response"),
    Setting("PUBLIC_URL", _url("http", "https"), "http://localhost:8000",
            help="the shop's public base URL (links in e-mails, Stripe return URLs)"),
    Setting("LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
    Setting("MAX_CONTENT_LENGTH", _positive_int, str(1024 * 1024), help="largest request body"),
    Setting("SESSION_COOKIE_SECURE", _bool, "true", help="cookies only over HTTPS"),
    Setting("SESSION_TTL_SECONDS", _positive_int, str(14 * 24 * 3600),
            help="Redis TTL of a logged-in session (or a guest's that placed an order)"),
    Setting("ANONYMOUS_SESSION_TTL_SECONDS", _positive_int, "3600",
            help="Redis TTL of any other session (e.g. one holding only a CSRF token)"),
    # Data stores
    Setting("DATABASE_URL", _DB_URL, secret=True, help="PostgreSQL primary"),
    Setting("DATABASE_REPLICA_URL", _optional(_DB_URL), "", secret=True,
            help="read replica for catalog reads; empty = use the primary"),
    Setting("DATABASE_POOL_SIZE", _positive_int, "5"),
    Setting("DATABASE_CONNECT_TIMEOUT", _positive_int, "3", help="seconds"),
    Setting("REDIS_URL", _url("redis", "rediss"), secret=True),
    Setting("CATALOG_CACHE_SECONDS", _positive_int, "300"),
    Setting("PUBLIC_PAGE_CACHE_SECONDS", _non_negative_int, "3",
            help="how long a shared cache (the load balancer's) may keep an anonymous catalog or "
                 "product page, and answer from it for as long again while fetching a new one; "
                 "0 = never shared"),
    # Stripe
    Setting("STRIPE_SECRET_KEY", secret=True),
    Setting("STRIPE_PUBLISHABLE_KEY"),
    Setting("STRIPE_WEBHOOK_SECRET", _secret_list, secret=True,
            help="webhook signing secret(s), comma-separated: an event signed with any of them is "
                 "accepted (list the new and the old one while rolling a secret)"),
    Setting("STRIPE_API_BASE", _url("http", "https"), "https://api.stripe.com"),
    Setting("STRIPE_JS_URL", _url("http", "https"), "https://js.stripe.com/v3/"),
    Setting("STRIPE_TIMEOUT_SECONDS", _positive_int, "10", help="one Stripe request, at most"),
    Setting("STRIPE_PAY_BUDGET_SECONDS", _positive_int, "25",
            help="all Stripe calls of one payment request together, retries included; must stay "
                 "below the load balancer's proxy read timeout (35 s) so the buyer gets our answer"),
    Setting("CHECKOUT_MODE", _choice("payment_intent", "checkout_session"), "payment_intent",
            help="card form on our page (default) or Stripe-hosted Checkout"),
    # Downloads and storage
    Setting("STORAGE_BACKEND", _choice("local", "s3"), "local"),
    Setting("STORAGE_LOCAL_DIR", default="/var/lib/paydrop/assets"),
    Setting("S3_ENDPOINT_URL", default="", help="S3-compatible endpoint; empty = AWS"),
    Setting("S3_BUCKET", default="", help="required when STORAGE_BACKEND=s3"),
    Setting("S3_REGION", default="us-east-1"),
    Setting("S3_ACCESS_KEY_ID", default="", secret=True),
    Setting("S3_SECRET_ACCESS_KEY", default="", secret=True),
    Setting("DOWNLOAD_TTL_SECONDS", _positive_int, str(24 * 3600)),
    Setting("DOWNLOAD_LIMIT", _positive_int, "5"),
    Setting("DOWNLOAD_ACCEL_PREFIX", _optional(_location_prefix), "",
            help="nginx internal location for X-Accel-Redirect; empty = the app sends bytes"),
    # E-mail
    Setting("SMTP_HOST", default="", help="empty = mail is skipped (the log says so once)"),
    Setting("SMTP_PORT", _positive_int, "587"),
    Setting("SMTP_USER", default=""),
    Setting("SMTP_PASSWORD", default="", secret=True),
    Setting("SMTP_FROM", default="shop@localhost"),
    Setting("SMTP_STARTTLS", _bool, "true"),
    Setting("MAIL_MAX_ATTEMPTS", _positive_int, "8",
            help="delivery attempts of one message before it is dead (shown in /metrics)"),
    Setting("MAIL_RETRY_BASE_SECONDS", _positive_int, "30",
            help="wait before the second attempt; doubles for each next one (at most 1 h)"),
    # The worker (`paydrop worker`)
    Setting("WORKER_POLL_SECONDS", _positive_int, "5",
            help="how often the worker looks for due mail and old pending orders"),
    Setting("PENDING_ORDER_TTL_SECONDS", _positive_int, "3600",
            help="an order still pending this long without a Stripe payment is marked failed "
                 "by the worker (a late payment still turns it paid)"),
    # Operations
    Setting("METRICS_ALLOWED_NETWORKS", _networks, "127.0.0.0/8,::1/128",
            help="client networks allowed to read /metrics"),
    Setting("STRIPE_HEALTH_CACHE_SECONDS", _positive_int, "60"),
    Setting("HEALTH_CHECK_TIMEOUT_SECONDS", _positive_int, "2"),
    Setting("TRUSTED_PROXY_COUNT", _non_negative_int, "0",
            help="reverse proxies in front of the app whose X-Forwarded-For/-Proto to trust"
                 " (1 behind the nginx load balancer; 0 when clients connect directly)"),
    Setting("LOGIN_RATE_LIMIT", _rate_limit, "10/300",
            help="log-in and registration attempts/seconds allowed per client IP (IPv6: per /64)"),
    Setting("LOGIN_ACCOUNT_RATE_LIMIT", _rate_limit, "20/900",
            help="failed passwords/seconds per account before its log-in pauses; only attempts "
                 "the per-IP limit let through count, so keep it above LOGIN_RATE_LIMIT"),
    Setting("PASSWORD_RESET_TTL_SECONDS", _positive_int, "3600",
            help="how long a password reset link works (it also stops after one use)"),
    Setting("PASSWORD_RESET_RATE_LIMIT", _rate_limit, "3/3600",
            help="reset mails/seconds per address (the per-IP LOGIN_RATE_LIMIT applies too)"),
    Setting("UNVERIFIED_ACCOUNT_TTL_SECONDS", _positive_int, str(7 * 24 * 3600),
            help="an account whose address is not confirmed within this time expires, and a "
                 "new sign-up for the address may replace it"),
    Setting("LINK_REISSUE_LIMIT", _positive_int, "5",
            help="new download links a buyer may request per order, in its whole life"),
    Setting("LINK_REISSUE_RATE_LIMIT", _rate_limit, "5/3600",
            help="new download links/seconds per account"),
    Setting("CHECKOUT_RATE_LIMIT", _rate_limit, "30/300",
            help="card payments started per IP per window (attempts/seconds; slows card testing)"),
)

SECRET_NAMES = frozenset(s.name for s in SETTINGS if s.secret)


def _raw_value(setting: Setting, environ: Mapping[str, str], problems: list[str]) -> str | None:
    file_var = f"{setting.name}_FILE"
    if setting.secret and environ.get(file_var):
        path = Path(environ[file_var])
        try:
            return path.read_text().strip()
        except OSError as exc:
            problems.append(f"{file_var}: cannot read {path}: {exc.strerror}")
            return None
    value = environ.get(setting.name)
    if value is None:
        if setting.default is None:
            hint = f" (or {file_var})" if setting.secret else ""
            problems.append(f"{setting.name}{hint}: missing; {setting.help or 'required'}")
            return None
        return setting.default
    return value


def _check_together(values: Mapping[str, Any], problems: list[str]) -> None:
    """Rules that involve more than one setting (each was parsed on its own above)."""
    if values.get("STORAGE_BACKEND") == "s3" and not values.get("S3_BUCKET"):
        problems.append("S3_BUCKET: missing; required when STORAGE_BACKEND=s3")


def load(environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse and validate every setting; raise SettingsError listing all problems."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = _raw_value(setting, environ, problems)
        if raw is None:
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if setting.secret else repr(raw)
            problems.append(f"{setting.name}: invalid value {shown}: {exc}")
    _check_together(values, problems)
    if problems:
        raise SettingsError(problems)
    return values
