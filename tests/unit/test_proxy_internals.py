"""What agent/proxy/internals.py relies on still holds in the installed mitmproxy; when it does
not, the failure names the mitmproxy version and what changed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from mitmproxy import optmanager, version
from mitmproxy.proxy import mode_servers

from agent.proxy import internals
from agent.proxy.dispatch import InlineHookHandler
from tests.support.paths import ROOT


@pytest.mark.parametrize("requirement", internals.REQUIREMENTS, ids=lambda r: r.name)
def test_installed_mitmproxy_has_what_the_sidecar_relies_on(requirement: internals.Requirement) -> None:
    failure = requirement.failure()
    assert failure is None, failure


def test_a_requirement_that_no_longer_holds_names_the_version_and_the_change() -> None:
    gone = internals.Requirement(
        "gone", "`Http1Server.send` is a generator method", lambda: False, "install_error_pages"
    )
    message = gone.failure()
    assert message is not None
    assert message.startswith(f"mitmproxy {version.VERSION} changed: `Http1Server.send` is a generator")
    assert "install_error_pages relies on it" in message

    def raises() -> bool:
        return optmanager.OptManager().__dict__["_renamed"]  # type: ignore[no-any-return]

    broken = internals.Requirement("renamed", "options live in `_options`", raises, "OptionValue")
    assert "(KeyError: '_renamed')" in (broken.failure() or "")


def test_a_changed_send_method_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def send(self: object, event: object) -> None:  # a plain method, no longer a generator
        return None

    monkeypatch.setattr(internals, "_stock_send", send)
    [http1_send] = [r for r in internals.REQUIREMENTS if r.name == "http1-send"]
    assert (http1_send.failure() or "").startswith(f"mitmproxy {version.VERSION} changed: `mitmproxy.proxy")


def test_a_changed_read_headers_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def read_headers(self: Any, event: Any) -> Iterator[Any]:  # parses, but never hands the head on
        self.buf.maybe_extract_lines()
        yield from ()

    monkeypatch.setattr(internals, "_stock_read_headers", read_headers)
    [requirement] = [r for r in internals.REQUIREMENTS if r.name == "http1-read-headers"]
    assert (requirement.failure() or "").startswith(
        f"mitmproxy {version.VERSION} changed: `Http1Server.read_headers"
    )


def test_every_private_touch_is_covered_by_a_requirement() -> None:
    used_by = " ".join(r.used_by for r in internals.REQUIREMENTS)
    for name in ("OptionValue", "install_error_pages", "use_connection_handler"):
        assert name in used_by


def test_the_connection_handler_swap_is_counted_and_undone() -> None:
    stock = mode_servers.ProxyConnectionHandler
    first = internals.use_connection_handler(InlineHookHandler)
    second = internals.use_connection_handler(InlineHookHandler)
    assert mode_servers.ProxyConnectionHandler is InlineHookHandler
    first()
    first()  # releasing twice counts once
    assert mode_servers.ProxyConnectionHandler is InlineHookHandler
    second()
    assert mode_servers.ProxyConnectionHandler is stock is internals.stock_connection_handler()


# The private names of mitmproxy's the sidecar uses, as they would appear in an attribute or key.
PRIVATE = {"_options", "_default", "_http1", "_events", "_base"}


def test_no_module_outside_agent_proxy_uses_a_private_mitmproxy_name() -> None:
    import ast

    root = ROOT
    offenders = []
    for path in [*root.glob("addons/*.py"), *root.glob("agent/**/*.py"), *root.glob("ops_api/**/*.py")]:
        if "proxy" in path.relative_to(root).parts[:2]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mitmproxy"):
                names = [*(node.module or "").split("."), *(a.name for a in node.names)]
                if any(n.startswith("_") for n in names):
                    offenders.append(f"{path.relative_to(root)}: from {node.module} import ...")
            elif isinstance(node, ast.Attribute) and node.attr in PRIVATE:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.Constant) and node.value in PRIVATE:  # opts.__dict__["_options"]
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    assert not offenders, offenders
