"""The settings table and everything derived from it: Config, flags, mitmproxy options, files, README."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from mitmproxy.test import taddons

from addons.auth import Auth
from addons.meter import Meter
from addons.quota import Quota
from addons.record import Recorder
from agent import cli, settings
from agent import config as configmod
from agent.auth.settings import AuthSettings
from agent.config import Config
from agent.proxy.limits import ConnectionLimits
from agent.settings import BY_NAME, CONFIG_SETTINGS, SETTINGS
from tests.support.paths import ROOT

# The user-visible names as they were before the table: none may change.
MITMPROXY_OPTIONS = {
    "sidemeter_quota_timezone",
    "sidemeter_quota_default_reservation",
    "sidemeter_quota_default_reservation_seconds",
    "sidemeter_auth",
    "sidemeter_header_timeout",
    "sidemeter_idle_timeout",
    "sidemeter_max_connections",
    "sidemeter_max_request_line",
    "sidemeter_max_header_size",
    "sidemeter_journal",
    "sidemeter_jwt_secret",
    "sidemeter_jwt_secret_file",
    "sidemeter_jwt_public_key",
    "sidemeter_jwks_url",
    "sidemeter_jwks_file",
    "sidemeter_jwt_audience",
    "sidemeter_jwt_issuer",
    "sidemeter_jwt_leeway",
    "sidemeter_jwt_max_lifetime",
    "sidemeter_team_claim",
    "sidemeter_require_user_match",
    "sidemeter_max_token_bytes",
    "sidemeter_jwks_refresh",
    "sidemeter_forward_authorization",
    "sidemeter_upstream_api_key",
    "sidemeter_inject_usage",
    "sidemeter_capture_prompts",
    "sidemeter_capture_prompts_chars",
    "sidemeter_db",
}
TOKEN_VERIFY_FLAGS = {
    "--config",
    "--jwt-secret-file",
    "--jwt-public-key",
    "--jwks-url",
    "--jwks-file",
    "--jwt-audience",
    "--jwt-issuer",
    "--jwt-leeway",
    "--jwt-max-lifetime",
    "--team-claim",
}
RUN_FLAGS = TOKEN_VERIFY_FLAGS | {
    "--log-format",
    "--access-log",
    "--upstream",
    "--listen",
    "--ops-listen",
    "--db",
    "--auth",
    "--jwt-secret",
    "--require-user-match",
    "--no-require-user-match",
    "--max-token-bytes",
    "--forward-authorization",
    "--no-forward-authorization",
    "--upstream-api-key",
    "--data-dir",
    "--grace-period",
    "--capture-prompts",
    "--log-level",
    "--instance-id",
    "--auto-prune",
    "--no-auto-prune",
}
CONFIG_KEYS = {
    *("upstream", "listen", "ops_listen", "db", "auth", "jwt_secret", "jwt_secret_file"),
    *("jwt_public_key", "jwks_url", "jwks_file", "jwks_refresh", "jwt_audience", "jwt_issuer"),
    *("jwt_leeway", "team_claim", "require_user_match", "max_token_bytes", "forward_authorization"),
    *("upstream_api_key", "grace_period", "queue_size", "batch_size", "journal", "retention"),
    *("capture_prompts", "capture_prompts_chars"),
    *("body_size_limit", "data_dir", "log_level", "log_format", "access_log"),
    "jwt_max_lifetime",
    *("header_timeout", "idle_timeout", "max_connections", "max_request_line", "max_header_size"),
    *("metrics_max_teams", "metrics_max_models", "metrics_user_label", "metrics_max_users"),
    *("ops_role_claim", "ops_roles", "ops_cors_origins", "probe_interval", "probe_timeout"),
    *("ready_requires_upstream", "health_error_rate_degraded", "health_error_rate_down"),
    *("health_latency_p95_degraded", "health_latency_p95_down", "health_min_requests"),
    *("quota_timezone", "quota_default_reservation", "quota_sync_interval", "quota_stale_after"),
    *("quota_store_down_rates", "quota_store_down_budgets", "quota_default_reservation_seconds"),
    *("instance_id", "auto_prune", "currency"),
    *("heartbeat_interval", "instance_retention"),
}


def test_the_table_is_consistent() -> None:
    assert len(BY_NAME) == len(SETTINGS)
    assert {s.name for s in CONFIG_SETTINGS} == CONFIG_KEYS and len(CONFIG_SETTINGS) == len(CONFIG_KEYS)
    for s in SETTINGS:
        assert s.help.strip() and s.help.endswith("."), s.name
        assert s.default is None or isinstance(s.default, s.type), s.name
        assert not s.choices or s.default in s.choices, s.name
        s.check(s.default)  # every default passes its own checks
        assert s.config or not s.flag_for, f"{s.name}: a flag needs a config key to land in"
    assert {s.option for s in SETTINGS if s.mitmproxy} == MITMPROXY_OPTIONS
    assert [s.name for s in SETTINGS if not s.config] == ["inject_usage"]


def test_config_is_derived_from_the_table() -> None:
    fields = {f.name: f for f in dataclasses.fields(Config)}
    assert list(fields) == [*(s.name for s in CONFIG_SETTINGS), "quotas", "prices"]  # the tables
    cfg = Config()
    for s in CONFIG_SETTINGS:
        assert getattr(cfg, s.name) == s.default
        assert fields[s.name].repr is not s.secret
        assert Config.help_for(s.name) == s.help and Config.is_secret(s.name) is s.secret
    assert not hasattr(cfg, "__dict__")  # slotted
    assert cfg.replace(jwt_leeway=5).jwt_leeway == 5 and cfg.jwt_leeway == 30
    assert Config.field_names() == tuple(s.name for s in CONFIG_SETTINGS)


def test_auth_settings_are_the_auth_group() -> None:
    names = [f.name for f in dataclasses.fields(AuthSettings)]
    assert names == [s.name for s in settings.group("auth")]
    assert "auth" in names and "upstream_api_key" in names and "db" not in names
    from_cfg = AuthSettings.from_config(Config(jwt_leeway=7, auth="off"))
    assert from_cfg.jwt_leeway == 7 and from_cfg.mode == "off" and not from_cfg.enabled
    assert AuthSettings() == AuthSettings.from_config(Config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_cfg.jwt_leeway = 1  # type: ignore[misc]


def _long_flags(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def test_flags_keep_their_names_and_show_their_help_and_default() -> None:
    run, token = cli.main.commands["run"], cli.main.commands["token"]
    assert isinstance(token, click.Group)
    assert _long_flags(run) == RUN_FLAGS
    assert _long_flags(token.commands["verify"]) == TOKEN_VERIFY_FLAGS
    for param in run.params:
        assert isinstance(param, click.Option) and param.help, param.name
        s = BY_NAME.get(param.name or "")
        if s is not None and s.default is not None:
            assert param.show_default and param.default == s.default, param.name
    text = CliRunner().invoke(cli.main, ["run", "--help"]).output
    assert "[default: 30]" in text and "[default: info]" in text  # --jwt-leeway, --log-level
    assert "How much the sidecar logs" in text


def test_flags_override_the_file_only_when_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_load(config_path: str | None, **overrides: Any) -> Config:
        seen.update(overrides)
        raise SystemExit(0)

    monkeypatch.setattr(cli.run, "_load", fake_load)
    monkeypatch.setattr(cli.run, "_reexec_optimized", lambda: None)
    res = CliRunner().invoke(cli.main, ["run", "--listen", "127.0.0.1:1", "--capture-prompts", "truncated"])
    assert res.exit_code == 0, res.output
    assert seen == {"listen": "127.0.0.1:1", "capture_prompts": "truncated"}


def test_addons_declare_the_options_and_read_them_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEMETER_JWT_SECRET", "s" * 32)
    auth, meter, recorder, limits, quota = Auth(), Meter(), Recorder(), ConnectionLimits(), Quota()
    with taddons.context(auth, meter, recorder, limits, quota) as tctx:
        options = tctx.options
        declared = {n for n in options.keys() if n.startswith("sidemeter_")}  # noqa: SIM118 (not iterable)
        assert declared == MITMPROXY_OPTIONS
        for s in SETTINGS:
            if s.mitmproxy:
                assert options._options[s.option].default == s.default
                assert options._options[s.option].help == s.help
        assert options._options["sidemeter_auth"].choices == ["jwt", "off"]
        tctx.configure(auth, sidemeter_jwt_leeway=5, sidemeter_team_claim="org.team")
        assert auth.settings is not None and auth.verifier is not None
        assert (auth.settings.jwt_leeway, auth.verifier.leeway, auth.verifier.team_claim) == (
            5,
            5,
            "org.team",
        )
        assert auth.settings.jwt_secret == "s" * 32  # from the environment, off the command line
        tctx.configure(meter, sidemeter_inject_usage=False, sidemeter_capture_prompts="full")
        assert (meter.inject_usage, meter.capture_prompts) == (False, "full")
        tctx.configure(limits, sidemeter_header_timeout=2.5, sidemeter_max_connections=7)
        assert (limits.header_timeout, limits.max_connections, limits.idle_timeout) == (2.5, 7, 90.0)
        tctx.configure(quota, sidemeter_quota_default_reservation=77)
        assert quota.default_reservation == 77 and quota.ledger is not None and not quota.ledger.rules


def test_config_init_writes_every_key_with_its_help_variable_and_default(tmp_path: Path) -> None:
    target = tmp_path / "sidemeter.toml"
    res = CliRunner().invoke(cli.main, ["config", "init", str(target)])
    assert res.exit_code == 0, res.output
    text = target.read_text()
    values = tomllib.loads(text)
    for s in CONFIG_SETTINGS:
        assert s.env in text and s.help.split()[0] in text
        if s.default is None:
            assert f'# {s.name} = ""' in text and s.name not in values
        else:
            assert values[s.name] == s.default
    assert "inject_usage" not in text
    res = CliRunner().invoke(cli.main, ["config", "show", "--config", str(target)])
    assert res.exit_code == 0 and "jwt_leeway = 30" in res.output


def test_the_example_config_file_is_generated_from_the_table() -> None:
    example = (ROOT / "configs" / "sidemeter.toml").read_text()
    expected = settings.config_file_text(settings.EXAMPLE_VALUES, title=settings.EXAMPLE_TITLE)
    assert example == expected, "regenerate it: python -m agent.settings toml > configs/sidemeter.toml"

    assert (
        configmod.load(ROOT / "configs" / "sidemeter.toml").jwt_secret_file
        == "/run/secrets/sidemeter-jwt-secret"
    )


def _readme_config_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines, "README.md's configuration section has no table"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["key", "default", "environment", "meaning"]
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines[2:]]


def test_the_readme_configuration_table_matches_the_settings() -> None:
    rows = _readme_config_rows()
    hint = "update README.md's configuration table: python -m agent.settings readme"
    assert [r[0].strip("`") for r in rows] == [s.name for s in CONFIG_SETTINGS], hint
    for (_key, default, env, meaning), s in zip(rows, CONFIG_SETTINGS, strict=True):
        assert default.strip("`") == settings.shown_default(s), f"{s.name}: default; {hint}"
        assert env == f"`{s.env}`", f"{s.name}: environment variable; {hint}"
        assert meaning.startswith(s.help), f"{s.name}: meaning; {hint}"
    assert [tuple(r) for r in rows] == settings.readme_rows(), hint
