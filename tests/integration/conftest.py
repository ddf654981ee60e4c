"""Fixtures of the tests that run `sidemeter run` as a subprocess."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.process import SidemeterProcess


@pytest.fixture
def processes() -> Iterator[list[SidemeterProcess]]:
    started: list[SidemeterProcess] = []
    yield started
    for p in started:
        p.stop()
