"""Fixtures of the service tests: the session's real server (``serving.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

_SERVERS: list = []  # the session's real server, once started


@pytest.fixture(scope="session")
def server(tiny_bundle: Path, tmp_path_factory) -> Iterator:
    """The real server of ``serving.py``, one for the whole session. It runs only while tests
    that use it run (see the two hooks below): an idle Ray cluster left up would slow every later
    test on two cores."""
    from tests.service import serving

    pytest.importorskip("ray.serve")
    folder = tmp_path_factory.mktemp("serve")
    running = serving.Server(tiny_bundle, folder / "snapshots", folder / "server.log")
    running.start()
    _SERVERS.append(running)
    try:
        yield running
    finally:
        running.stop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Start the session's server again for a test that needs it after it was stopped."""
    if "server" in getattr(item, "fixturenames", ()):
        for running in _SERVERS:
            if running.process is None:
                running.start()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the session's server when the next test does not need it."""
    if nextitem is None or "server" not in getattr(nextitem, "fixturenames", ()):
        for running in _SERVERS:
            running.stop()
