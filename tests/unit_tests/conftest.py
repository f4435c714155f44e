"""Unit tests run without the network, as LangChain's partner packages run theirs
(`pytest --disable-socket --allow-unix-socket`): any TCP or UDP socket a unit test (or one of
its fixtures) opens fails with pytest-socket's `SocketBlockedError`. Unix sockets stay allowed
(the event loop's self-pipe). Tests that need a server (Redis, the local Groq server) belong
in `tests/integration_tests` or `tests/reliability`, which keep loopback TCP.

Applied here rather than in `addopts`, so it covers this directory only; a test that truly
needs a socket says so with `@pytest.mark.enable_socket`.
"""

from __future__ import annotations

import pytest
from pytest_socket import disable_socket


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A conftest's item hooks apply to the items under its directory only. First, so the
    # test's fixtures run without sockets too; pytest-socket's teardown lifts it after.
    if item.get_closest_marker("enable_socket") is None:
        disable_socket(allow_unix_socket=True)
