"""An API key appears nowhere but in the HTTP `Authorization` header.

Two recognisable fake keys (one the server knows, one it answers 401 to) go through every
path: successful calls, streams, a 401, 5xx with retries, a 429 storm, a Redis outage, the
command line, the monitoring snapshot, the LangChain model, and a run without Redis (SQLite
learning and cache). Everything that could carry a key is collected and searched:

- every HTTP request and response on the wire (the key may only be the `Authorization`
  header's value), captured by a middleware around the local server;
- every log record of every logger at DEBUG (message, arguments, exception text);
- every exception a caller saw (message, repr, attributes, traceback with its causes);
- the command line's output, the snapshot, reprs of the public objects;
- every stored byte: all Redis keys and values, the SQLite cache and learning files (with
  their WAL files), while and after the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ymera_groq_plugin import cli
from ymera_groq_plugin.chat_models import ChatYmeraGroq
from ymera_groq_plugin.config import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.errors import YmeraError
from ymera_groq_plugin.testing import RedisServer
from ymera_groq_plugin.testing.server import GroqTestServer

from .conftest import MODEL, background_done, closing, on_portal, redis_dump, request

pytestmark = pytest.mark.redis

GOOD = "gsk_CANARYgoodkey7Qx93LmZpRtW41"
BAD = "gsk_CANARYbadkey5Jd82KsYvNqE06"
SECRETS = (GOOD, BAD)


def _leaks(text: str | bytes) -> list[str]:
    data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    # Any recognisable part of a key (its secret body) counts, not just the whole key.
    return [s for s in SECRETS if s in data or s[4:20] in data or s[-16:] in data]


class WireTap:
    """ASGI middleware: every request's headers and body, every response's headers and body."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.authorization: list[str] = []
        self.elsewhere: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                self.authorization.append(value.decode())
            elif _leaks(value) or _leaks(name):
                self.elsewhere.append(f"request header {name!r}")
        if _leaks(scope.get("path", "")) or _leaks(scope.get("query_string", b"")):
            self.elsewhere.append("request URL")

        async def rx() -> Any:
            message = await receive()
            if _leaks(message.get("body", b"")):
                self.elsewhere.append("request body")
            return message

        async def tx(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    if _leaks(value):
                        self.elsewhere.append(f"response header {name!r}")
            elif _leaks(message.get("body", b"")):
                self.elsewhere.append("response body")
            await send(message)

        await self.app(scope, rx, tx)


class Collected:
    """Everything searched for the keys, by where it came from."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str | bytes]] = []

    def add(self, where: str, value: Any) -> None:
        if isinstance(value, (str, bytes)):
            self.texts.append((where, value))
        else:
            self.texts.append((where, repr(value)))

    def exception(self, where: str, exc: BaseException) -> None:
        self.add(f"{where}: str", str(exc))
        self.add(f"{where}: repr", repr(exc))
        self.add(f"{where}: traceback", "".join(traceback.format_exception(exc)))
        self.add(f"{where}: attributes", {k: repr(v) for k, v in vars(exc).items()})

    def leaks(self) -> list[str]:
        return [where for where, text in self.texts if _leaks(text)]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


async def test_a_key_never_leaves_the_authorization_header(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, at DEBUG
    seen = Collected()
    redis_server = RedisServer().start()
    try:
        with GroqTestServer({GOOD: "org_a"}) as server:
            tap = WireTap(server.app)
            server.app = tap  # type: ignore[assignment]
            # The tap must sit in front of the running app: restart behind it.
            server.stop()
            server.start()
            await _every_path(server, tap, redis_server, tmp_path, seen, monkeypatch, capsys)
            stats = server.stats()
    finally:
        redis_server.close()

    # The wire: the keys travelled in the Authorization header, and nowhere else.
    assert {a.removeprefix("Bearer ") for a in tap.authorization} == {GOOD, BAD}
    assert tap.elsewhere == []
    # The paths happened.
    assert stats.by_status.get(200, 0) > 0 and stats.by_status.get(401, 0) > 0
    assert stats.by_status.get(429, 0) > 0 and stats.faults.get("5xx", 0) > 0
    # Logs at DEBUG, all loggers.
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        seen.add(f"log {record.name}", text)
    assert len(caplog.records) > 50
    assert seen.leaks() == []


async def _every_path(
    server: GroqTestServer,
    tap: WireTap,
    redis_server: RedisServer,
    tmp_path: Path,
    seen: Collected,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "redis-mode"
    settings = YmeraSettings(
        api_keys=[{"secret": BAD, "label": "bad", "org": "org_b"},
                  {"secret": GOOD, "label": "good", "org": "org_a"}],
        base_url=server.base_url,
        redis_url=redis_server.url,
        data_dir=data_dir,
        request_timeout=2,
        max_wait=0.3,
        max_retries=1,
    )
    engine = Engine(settings)
    async with closing(engine):
        # Success, and a 401 on the key the server does not know (it is disabled).
        for i in range(6):
            result = await engine.ainvoke(request(f"secret path {i}", f"ok-{i}"))
            seen.add("result", dataclasses.asdict(result))
        req = request("secret stream", "stream-1", stream=True)
        async for event in engine.astream(req):
            seen.add("stream event", repr(event))
        # 5xx on every call: retried, then one typed error.
        server.configure_faults(error_rate=1.0)
        try:
            await engine.ainvoke(request("secret 5xx", "err-5xx"))
        except YmeraError as exc:
            seen.exception("5xx", exc)
        else:
            pytest.fail("a 5xx on every call must fail")
        server.configure_faults(error_rate=0.0)
        # A 429 storm: "no room", with the storm's retry-after (on an engine of another
        # namespace, so the cooldowns the storm teaches stay there).
        stormy = Engine(settings.model_copy(update={"namespace": "stormy"}))
        async with closing(stormy):
            server.start_429_storm(30)
            try:
                await stormy.ainvoke(request("secret 429", "err-429"))
            except YmeraError as exc:
                seen.exception("429", exc)
            else:
                pytest.fail("a storm must refuse")
            server.stop_429_storm()
        # A Redis outage in the middle of requests.
        redis_server.stop()
        for i in range(3):
            outage = await engine.ainvoke(request(f"outage {i}", f"out-{i}"))
            seen.add("outage result", repr(outage))
        redis_server.start()
        assert engine.quota.ledger.store.recover  # type: ignore[attr-defined]
        await on_portal(engine, engine.quota.ledger.store.recover())  # type: ignore[attr-defined]
        assert engine.learner is not None
        await on_portal(engine, engine.learner.store.recover())  # type: ignore[attr-defined]
        await engine.afeedback("out-1", 0.8)  # recorded during the outage, flushed since
        await background_done(engine)
        # Everything that shows state.
        seen.add("snapshot", json.dumps(await engine.asnapshot(), default=repr))
        seen.add("usage", json.dumps(await on_portal(engine, engine.quota.usage()), default=repr))
        for obj in (engine, settings, engine.quota, engine.quota.pool, engine.cache,
                    engine.learner, *settings.api_keys):
            seen.add(f"repr {type(obj).__name__}", repr(obj))
            seen.add(f"str {type(obj).__name__}", str(obj))
        seen.add("settings dump", settings.model_dump_json())
        # What is stored, while the engine is still open (WAL files included).
        seen.add("redis", repr(redis_dump(redis_server.url)))
        for name, raw in _files(data_dir).items():
            seen.add(f"file {name}", raw)

    # The command line, configured from the environment like a user's shell.
    monkeypatch.setenv("GROQ_API_KEY", GOOD)
    monkeypatch.setenv("GROQ_API_KEY_2", BAD)
    monkeypatch.setenv("GROQ_BASE_URL", server.base_url)
    monkeypatch.setenv("YMERA_REDIS_URL", redis_server.url)
    monkeypatch.setenv("YMERA_DATA_DIR", str(data_dir))
    capsys.readouterr()
    for argv in (["status", "--json"], ["status"], ["keys", "--json"], ["keys"],
                 ["route", "review this code", "--json"], ["learning", "show", "--json"],
                 ["metrics"], ["models"]):
        code = await asyncio.to_thread(cli.main, argv)
        out = capsys.readouterr()
        seen.add(f"cli {argv} stdout", out.out)
        seen.add(f"cli {argv} stderr", out.err)
        assert code == 0, (argv, out)
    for shared in list(Engine._registry.values()):
        await shared.aclose()

    # The LangChain model: its repr, its serialised form and an answer.
    llm = ChatYmeraGroq(
        model=MODEL, api_key=GOOD, base_url=server.base_url, data_dir=tmp_path / "lc",
        temperature=0,
    )
    seen.add("llm repr", repr(llm))
    seen.add("llm str", str(llm))
    from langchain_core.load import dumps

    seen.add("llm dumps", dumps(llm))
    message = await llm.ainvoke("secret langchain path")
    seen.add("llm answer", message.model_dump_json())
    assert llm.engine is not None
    await llm.engine.aclose()

    # Embedded mode (no Redis): the SQLite learning store and cache, and their files.
    embedded = Engine(
        YmeraSettings(api_keys=[GOOD], base_url=server.base_url, data_dir=tmp_path / "embedded")
    )
    async with closing(embedded):
        for i in range(3):
            await embedded.ainvoke(request(f"embedded {i}", f"emb-{i}"))
        await background_done(embedded)
        await embedded.afeedback("emb-1", 0.5)
    for name, raw in _files(tmp_path / "embedded").items():
        seen.add(f"embedded file {name}", raw)
    for name, raw in _files(tmp_path / "lc").items():
        seen.add(f"langchain file {name}", raw)
    seen.add("redis after", repr(redis_dump(redis_server.url)))
    assert time.time() > 0
