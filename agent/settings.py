"""Every setting of the sidecar, declared once.

`SETTINGS` is the one table: name, type, default, help, whether it is secret, its allowed values
and checks, which commands take it as a flag, and whether an addon declares it as a mitmproxy
option (always named `sidemeter_<name>`). Everything else is derived from it:

- the `Config` dataclass and its layering (agent/config.py),
- the click flags of `sidemeter run` and `sidemeter token verify` (agent/cli/),
- the `loader.add_option` calls of the addons (`declare_options`) and the values they read back
  (`read_options`),
- the commented file `sidemeter config init` writes, `configs/sidemeter.toml`, and the
  configuration table of README.md (`config_file_text`, `readme_table`;
  `python -m agent.settings toml|readme` prints them).

A setting with `config=False` is a mitmproxy option only (`sidemeter_inject_usage`: the
sidecar always asks for usage; only a plain `mitmdump -s addons/meter.py` can switch it off).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.durations import parse_duration
from agent.prices import CURRENCY
from agent.quota.windows import zone

if TYPE_CHECKING:
    from mitmproxy.addonmanager import Loader

ENV_PREFIX = "SIDEMETER_"
OPTION_PREFIX = "sidemeter_"

# Commands whose flags come from the table.
RUN = "run"
TOKEN_VERIFY = "token verify"


class ConfigError(ValueError):
    """Settings that cannot work; each problem names the key, the value and what to do.

    Raised with one problem or several (`problems`); the message is the first, with a count of
    the others."""

    def __init__(self, *problems: str) -> None:
        if not problems:
            raise TypeError("ConfigError needs at least one problem")
        more = len(problems) - 1
        extra = f" (and {more} more problem(s): `sidemeter config validate` lists them)" if more else ""
        super().__init__(problems[0] + extra)
        self.problems: tuple[str, ...] = problems


Check = Callable[[str, Any], None]


# --------------------------------------------------------------------------- parsing and checks


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "0.0.0.0", value
    host = host.strip("[]") or "0.0.0.0"
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not 0 <= p <= 65535:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT (e.g. 0.0.0.0:8080)")
    return host, p


def parse_size(value: str, key: str) -> int:
    units = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    v = value.strip().lower()
    num, unit = (v[:-1], v[-1]) if v and v[-1] in units else (v, "")
    try:
        n = int(num) * units[unit]
    except ValueError:
        n = -1
    if n <= 0:
        raise ConfigError(f"{key}: {value!r} is not a size like 512k, 32m or 1g")
    return n


def host_port(key: str, value: Any) -> None:
    parse_hostport(value, key)


def size(key: str, value: Any) -> None:
    parse_size(value, key)


def positive(key: str, value: Any) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")


def seconds_or_zero(key: str, value: Any) -> None:
    if value < 0:
        raise ConfigError(f"{key}: must be 0 or more seconds, got {value!r}")


def _require_http_url(key: str, value: str, use: str) -> str:
    """The URL's path; ConfigError (ending with `use`, what to give instead) unless http(s) with a host."""
    u = urlsplit(value)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"{key}: {value!r} is not an http(s) URL; {use}")
    return u.path


def upstream_url(key: str, value: Any) -> None:
    path = _require_http_url(
        key, value, "use e.g. http://127.0.0.1:11434 (Ollama) or http://127.0.0.1:8000 (vLLM)"
    )
    if path not in ("", "/"):
        raise ConfigError(
            f"{key}: {value!r} has a path; give the server's base URL only "
            "(clients keep sending /v1/... or /api/... themselves)"
        )


def jwks_address(key: str, value: Any) -> None:
    _require_http_url(
        key,
        value,
        "use your identity provider's JWKS address, e.g. https://idp.example.com/.well-known/jwks.json",
    )


def database_url(key: str, value: Any) -> None:
    if value.split(":", 1)[0] not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(
            f"{key}: {value!r} is not a supported URL; use sqlite:///data/usage.db "
            "or postgresql://user:password@host/dbname"
        )


def duration(key: str, value: Any) -> None:
    try:
        seconds = parse_duration(value).total_seconds()
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    if seconds <= 0:
        raise ConfigError(f"{key}: must be longer than 0s, got {value!r}")


def time_zone(key: str, value: Any) -> None:
    try:
        zone(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def names_a_claim(key: str, value: Any) -> None:
    if not value.strip():
        raise ConfigError(f"{key}: must name a claim, e.g. team")


def names_a_role(key: str, value: Any) -> None:
    if not split_list(value):
        raise ConfigError(f"{key}: must name at least one role, e.g. ops")


def instance_name(key: str, value: Any) -> None:
    if not value.strip() or len(value) > 256 or any(c.isspace() for c in value):
        raise ConfigError(f"{key}: must be 1-256 characters without spaces, e.g. ollama-0")


def cors_origins(key: str, value: Any) -> None:
    for origin in split_list(value):
        if origin == "*":
            continue
        u = urlsplit(origin)
        if u.scheme not in ("http", "https") or not u.hostname or u.path or u.query or u.fragment:
            raise ConfigError(
                f"{key}: {origin!r} is not an origin; use scheme://host[:port] without a path, "
                "e.g. https://grafana.example.com, or *"
            )


def fraction(key: str, value: Any) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"{key}: must be a fraction above 0 and at most 1 (0.05 = 5%), got {value!r}")


def currency_code(key: str, value: Any) -> None:
    if not CURRENCY.fullmatch(value):
        raise ConfigError(f"{key}: {value!r} is not an ISO 4217 code; use three capitals such as USD or EUR")


def split_list(value: str | None) -> list[str]:
    """A comma-separated setting as its entries, blanks dropped."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting. `default=None` makes it optional (unset); `flag_for` names the commands that
    take it as `--<name-with-dashes>`; `mitmproxy` makes its group's addon declare it as the
    option `sidemeter_<name>`; `config=False` keeps it out of Config, files and environment."""

    name: str
    type: type
    default: Any
    group: str  # the addon or part of the sidecar it belongs to: proxy, auth, store, meter, quota
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    flag_for: tuple[str, ...] = ()
    metavar: str | None = None
    path: bool = False  # the flag names a file: click checks it is not a directory
    mitmproxy: bool = False
    config: bool = True
    legacy: tuple[tuple[str, Any], ...] = ()  # old spellings still accepted: (text, value)

    @property
    def optional(self) -> bool:
        return self.default is None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def option(self) -> str:
        return OPTION_PREFIX + self.name

    @property
    def annotation(self) -> Any:
        return self.type | None if self.optional else self.type

    def check(self, value: Any) -> None:
        """ConfigError when `value` (already of the setting's type) cannot work; unset passes."""
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name}: {value!r} is not one of: {', '.join(self.choices)}")
        for check in self.checks:
            check(self.name, value)

    def coerce(self, raw: Any, source: str) -> Any:
        """A file, environment or command-line value as the setting's type; ConfigError names
        the source."""
        if self.legacy and isinstance(raw, bool | str):
            spelled = str(raw).strip().lower()
            for old, value in self.legacy:
                if spelled == old:
                    return value
        try:
            return _coerce(self.type, raw)
        except ValueError:
            raise ConfigError(
                f"{self.name}: {raw!r} from {source} is not a valid {self.type.__name__}"
            ) from None


def _coerce(kind: type, raw: Any) -> Any:
    if raw is None:
        return None
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(raw)
    return kind(raw)


_AUTH_FLAGS = (RUN, TOKEN_VERIFY)
PROMPT_MODES = ("off", "truncated", "full")

# One row per setting, in the order `config init`, --help and the README list them.
# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # -- proxy: where the sidecar listens and what it relays to
    Setting("upstream", str, "http://127.0.0.1:11434", "proxy",
            "URL of the LLM server the sidecar relays to (Ollama, vLLM, llama.cpp).",
            checks=(upstream_url,), flag_for=(RUN,), metavar="URL"),
    Setting("listen", str, "0.0.0.0:8080", "proxy",
            "HOST:PORT clients send LLM requests to.",
            checks=(host_port,), flag_for=(RUN,), metavar="HOST:PORT"),
    Setting("ops_listen", str, "0.0.0.0:9090", "proxy",
            "HOST:PORT of the ops API (health, stats, /metrics).",
            checks=(host_port,), flag_for=(RUN,), metavar="HOST:PORT"),
    Setting("instance_id", str, None, "proxy",
            "This sidecar's name in its records and the fleet view; unset: POD_NAME when set "
            "(Kubernetes), else HOST:PROXY-PORT.",
            checks=(instance_name,), flag_for=(RUN,), metavar="NAME"),
    Setting("db", str, "sqlite:///data/usage.db", "store",
            "Usage store URL: sqlite:///relative.db, sqlite:////abs.db, postgresql://...",
            checks=(database_url,), flag_for=(RUN,), metavar="URL", mitmproxy=True),
    # -- auth: who may call, and what happens to the client's credentials
    Setting("auth", str, "jwt", "auth",
            "jwt: every request needs a valid bearer JWT; off: no authentication (say so explicitly), "
            "the user is taken from X-User-Id or is 'anonymous'.",
            choices=("jwt", "off"), flag_for=(RUN,), mitmproxy=True),
    Setting("jwt_secret", str, None, "auth",
            "Shared secret for HS256/384/512 tokens. Command lines are visible to other users: "
            "prefer SIDEMETER_JWT_SECRET or jwt_secret_file.",
            secret=True, flag_for=(RUN,), metavar="SECRET", mitmproxy=True),
    Setting("jwt_secret_file", str, None, "auth",
            "File holding the shared HS256/384/512 secret (surrounding whitespace ignored).",
            flag_for=_AUTH_FLAGS, metavar="FILE", path=True, mitmproxy=True),
    Setting("jwt_public_key", str, None, "auth",
            "PEM public key (or certificate) file: RSA for RS*/PS*, EC for ES*, Ed25519 for EdDSA tokens.",
            flag_for=_AUTH_FLAGS, metavar="FILE", path=True, mitmproxy=True),
    Setting("jwks_url", str, None, "auth",
            "URL of the identity provider's JWKS; cached, refreshed, refetched when a token names a new kid.",
            checks=(jwks_address,), flag_for=_AUTH_FLAGS, metavar="URL", mitmproxy=True),
    Setting("jwks_file", str, None, "auth",
            "Local JWKS (JSON) file of public keys.",
            flag_for=_AUTH_FLAGS, metavar="FILE", path=True, mitmproxy=True),
    Setting("jwks_refresh", int, 300, "auth",
            "Seconds a fetched JWKS is used before it is fetched again.",
            checks=(positive,), mitmproxy=True),
    Setting("jwt_audience", str, None, "auth",
            "Required token audience (aud); several accepted values separated by commas.",
            flag_for=_AUTH_FLAGS, metavar="AUD", mitmproxy=True),
    Setting("jwt_issuer", str, None, "auth",
            "Required token issuer (iss).",
            flag_for=_AUTH_FLAGS, metavar="ISS", mitmproxy=True),
    Setting("jwt_leeway", int, 30, "auth",
            "Seconds of clock skew allowed when checking exp, nbf and iat.",
            checks=(seconds_or_zero,), flag_for=_AUTH_FLAGS, metavar="S", mitmproxy=True),
    Setting("jwt_max_lifetime", str, None, "auth",
            "Longest token lifetime accepted (exp - iat, or exp - now without iat), e.g. 24h; "
            "unset: no limit beyond a valid exp.",
            checks=(duration,), flag_for=_AUTH_FLAGS, metavar="DURATION", mitmproxy=True),
    Setting("team_claim", str, "team", "auth",
            "Token claim that names the caller's team (a dotted path reaches nested claims).",
            checks=(names_a_claim,), flag_for=_AUTH_FLAGS, metavar="CLAIM", mitmproxy=True),
    Setting("require_user_match", bool, False, "auth",
            "Refuse requests whose X-User-Id header, when sent, differs from the token's sub.",
            flag_for=(RUN,), mitmproxy=True),
    Setting("max_token_bytes", int, 8192, "auth",
            "Largest bearer token accepted, in bytes.",
            checks=(positive,), flag_for=(RUN,), metavar="N", mitmproxy=True),
    Setting("forward_authorization", bool, False, "auth",
            "Forward the client's Authorization header to the upstream (removed by default).",
            flag_for=(RUN,), mitmproxy=True),
    Setting("upstream_api_key", str, None, "auth",
            "Sent upstream as Authorization: Bearer KEY (vLLM --api-key) instead of the client's; "
            "SIDEMETER_UPSTREAM_API_KEY keeps it off the command line.",
            secret=True, flag_for=(RUN,), metavar="KEY", mitmproxy=True),
    # -- stopping, storing, metering
    Setting("grace_period", float, 30.0, "proxy",
            "Seconds a SIGTERM waits for in-flight requests and streams to finish.",
            checks=(positive,), flag_for=(RUN,), metavar="S"),
    Setting("queue_size", int, 10_000, "store",
            "Records held in memory for the writer; beyond it they spill to data_dir/spill.",
            checks=(positive,)),
    Setting("batch_size", int, 500, "store",
            "Records written per transaction.",
            checks=(positive,)),
    Setting("retention", str, "30d", "store",
            "How long usage records are kept: the longest window /ops/stats and `sidemeter stats` "
            "answer, and the default age `sidemeter db prune` deletes.",
            checks=(duration,), metavar="DURATION"),
    Setting("auto_prune", bool, False, "store",
            "Delete records older than retention in the background: a batch of at most 2000 "
            "records between two batches of writes, so writing never stalls (off: only "
            "`sidemeter db prune` deletes).",
            flag_for=(RUN,)),
    Setting("heartbeat_interval", float, 15.0, "store",
            "Seconds between two heartbeats of this sidecar's row in the store's fleet registry "
            "(/ops/services lists the sidecars of a shared store; live within 3 intervals).",
            checks=(positive,), metavar="S"),
    Setting("instance_retention", str, "7d", "store",
            "How long a stopped or stale sidecar stays in the fleet registry before a heartbeat "
            "deletes its row.",
            checks=(duration,), metavar="DURATION"),
    Setting("journal", bool, True, "store",
            "Append each record to a journal in data_dir/spill before it is queued, so a crash of "
            "the process loses no finished request's record (README: Durability).",
            mitmproxy=True),
    Setting("capture_prompts", str, "off", "meter",
            "Prompt text kept on usage records: off (none; prompts may be private), truncated (the "
            "first capture_prompts_chars characters and a marker) or full. Older files' true/false "
            "mean full/off.",
            choices=PROMPT_MODES, flag_for=(RUN,), metavar="MODE", mitmproxy=True,
            legacy=(("true", "full"), ("false", "off"))),
    Setting("capture_prompts_chars", int, 1000, "meter",
            "Characters of prompt text kept with capture_prompts = truncated.",
            checks=(positive,), mitmproxy=True),
    Setting("inject_usage", bool, True, "meter",
            "Ask OpenAI-compatible upstreams for usage on streams (stream_options.include_usage) "
            "and remove the added usage chunk before it reaches a client that did not ask for it.",
            config=False, mitmproxy=True),
    Setting("body_size_limit", str, "32m", "proxy",
            "Largest request body accepted (k/m/g suffixes); larger gets 413.",
            checks=(size,)),
    # -- limits: what one client connection and one request head may hold
    Setting("header_timeout", float, 10.0, "limits",
            "Seconds a client has to send a request's headers, counted from its connection (or from "
            "the first byte of a later request on a keep-alive connection); then it is closed.",
            checks=(positive,), metavar="S", mitmproxy=True),
    Setting("idle_timeout", float, 90.0, "limits",
            "Seconds a keep-alive connection may wait for its next request before it is closed "
            "(a request or stream in progress is never cut by it).",
            checks=(positive,), metavar="S", mitmproxy=True),
    Setting("max_connections", int, 4096, "limits",
            "Client connections open at once; one more gets a 503 and is closed. Each takes about "
            "two open files: the soft RLIMIT_NOFILE is raised to fit, or the limit lowered with a warning.",
            checks=(positive,), metavar="N", mitmproxy=True),
    Setting("max_request_line", int, 16384, "limits",
            "Longest request line (method, path, version) accepted, in bytes; longer gets 414.",
            checks=(positive,), metavar="BYTES", mitmproxy=True),
    Setting("max_header_size", int, 65536, "limits",
            "Largest request head (request line and headers) accepted, in bytes; larger gets 431.",
            checks=(positive,), metavar="BYTES", mitmproxy=True),
    Setting("data_dir", str, "data", "proxy",
            "Directory for spill files and the proxy's runtime state.",
            flag_for=(RUN,), metavar="DIR"),
    Setting("log_level", str, "info", "proxy",
            "How much the sidecar logs: debug, info, warning or error.",
            choices=("debug", "info", "warning", "error"), flag_for=(RUN,)),
    Setting("log_format", str, "text", "proxy",
            "Format of the access lines (stdout) and the log lines (stderr): text (logfmt) or json "
            "(flat objects with @timestamp, for Loki and Elasticsearch).",
            choices=("text", "json"), flag_for=(RUN,)),
    Setting("access_log", str, "on", "proxy",
            "One line per request on stdout: time, request id, user, team, model, endpoint, status, "
            "outcome, tokens in/out, latency, TTFT (never tokens, secrets or prompt text).",
            choices=("on", "off"), flag_for=(RUN,)),
    # -- quota: the [[quotas]] rules' windows and reservations
    Setting("quota_timezone", str, "UTC", "quota",
            "IANA time zone of the quota day and month windows (tokens_per_day, tokens_per_month); "
            "minute windows are UTC clock minutes.",
            checks=(time_zone,), mitmproxy=True),
    Setting("quota_default_reservation", int, 1024, "quota",
            "Output tokens a request under a token quota holds while it runs when it gives no "
            "max_tokens, num_predict or max_output_tokens.",
            checks=(positive,), metavar="TOKENS", mitmproxy=True),
    Setting("quota_sync_interval", float, 0.25, "quota",
            "Seconds between two syncs of the quota counters with a PostgreSQL store shared by a "
            "fleet: each adds its own usage and reads the others' (off the request path).",
            checks=(positive,), metavar="S"),
    Setting("quota_stale_after", float, 5.0, "quota",
            "Seconds without a successful quota sync after which the fleet counters are stale: "
            "quota_store_down_rates and quota_store_down_budgets then decide.",
            checks=(positive,), metavar="S"),
    Setting("quota_store_down_rates", str, "open", "quota",
            "While the fleet counters are stale, per-minute limits either admit on this sidecar's "
            "counts (open) or refuse with 503 (closed).",
            choices=("open", "closed")),
    Setting("quota_store_down_budgets", str, "closed", "quota",
            "While the fleet counters are stale, per-day and per-month limits (budgets) either admit "
            "on this sidecar's counts (open) or refuse with 503 (closed).",
            choices=("open", "closed")),
    Setting("quota_default_reservation_seconds", float, 30.0, "quota",
            "Seconds of server time a request to a gpu_hour-priced model holds against a cost "
            "budget (cost_per_day, cost_per_month) while it runs.",
            checks=(positive,), metavar="S", mitmproxy=True),
    # -- cost: the currency of the [[prices]] tables
    Setting("currency", str, None, "cost",
            "ISO 4217 code of every price in the [[prices]] tables and of cost budgets, e.g. USD; "
            "required once prices are given.",
            checks=(currency_code,), metavar="CODE"),
    # -- metrics: what /metrics labels, and how many distinct values it keeps
    Setting("metrics_max_teams", int, 50, "metrics",
            "Distinct team label values /metrics keeps; later teams are counted as 'other'.",
            checks=(positive,)),
    Setting("metrics_max_models", int, 50, "metrics",
            "Distinct model label values /metrics keeps; later models are counted as 'other'.",
            checks=(positive,)),
    Setting("metrics_user_label", bool, False, "metrics",
            "Also count requests and tokens per user (sidemeter_user_*_total); off by default: "
            "one series per user, and user names are personal data."),
    Setting("metrics_max_users", int, 100, "metrics",
            "Distinct user label values /metrics keeps with metrics_user_label; later users are 'other'.",
            checks=(positive,)),
    # -- ops: who may read the ops API, the upstream prober, what /ops/health judges
    Setting("ops_role_claim", str, "roles", "ops",
            "Token claim that must hold an ops role for /ops/* (a list, a string, or space-separated "
            "like OAuth scope; a dotted path reaches nested claims, e.g. realm_access.roles).",
            checks=(names_a_claim,)),
    Setting("ops_roles", str, "ops", "ops",
            "Roles, separated by commas, of which the ops role claim must contain one.",
            checks=(names_a_role,)),
    Setting("ops_cors_origins", str, None, "ops",
            "Browser origins, separated by commas, allowed to call the ops API (e.g. "
            "https://grafana.example.com); * allows any origin, without credentials. Unset: none.",
            checks=(cors_origins,)),
    Setting("probe_interval", float, 10.0, "ops",
            "Seconds between two probes of the upstream (kind, version, models, reachable).",
            checks=(positive,)),
    Setting("probe_timeout", float, 2.0, "ops",
            "Seconds one probe request to the upstream may take before it counts as unreachable.",
            checks=(positive,)),
    Setting("ready_requires_upstream", bool, True, "ops",
            "/readyz answers 503 while the upstream cannot be reached; false for model servers "
            "that start slowly (readiness then ignores the upstream)."),
    Setting("health_error_rate_degraded", float, 0.05, "ops",
            "A team's error rate over 5 minutes from which /ops/health calls it degraded.",
            checks=(fraction,)),
    Setting("health_error_rate_down", float, 0.5, "ops",
            "A team's error rate over 5 minutes from which /ops/health calls it down.",
            checks=(fraction,)),
    Setting("health_latency_p95_degraded", float, 10.0, "ops",
            "Seconds of a team's p95 latency over 5 minutes from which it is degraded.",
            checks=(positive,)),
    Setting("health_latency_p95_down", float, 30.0, "ops",
            "Seconds of a team's p95 latency over 5 minutes from which it is down.",
            checks=(positive,)),
    Setting("health_min_requests", int, 5, "ops",
            "Requests a team needs in the 5-minute window before /ops/health judges it.",
            checks=(positive,)),
)
# fmt: on

BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
CONFIG_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.config)


def group(name: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.group == name)


def flags_for(command: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if command in s.flag_for)


# --------------------------------------------------------------------------- derived dataclasses


def dataclass_of(
    name: str,
    settings: Iterable[Setting],
    base: type,
    *,
    frozen: bool = False,
    doc: str = "",
    extra: Iterable[tuple[str, Any, Any]] = (),
) -> type:
    """A slotted dataclass with one field per setting (its default; secrets kept out of repr),
    then the `extra` (name, type, dataclasses.field) ones; `base` (with `__slots__ = ()`)
    carries the methods."""
    fields = [
        (
            s.name,
            s.annotation,
            dataclasses.field(default=s.default, repr=not s.secret, metadata={"setting": s}),
        )
        for s in settings
    ]
    fields += list(extra)
    cls = dataclasses.make_dataclass(name, fields, bases=(base,), slots=True, frozen=frozen)
    cls.__module__ = base.__module__  # where it is defined for reprs, pickling and docs
    cls.__doc__ = doc or base.__doc__
    return cls


# --------------------------------------------------------------------------- mitmproxy options


def declare_options(loader: Loader, group_name: str) -> None:
    """`loader.add_option` for each mitmproxy option of the group (called from an addon's `load`)."""
    for s in group(group_name):
        if s.mitmproxy:
            choices = list(s.choices) if s.choices else None
            loader.add_option(s.option, s.annotation, s.default, s.help, choices=choices)


def option_names(group_name: str) -> frozenset[str]:
    return frozenset(s.option for s in group(group_name) if s.mitmproxy)


def read_options(options: Any, group_name: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The group's option values by setting name. An unset secret falls back to its
    `SIDEMETER_*` variable, which keeps it off mitmdump's command line."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in group(group_name):
        if s.mitmproxy:
            value = getattr(options, s.option)
            if s.secret and not value:
                value = env.get(s.env) or None
            values[s.name] = value
    return values


# --------------------------------------------------------------------------- documents


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def shown_default(s: Setting) -> str:
    """The default as the README and `--help` show it (unset optional settings: an em dash)."""
    if s.default is None:
        return "—"
    if isinstance(s.default, bool):
        return "true" if s.default else "false"
    return str(s.default)


def config_file_text(values: Mapping[str, Any] | None = None, *, title: str = "") -> str:
    """A commented TOML file with every config key: its help, variable and flag, and the value
    (`values` override the defaults; keys without a value are commented out)."""
    values = values or {}
    lines = [
        title or "# Sidemeter configuration.",
        "# Sources, later wins: defaults < this file < SIDEMETER_<KEY> environment < command-line flags.",
        "",
    ]
    for s in CONFIG_SETTINGS:
        where = [f"env {s.env}"]
        if s.flag_for:
            where.append(f"flag {s.flag}")
        if s.mitmproxy:
            where.append(f"mitmproxy option {s.option}")
        if s.secret:
            where.append("secret: masked by `sidemeter config show`")
        where.append(f"default: {shown_default(s) if s.default is not None else 'unset'}")
        lines += textwrap.wrap(s.help, 98, initial_indent="# ", subsequent_indent="# ")
        lines += textwrap.wrap("; ".join(where), 98, initial_indent="# ", subsequent_indent="#   ")
        value = values.get(s.name, s.default)
        if value is None:
            lines.append(f'# {s.name} = ""')
        else:
            lines.append(f"{s.name} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


# The example in the repository: the defaults, and a key file as a real deployment has.
EXAMPLE_VALUES: Mapping[str, Any] = {"jwt_secret_file": "/run/secrets/sidemeter-jwt-secret"}
EXAMPLE_TITLE = (
    "# Example Sidemeter configuration (written by `python -m agent.settings toml`).\n"
    "# Copy it to ./sidemeter.toml or pass --config FILE."
)


def readme_rows() -> list[tuple[str, str, str, str]]:
    """(key, default, environment variable, meaning) for README.md's configuration table."""
    rows = []
    for s in CONFIG_SETTINGS:
        meaning = s.help + (" Secret: masked by `config show`." if s.secret else "")
        rows.append(
            (f"`{s.name}`", f"`{shown_default(s)}`" if s.default is not None else "—", f"`{s.env}`", meaning)
        )
    return rows


def readme_table() -> str:
    lines = ["| key | default | environment | meaning |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in readme_rows()]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m agent.settings toml|readme
    what = sys.argv[1] if len(sys.argv) > 1 else "toml"
    if what == "readme":
        print(readme_table())
    else:
        print(config_file_text(EXAMPLE_VALUES, title=EXAMPLE_TITLE), end="")
