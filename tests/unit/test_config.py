"""Layering, coercion and checks of the config, and `sidemeter config validate` listing every problem."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent import cli
from agent import config as configmod
from agent.config import Config, ConfigError
from agent.runtime import Sidecar, StartupError, check_data_dir, preflight_problems


def test_layers_defaults_file_environment_flags(tmp_path: Path) -> None:
    path = tmp_path / "sidemeter.toml"
    path.write_text('jwt_leeway = 5\nteam_claim = "org"\nlisten = "127.0.0.1:1"\n')
    env = {"SIDEMETER_JWT_LEEWAY": "7", "SIDEMETER_TEAM_CLAIM": "grp"}
    cfg = configmod.load(path, {"team_claim": "flag", "listen": None}, environ=env)
    assert (cfg.jwt_leeway, cfg.team_claim, cfg.listen, cfg.jwks_refresh) == (7, "flag", "127.0.0.1:1", 300)


def test_values_are_coerced_and_bad_ones_name_their_source(tmp_path: Path) -> None:
    env = {"SIDEMETER_REQUIRE_USER_MATCH": "on", "SIDEMETER_GRACE_PERIOD": "2", "SIDEMETER_JWT_SECRET": ""}
    cfg = configmod.load(None, environ=env)
    assert cfg.require_user_match is True and cfg.grace_period == 2.0 and cfg.key_sources == []
    with pytest.raises(ConfigError, match="SIDEMETER_JWT_LEEWAY"):
        configmod.load(None, environ={"SIDEMETER_JWT_LEEWAY": "soon"})
    path = tmp_path / "c.toml"
    path.write_text('max_token_bytes = true\nnope = 1\njwks_refresh = "soon"\n')
    with pytest.raises(ConfigError) as info:
        configmod.read_file(path)
    problems = info.value.problems
    assert len(problems) == 3 and all(str(path) in p for p in problems)
    assert any("unknown key(s) nope" in p for p in problems)


def test_capture_prompts_still_takes_the_old_true_and_false(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text("capture_prompts = true\n")
    assert configmod.load(str(path), environ={}).capture_prompts == "full"
    assert configmod.load(None, environ={"SIDEMETER_CAPTURE_PROMPTS": "false"}).capture_prompts == "off"
    assert configmod.load(None, environ={"SIDEMETER_CAPTURE_PROMPTS": "truncated"}).capture_prompts == (
        "truncated"
    )
    with pytest.raises(ConfigError, match="capture_prompts: 'some' is not one of: off, truncated, full"):
        configmod.load(None, environ={"SIDEMETER_CAPTURE_PROMPTS": "some"})


def test_every_problem_is_reported_not_only_the_first() -> None:
    cfg = Config(listen="nowhere", jwt_leeway=-1, batch_size=0, auth="maybe", body_size_limit="big")
    problems = cfg.problems()
    assert [p.split(":")[0] for p in problems] == [
        "listen",
        "auth",
        "jwt_leeway",
        "batch_size",
        "body_size_limit",
    ]
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.problems == tuple(problems)
    assert str(info.value).startswith("listen: 'nowhere'") and "and 4 more problem(s)" in str(info.value)


def test_key_sources_in_plain_english() -> None:
    assert (
        "jwt_secret and jwks_url are both set" in Config(jwt_secret="x", jwks_url="https://i/j").problems()[0]
    )
    three = Config(jwt_secret="x", jwt_public_key="k", jwks_file="j").problems()[0]
    assert three.startswith("jwt_secret, jwt_public_key and jwks_file are all set; configure exactly one")


def test_a_data_dir_that_is_a_file_is_called_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StartupError, match=f"data directory {blocker} is a file, not a directory"):
        check_data_dir(blocker)
    with pytest.raises(StartupError, match=f"cannot be created: {blocker} is a file"):
        check_data_dir(blocker / "data")
    with pytest.raises(StartupError, match="is a file"):  # what run stops at
        Sidecar(Config(auth="off", data_dir=str(blocker), db="sqlite:///:memory:")).preflight()
    check_data_dir(tmp_path / "new" / "dir", create=False)
    assert not (tmp_path / "new").exists()


def _validate(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    path = tmp_path / "sidemeter.toml"
    path.write_text(text)
    res = CliRunner().invoke(cli.main, ["config", "validate", "--config", str(path)])
    return res.exit_code, res.output.strip().splitlines()


def test_config_validate_lists_every_problem_run_would_stop_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # no PostgreSQL driver, whatever this machine has
        importlib.util, "find_spec", lambda name, *a: None if "psycopg" in name else real_find_spec(name, *a)
    )
    (tmp_path / "file").write_text("")
    (tmp_path / "junk.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    code, lines = _validate(
        tmp_path,
        f'upstream = "ftp://nope"\njwt_leeway = -1\nmax_token_bytes = "many"\n'
        f'jwt_public_key = "{tmp_path}/junk.pem"\ndata_dir = "{tmp_path}/file"\n'
        'db = "postgresql://u:pw@db.invalid/usage"\n',
    )
    assert code == 2
    assert all(line.startswith("error: ") for line in lines) and len(lines) == 6, lines
    text = "\n".join(lines)
    for expected in (
        "max_token_bytes: 'many'",
        "upstream: 'ftp://nope'",
        "jwt_leeway: must be 0 or more",
        "not a readable PEM public key",
        f"data directory {tmp_path}/file is a file",
        "needs the PostgreSQL driver",
    ):
        assert expected in text
    assert "pw" not in text  # the database password stays out

    code, lines = _validate(tmp_path, f'data_dir = "{tmp_path}/d"\njwks_file = "{tmp_path}/missing.json"\n')
    assert code == 2 and len(lines) == 1 and "jwks_file: file" in lines[0] and "does not exist" in lines[0]

    code, lines = _validate(tmp_path, f'data_dir = "{tmp_path}/d"\ndb = "sqlite:///{tmp_path}/u.db"\n')
    assert (
        code == 2 and len(lines) == 1 and "no JWT key is configured" in lines[0] and "--auth off" in lines[0]
    )

    code, lines = _validate(
        tmp_path, f'auth = "off"\ndata_dir = "{tmp_path}/d"\ndb = "sqlite:///{tmp_path}/u.db"\n'
    )
    assert (code, lines) == (0, ["config ok"])
    assert not (tmp_path / "d").exists() and not (tmp_path / "u.db").exists()  # nothing created


def test_config_validate_reuses_the_checks_of_run(tmp_path: Path) -> None:
    (tmp_path / "u.db").write_text("not a database")
    cfg = Config(
        auth="off",
        data_dir=str(tmp_path),
        db=f"sqlite:///{tmp_path}/u.db",
        listen="1.2.3.4:9",
        ops_listen="1.2.3.4:9",
    )
    problems = preflight_problems(cfg)
    assert len(problems) == 2
    assert (
        "--listen and --ops-listen are both" in problems[0]
        and "cannot open the SQLite database" in problems[1]
    )


PRICED = """
currency = "EUR"

[[prices]]
model = "llama3*"
gpu_hour = 2.4

[[prices]]
model = "gpt-4o-mini"
input_per_million = 0.15
output_per_million = 0.6
cached_input_per_million = 0.075

[[quotas]]
team = "ml"
cost_per_day = 5
cost_per_month = 100.5
"""


def test_prices_and_budgets_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sidemeter.toml"
    path.write_text(PRICED)
    cfg = configmod.load(path, environ={})
    table = cfg.price_table
    assert table is not None and table.currency == "EUR"
    assert table.price_for("llama3.2:latest").gpu_hour == 2.4  # type: ignore[union-attr]
    assert table.price_for("gpt-4o-mini").cached_input_per_million == 0.075  # type: ignore[union-attr]
    assert [(lim.key, lim.value) for lim in cfg.quotas[0].budgets] == [
        ("cost_per_day", 5),
        ("cost_per_month", 100.5),
    ]
    assert cfg.to_dict()["prices"] == [
        {"model": "llama3*", "gpu_hour": 2.4},
        {
            "model": "gpt-4o-mini",
            "input_per_million": 0.15,
            "output_per_million": 0.6,
            "cached_input_per_million": 0.075,
        },
    ]
    assert configmod.load(None, environ={}).price_table is None


def test_prices_need_a_currency_and_budgets_need_prices(tmp_path: Path) -> None:
    path = tmp_path / "sidemeter.toml"
    path.write_text(PRICED.replace('currency = "EUR"', ""))
    with pytest.raises(ConfigError, match=r'prices need a currency: add e\.g\. currency = "USD"'):
        configmod.load(path, environ={})
    with pytest.raises(ConfigError, match="currency: 'euro' is not an ISO 4217 code"):
        configmod.load(path, environ={"SIDEMETER_CURRENCY": "euro"})
    assert configmod.load(path, environ={"SIDEMETER_CURRENCY": "USD"}).price_table.currency == "USD"
    path.write_text('currency = "EUR"\n[[quotas]]\nteam = "ml"\ncost_per_day = 5\ncost_per_month = 100.5\n')
    with pytest.raises(ConfigError) as info:
        configmod.load(path, environ={})
    assert info.value.problems == (
        "quotas rule team:ml: cost_per_day is a budget in currency and needs prices; add [[prices]] "
        "tables for the models (README: Cost) or remove it",
        "quotas rule team:ml: cost_per_month is a budget in currency and needs prices; add [[prices]] "
        "tables for the models (README: Cost) or remove it",
    )
    path.write_text(
        'currency = "USD"\n[[prices]]\nmodel = "m"\n[[prices]]\nmodel = "n"\ngpu_hour = "cheap"\n'
    )
    with pytest.raises(ConfigError) as info:
        configmod.read_file(path)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        "prices table 1: no price; give input_per_million, output_per_million, cached_input_per_million "
        "(per million tokens) or gpu_hour",
        "prices table 2: gpu_hour must be a number of 0 or more, got 'cheap'",
    ]
