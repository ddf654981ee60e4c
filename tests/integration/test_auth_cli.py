"""`sidemeter token issue|verify` and `sidemeter run` with authentication, run as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.sim import SimulatedLLM
from tests.support.paths import ROOT
from tests.support.sidecar import RunningSidecar

CLI = [sys.executable, "-m", "agent.cli"]
SECRET = "cli-test-secret-" + "x" * 32


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMETER_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def cli(*args: str, cwd: Path, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=cwd, env=_env(**env), input=stdin, timeout=60
    )


def issue(tmp_path: Path, *args: str, **env: str) -> str:
    res = cli("token", "issue", *args, cwd=tmp_path, **env)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()[-1]


async def test_issued_token_works_through_the_sidecar(
    tmp_path: Path, sim_openai: SimulatedLLM, start_sidecar: Any
) -> None:
    token = await asyncio.to_thread(
        issue,
        tmp_path,
        "--sub",
        "alice",
        "--team",
        "ml",
        "--ttl",
        "5m",
        "--claim",
        "tier=3",
        "--claim",
        "scope=chat",
        SIDEMETER_JWT_SECRET=SECRET,
        SIDEMETER_JWT_AUDIENCE="sidemeter,other",
        SIDEMETER_JWT_ISSUER="https://issuer.test",
    )
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="sidemeter")
    assert claims["sub"] == "alice" and claims["team"] == "ml" and claims["iss"] == "https://issuer.test"
    assert claims["tier"] == 3 and claims["scope"] == "chat"
    assert 290 <= claims["exp"] - claims["iat"] <= 300
    side: RunningSidecar = await start_sidecar(
        sim_openai.url,
        auth="jwt",
        jwt_secret=SECRET,
        jwt_audience="sidemeter,other",
        jwt_issuer="https://issuer.test",
    )
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            side.url + "/v1/chat/completions",
            json={"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id},
        )
    assert resp.status_code == 200, resp.text
    rec = await side.record(request_id)
    assert (rec.user, rec.team) == ("alice", "ml")


def test_verify_prints_the_claims_or_the_exact_reason(tmp_path: Path) -> None:
    token = issue(tmp_path, "--sub", "bob", "--team", "search", SIDEMETER_JWT_SECRET=SECRET)
    ok = cli("token", "verify", token, cwd=tmp_path, SIDEMETER_JWT_SECRET=SECRET)
    assert ok.returncode == 0, ok.stderr
    claims = json.loads(ok.stdout)
    assert claims["sub"] == "bob" and claims["team"] == "search"
    assert "valid: user bob, team search" in ok.stderr

    from_stdin = cli("token", "verify", "-", cwd=tmp_path, stdin=token + "\n", SIDEMETER_JWT_SECRET=SECRET)
    assert from_stdin.returncode == 0 and json.loads(from_stdin.stdout)["sub"] == "bob"

    expired = issue(
        tmp_path, "--sub", "bob", "--claim", f"exp={int(time.time()) - 3600}", SIDEMETER_JWT_SECRET=SECRET
    )
    res = cli("token", "verify", expired, cwd=tmp_path, SIDEMETER_JWT_SECRET=SECRET)
    assert res.returncode == 1 and res.stderr.startswith("invalid token: expired: the token expired at ")
    assert res.stdout == ""

    wrong = cli("token", "verify", token, cwd=tmp_path, SIDEMETER_JWT_SECRET="another-secret-" + "y" * 32)
    assert wrong.returncode == 1 and "invalid token: bad_signature" in wrong.stderr

    aud = cli("token", "verify", token, "--jwt-audience", "llm", cwd=tmp_path, SIDEMETER_JWT_SECRET=SECRET)
    assert aud.returncode == 1 and "invalid token: bad_audience" in aud.stderr

    garbage = cli("token", "verify", "nonsense", cwd=tmp_path, SIDEMETER_JWT_SECRET=SECRET)
    assert garbage.returncode == 1 and "invalid token: malformed" in garbage.stderr
    # The secret and the token are never echoed back.
    for done in (ok, res, wrong, aud):
        assert SECRET not in done.stdout + done.stderr
    assert token not in ok.stdout + ok.stderr


def test_private_key_tokens_verify_with_the_public_key(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    private = tmp_path / "signing.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = tmp_path / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    token = issue(tmp_path, "--sub", "carol", "--private-key", str(private), "--kid", "ed-1")
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": "ed-1", "typ": "JWT"}
    ok = cli("token", "verify", token, "--jwt-public-key", str(public), cwd=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout)["sub"] == "carol"
    # Giving the private key where the public one belongs is refused with the fix.
    bad = cli("token", "verify", token, "--jwt-public-key", str(private), cwd=tmp_path)
    assert bad.returncode == 2 and "holds a private key" in bad.stderr and "-pubout" in bad.stderr


def test_issue_without_a_signing_key_says_what_to_configure(tmp_path: Path) -> None:
    res = cli("token", "issue", "--sub", "alice", cwd=tmp_path)
    assert res.returncode == 2 and "SIDEMETER_JWT_SECRET" in res.stderr and "--private-key" in res.stderr
    bad_claim = cli(
        "token", "issue", "--sub", "a", "--claim", "novalue", cwd=tmp_path, SIDEMETER_JWT_SECRET=SECRET
    )
    assert bad_claim.returncode == 2 and "KEY=VALUE" in bad_claim.stderr
    bad_ttl = cli("token", "issue", "--sub", "a", "--ttl", "soon", cwd=tmp_path, SIDEMETER_JWT_SECRET=SECRET)
    assert bad_ttl.returncode == 2 and "--ttl" in bad_ttl.stderr


def _run_args(tmp_path: Path, *extra: str, upstream: str = "http://127.0.0.1:9") -> list[str]:
    return [
        "run",
        "--upstream",
        upstream,
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        "--db",
        f"sqlite:///{tmp_path}/u.db",
        *extra,
    ]


def test_run_names_a_bad_key_in_one_line(tmp_path: Path) -> None:
    missing = cli(*_run_args(tmp_path, "--jwt-public-key", str(tmp_path / "nope.pem")), cwd=tmp_path)
    assert missing.returncode == 2 and str(tmp_path / "nope.pem") in missing.stderr
    assert "does not exist" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1

    (tmp_path / "junk.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    junk = cli(*_run_args(tmp_path, "--jwt-public-key", str(tmp_path / "junk.pem")), cwd=tmp_path)
    assert junk.returncode == 2 and "not a readable PEM public key" in junk.stderr
    assert len(junk.stderr.strip().splitlines()) == 1

    both = cli(
        *_run_args(tmp_path, "--jwks-url", "https://idp.test/jwks"), cwd=tmp_path, SIDEMETER_JWT_SECRET=SECRET
    )
    assert both.returncode == 2 and "jwt_secret and jwks_url" in both.stderr
    assert SECRET not in both.stderr


def _wait_ready(proc: subprocess.Popen[str]) -> tuple[int, int]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("sidemeter ready"):
            parts = line.replace(",", "").split()
            return int(parts[3].lstrip(":")), int(parts[5].lstrip(":"))
    raise AssertionError(f"sidecar exited before ready: {proc.wait()}")


async def test_run_with_a_secret_verifies_and_keeps_tokens_out_of_logs(tmp_path: Path) -> None:
    sim = SimulatedLLM("ollama")
    await sim.start()
    proc = subprocess.Popen(
        [*CLI, *_run_args(tmp_path, "--log-level", "debug", upstream=sim.url)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_env(SIDEMETER_JWT_SECRET=SECRET),
    )
    try:
        proxy_port, ops_port = await asyncio.to_thread(_wait_ready, proc)
        good = await asyncio.to_thread(issue, tmp_path, "--sub", "dave", SIDEMETER_JWT_SECRET=SECRET)
        forged = jwt.encode(
            {"sub": "dave", "exp": int(time.time()) + 60}, "not-the-secret-" + "z" * 32, "HS256"
        )
        body = {"model": "llama3.2", "prompt": "hello", "stream": False}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy_port}") as http:
            assert (await http.post("/api/generate", json=body)).status_code == 401
            bad = await http.post("/api/generate", json=body, headers={"Authorization": f"Bearer {forged}"})
            assert bad.status_code == 401 and "signature" in bad.json()["error"]
            ok = await http.post("/api/generate", json=body, headers={"Authorization": f"Bearer {good}"})
            assert ok.status_code == 200, ok.text
            metrics = (await http.get(f"http://127.0.0.1:{ops_port}/metrics")).text
        assert 'sidemeter_auth_failures_total{reason="missing"} 1.0' in metrics
        assert 'sidemeter_auth_failures_total{reason="bad_signature"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        await sim.stop()
    logs = (proc.stdout.read() if proc.stdout else "") + (proc.stderr.read() if proc.stderr else "")
    for secret in (SECRET, good, forged, good.split(".")[2], forged.split(".")[2]):
        assert secret not in logs
    export = cli("usage", "export", "--db", f"sqlite:///{tmp_path}/u.db", cwd=tmp_path)
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    assert [(r["user"], r["outcome"], r["error"]) for r in rows] == [
        (None, "rejected", "missing"),
        (None, "rejected", "bad_signature"),
        ("dave", "ok", None),
    ]
    assert good not in export.stdout and forged not in export.stdout


def test_run_with_auth_off_says_so_loudly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, *_run_args(tmp_path, "--auth", "off")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_env(),
    )
    try:
        _wait_ready(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "WARNING" in stderr and "AUTHENTICATION IS OFF" in stderr
