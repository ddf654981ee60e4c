"""Configuration: defaults < TOML file < SIDEMETER_* environment < command-line flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "SIDEMETER_"
DEFAULT_CONFIG_FILE = "sidemeter.toml"


# Where the JWT verification key comes from; exactly one may be set when auth is jwt.
KEY_SOURCES = ("jwt_secret", "jwt_secret_file", "jwt_public_key", "jwks_url", "jwks_file")


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key, the value and what to do."""


@dataclass(slots=True)
class Config:
    upstream: str = field(
        default="http://127.0.0.1:11434",
        metadata={"help": "URL of the LLM server the sidecar relays to (Ollama, vLLM, llama.cpp)."},
    )
    listen: str = field(default="0.0.0.0:8080", metadata={"help": "HOST:PORT clients send LLM requests to."})
    ops_listen: str = field(
        default="0.0.0.0:9090",
        metadata={"help": "HOST:PORT of the ops API (health, stats, /metrics)."},
    )
    db: str = field(
        default="sqlite:///data/usage.db",
        metadata={"help": "Usage store URL: sqlite:///relative.db, sqlite:////abs.db, postgresql://..."},
    )
    auth: str = field(
        default="jwt",
        metadata={"help": "jwt: verify bearer tokens; off: no authentication (say so explicitly)."},
    )
    jwt_secret: str | None = field(
        default=None,
        repr=False,
        metadata={
            "help": "Shared secret for HS256/384/512 tokens (SIDEMETER_JWT_SECRET keeps it out of files).",
            "secret": True,
        },
    )
    jwt_secret_file: str | None = field(
        default=None,
        metadata={"help": "File holding the shared HS256/384/512 secret (surrounding whitespace ignored)."},
    )
    jwt_public_key: str | None = field(
        default=None,
        metadata={"help": "PEM public key (or certificate) file for RS*/PS*, ES* or EdDSA tokens."},
    )
    jwks_url: str | None = field(
        default=None,
        metadata={"help": "URL of the identity provider's JWKS; cached, refreshed, refetched on a new kid."},
    )
    jwks_file: str | None = field(default=None, metadata={"help": "Local JWKS (JSON) file of public keys."})
    jwt_audience: str | None = field(
        default=None,
        metadata={"help": "Required token audience (aud); several accepted values separated by commas."},
    )
    jwt_issuer: str | None = field(default=None, metadata={"help": "Required token issuer (iss)."})
    jwt_leeway: int = field(
        default=30,
        metadata={"help": "Seconds of clock skew allowed when checking exp, nbf and iat."},
    )
    team_claim: str = field(
        default="team",
        metadata={"help": "Token claim that names the caller's team (a dotted path reaches nested claims)."},
    )
    require_user_match: bool = field(
        default=False,
        metadata={"help": "Refuse requests whose X-User-Id header, when sent, differs from the token's sub."},
    )
    max_token_bytes: int = field(default=8192, metadata={"help": "Largest bearer token accepted, in bytes."})
    jwks_refresh: int = field(
        default=300,
        metadata={"help": "Seconds a fetched JWKS is used before it is fetched again."},
    )
    upstream_api_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "help": "Sent upstream as Authorization: Bearer <key> (vLLM --api-key) instead of the client's.",
            "secret": True,
        },
    )
    grace_period: float = field(
        default=30.0,
        metadata={"help": "Seconds a SIGTERM waits for in-flight requests and streams to finish."},
    )
    queue_size: int = field(
        default=10_000,
        metadata={"help": "Records held in memory for the writer; beyond it they spill to disk."},
    )
    batch_size: int = field(default=500, metadata={"help": "Records written per transaction."})
    capture_prompts: bool = field(
        default=False, metadata={"help": "Store prompt text on usage records (off: privacy)."}
    )
    forward_authorization: bool = field(
        default=False,
        metadata={"help": "Forward the client's Authorization header to the upstream."},
    )
    body_size_limit: str = field(
        default="32m",
        metadata={"help": "Largest request body accepted (k/m/g suffixes); larger gets 413."},
    )
    data_dir: str = field(
        default="data",
        metadata={"help": "Directory for spill files and the proxy's runtime state."},
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error."})

    # -- access -----------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def help_for(cls, key: str) -> str:
        return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == key)

    @classmethod
    def is_secret(cls, key: str) -> bool:
        return any(f.name == key and f.metadata.get("secret") for f in dataclasses.fields(cls))

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if redact:
            for k, v in d.items():
                if v and self.is_secret(k):
                    d[k] = "***"
        return d

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    # -- derived ------------------------------------------------------------------

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_hostport(self.listen, "listen")

    @property
    def ops_address(self) -> tuple[str, int]:
        return parse_hostport(self.ops_listen, "ops_listen")

    @property
    def key_sources(self) -> list[str]:
        """The JWT key sources that are set (empty values, e.g. `SIDEMETER_JWT_SECRET=`, are unset)."""
        return [k for k in KEY_SOURCES if getattr(self, k)]

    def validate(self) -> Config:
        """Check every value; raise ConfigError for the first that cannot work."""
        parse_hostport(self.listen, "listen")
        parse_hostport(self.ops_listen, "ops_listen")
        u = urlsplit(self.upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(
                f"upstream: {self.upstream!r} is not an http(s) URL; "
                "use e.g. http://127.0.0.1:11434 (Ollama) or http://127.0.0.1:8000 (vLLM)"
            )
        if u.path not in ("", "/"):
            raise ConfigError(
                f"upstream: {self.upstream!r} has a path; give the server's base URL only "
                "(clients keep sending /v1/... or /api/... themselves)"
            )
        if self.auth not in ("jwt", "off"):
            raise ConfigError(f"auth: {self.auth!r} is not one of: jwt, off")
        scheme = self.db.split(":", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ConfigError(
                f"db: {self.db!r} is not a supported URL; use sqlite:///data/usage.db "
                "or postgresql://user:password@host/dbname"
            )
        for key in ("grace_period", "queue_size", "batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: {self.log_level!r} is not debug, info, warning or error")
        parse_size(self.body_size_limit, "body_size_limit")
        self._validate_auth()
        return self

    def _validate_auth(self) -> None:
        sources = self.key_sources
        if len(sources) > 1:
            raise ConfigError(
                f"{' and '.join(sources)} are all set; configure exactly one JWT key source "
                "(a shared secret, a public key file or a JWKS)"
            )
        if self.jwks_url:
            u = urlsplit(self.jwks_url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ConfigError(
                    f"jwks_url: {self.jwks_url!r} is not an http(s) URL; "
                    "use your identity provider's JWKS address, e.g. https://idp.example.com/.well-known/jwks.json"
                )
        for key in ("max_token_bytes", "jwks_refresh"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)!r}")
        if self.jwt_leeway < 0:
            raise ConfigError(f"jwt_leeway: must be 0 or more seconds, got {self.jwt_leeway!r}")
        if not self.team_claim.strip():
            raise ConfigError("team_claim: must name a claim, e.g. team")


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


def _coerce(key: str, raw: Any, source: str) -> Any:
    """Turn a file or environment value into the field's type, with an error naming its source."""
    ftype = next(f.type for f in dataclasses.fields(Config) if f.name == key)
    try:
        if "bool" in ftype:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if "int" in ftype:
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if "float" in ftype:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if raw is None:
            return None
        if not isinstance(raw, str | int | float):
            raise ValueError
        return str(raw)
    except ValueError:
        kind = ftype.split(" ")[0]
        raise ConfigError(f"{key}: {raw!r} from {source} is not a valid {kind}") from None


def read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; create it with `sidemeter config init`") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(Config.field_names()))
    if unknown:
        raise ConfigError(
            f"config file {p}: unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(Config.field_names())}"
        )
    return {k: _coerce(k, v, str(p)) for k, v in data.items()}


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key in Config.field_names():
        name = ENV_PREFIX + key.upper()
        if name in env:
            out[key] = _coerce(key, env[name], name)
    return out


def load(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Layer the sources; `path=None` reads ./sidemeter.toml only if it exists."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_file(path))
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        values.update(read_file(DEFAULT_CONFIG_FILE))
    values.update(read_env(environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Config(**values).validate()
