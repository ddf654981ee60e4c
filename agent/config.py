"""Configuration: defaults < TOML file < SIDEMETER_* environment < command-line flags.

The keys, their types, defaults, help and checks are the table in agent/settings.py; `Config`
is derived from it, one attribute per key. Two keys are not scalar settings, and are read from
the file only: `quotas`, the `[[quotas]]` tables, parsed into `QuotaRule`s (agent/quota/rules.py)
on `Config.quotas`, and `prices`, the `[[prices]]` tables, parsed into `Price`s (agent/prices.py)
on `Config.prices` (in the `currency` setting's currency; `Config.price_table` is the two together).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.durations import parse_duration
from agent.instance import LIVE_BEATS
from agent.prices import PRICES, Price, PriceTable, currency_problem, parse_prices
from agent.quota.rules import QuotaRule, parse_rules
from agent.settings import (
    BY_NAME,
    CONFIG_SETTINGS,
    ENV_PREFIX,
    ConfigError,
    dataclass_of,
    parse_hostport,
    parse_size,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "KEY_SOURCES",
    "PRICES",
    "QUOTAS",
    "Config",
    "ConfigError",
    "key_source_conflict",
    "load",
    "load_unchecked",
    "parse_hostport",
    "parse_size",
    "read_env",
    "read_file",
]

DEFAULT_CONFIG_FILE = "sidemeter.toml"

# Where the JWT verification key comes from; exactly one may be set when auth is jwt.
KEY_SOURCES = ("jwt_secret", "jwt_secret_file", "jwt_public_key", "jwks_url", "jwks_file")


def key_source_conflict(sources: Sequence[str]) -> str | None:
    """The problem when more than one JWT key source is set, else None."""
    if len(sources) < 2:
        return None
    listed = f"{', '.join(sources[:-1])} and {sources[-1]}"
    return (
        f"{listed} are {'both' if len(sources) == 2 else 'all'} set; configure exactly one JWT key "
        "source (a shared secret, a public key file or a JWKS)"
    )


class _ConfigMethods:
    """Every setting of the sidecar (see agent/settings.py for each key's meaning)."""

    __slots__ = ()

    # -- access -----------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(s.name for s in CONFIG_SETTINGS)

    @classmethod
    def help_for(cls, key: str) -> str:
        return BY_NAME[key].help if key in BY_NAME else ""

    @classmethod
    def is_secret(cls, key: str) -> bool:
        return key in BY_NAME and BY_NAME[key].secret

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.field_names()}
        d[QUOTAS] = [rule.to_table() for rule in getattr(self, QUOTAS)]
        d[PRICES] = [price.to_table() for price in getattr(self, PRICES)]
        if redact:
            for k, v in d.items():
                if v and self.is_secret(k):
                    d[k] = "***"
        return d

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    # -- derived ------------------------------------------------------------------

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_hostport(getattr(self, "listen"), "listen")  # noqa: B009

    @property
    def ops_address(self) -> tuple[str, int]:
        return parse_hostport(getattr(self, "ops_listen"), "ops_listen")  # noqa: B009

    @property
    def price_table(self) -> PriceTable | None:
        """The `[[prices]]` tables in their currency; None without prices."""
        prices = getattr(self, PRICES)
        return PriceTable(prices, getattr(self, "currency")) if prices else None  # noqa: B009

    @property
    def key_sources(self) -> list[str]:
        """The JWT key sources that are set (empty values, e.g. `SIDEMETER_JWT_SECRET=`, are unset)."""
        return [k for k in KEY_SOURCES if getattr(self, k)]

    def problems(self) -> list[str]:
        """Every value that cannot work, one line each (empty: the config is fine)."""
        found: list[str] = []
        for s in CONFIG_SETTINGS:
            try:
                s.check(getattr(self, s.name))
            except ConfigError as e:
                found.extend(e.problems)
        conflict = key_source_conflict(self.key_sources)
        if conflict:
            found.append(conflict)
        currency = currency_problem(getattr(self, "currency"), getattr(self, PRICES))  # noqa: B009
        if currency:
            found.append(currency)
        if not getattr(self, PRICES):
            for rule in getattr(self, QUOTAS):
                for lim in rule.budgets:
                    found.append(
                        f"quotas rule {rule.name}: {lim.key} is a budget in currency and needs prices; "
                        "add [[prices]] tables for the models (README: Cost) or remove it"
                    )
        for degraded, down in _THRESHOLD_PAIRS:
            low, high = getattr(self, degraded), getattr(self, down)
            if low > high:
                found.append(
                    f"{degraded} ({low}) is above {down} ({high}); a team is degraded before it is down"
                )
        beats = LIVE_BEATS * self.heartbeat_interval
        with contextlib.suppress(ValueError):  # a bad duration is already a problem above
            if parse_duration(self.instance_retention).total_seconds() <= beats:
                found.append(
                    f"instance_retention ({self.instance_retention}) must be longer than "
                    f"{LIVE_BEATS} heartbeat intervals ({beats:g}s), or live sidecars are forgotten"
                )
        return found

    def validate(self) -> Any:
        """The config itself; ConfigError with every problem when something cannot work."""
        found = self.problems()
        if found:
            raise ConfigError(*found)
        return self


_THRESHOLD_PAIRS = (
    ("health_error_rate_degraded", "health_error_rate_down"),
    ("health_latency_p95_degraded", "health_latency_p95_down"),
)


QUOTAS = "quotas"  # the [[quotas]] tables: rules, not a scalar setting

Config: Any = dataclass_of(
    "Config",
    CONFIG_SETTINGS,
    _ConfigMethods,
    extra=[
        (QUOTAS, tuple[QuotaRule, ...], dataclasses.field(default=())),
        (PRICES, tuple[Price, ...], dataclasses.field(default=())),
    ],
)


def _coerce(key: str, raw: Any, source: str) -> Any:
    """Turn a file or environment value into the key's type, with an error naming its source."""
    return BY_NAME[key].coerce(raw, source)


def _read_values(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; create it with `sidemeter config init`"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give the TOML file itself") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    names = Config.field_names()
    unknown = sorted(set(data) - {*names, QUOTAS, PRICES})
    if unknown:
        problems.append(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(names)}, {QUOTAS}, {PRICES}"
        )
    values = _coerced({k: v for k, v in data.items() if k in names}, str(path), problems)
    if QUOTAS in data:
        values[QUOTAS] = parse_rules(data[QUOTAS], f"config file {path}", problems)
    if PRICES in data:
        values[PRICES] = parse_prices(data[PRICES], f"config file {path}", problems)
    return values


def _coerced(raw: Mapping[str, Any], source: Any, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = _coerce(key, value, source(key) if callable(source) else source)
        except ConfigError as e:
            problems.extend(e.problems)
    return out


def read_file(path: str | Path) -> dict[str, Any]:
    problems: list[str] = []
    values = _read_values(Path(path), problems)
    if problems:
        raise ConfigError(*problems)
    return values


def _env_values(environ: Mapping[str, str] | None, problems: list[str]) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    present = {s.name: env[s.env] for s in CONFIG_SETTINGS if s.env in env}
    return _coerced(present, lambda key: BY_NAME[key].env, problems)


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    problems: list[str] = []
    values = _env_values(environ, problems)
    if problems:
        raise ConfigError(*problems)
    return values


def load_unchecked(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Any, list[str]]:
    """The layered config before its values are checked, and the problems met while reading
    (values that do not parse are left at the layer below). A missing or broken file raises."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_values(Path(path), problems))
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        values.update(_read_values(Path(DEFAULT_CONFIG_FILE), problems))
    values.update(_env_values(environ, problems))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Config(**values), problems


def load(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """Layer the sources; `path=None` reads ./sidemeter.toml only if it exists. ConfigError
    with every problem found."""
    cfg, problems = load_unchecked(path, overrides, environ)
    problems += cfg.problems()
    if problems:
        raise ConfigError(*problems)
    return cfg
