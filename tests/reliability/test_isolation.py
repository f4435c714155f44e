"""Tenants stay apart, and nothing read from a store is ever executed.

- Two engines with different namespaces share one Redis and one data directory: neither ever
  gets the other's answer (L1, L2 or L3), each keeps its own keys, and clearing one leaves the
  other whole.
- Pickle payloads that would create a file when unpickled are planted where the package reads
  (the L2 and L3 entries of a request, LangChain cache entries, learning records, quota
  fields): every one is treated as corrupt, dropped and answered afresh, and the file never
  appears. LangChain entries that name a secret or an arbitrary class are refused the same way.
- No module of the package can unpickle or evaluate anything.
"""

from __future__ import annotations

import ast
import asyncio
import json
import pickle
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

import ymera_groq_plugin
from ymera_groq_plugin.cache import TieredCache
from ymera_groq_plugin.cache.keys import langchain_key
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.testing.server import GroqTestServer

from .conftest import (
    KEYS,
    MODEL,
    background_done,
    closing,
    make_engine,
    on_portal,
    redis_dump,
    request,
)

pytestmark = pytest.mark.redis


def _cache(engine: Engine) -> TieredCache:
    assert isinstance(engine.cache, TieredCache)
    return engine.cache


async def test_namespaces_keep_tenants_apart(redis_url: str, tmp_path: Path) -> None:
    with GroqTestServer(KEYS) as server:
        a = make_engine(server.base_url, tmp_path, clock=time.time, redis_url=redis_url,
                        namespace="tenant-a")
        b = make_engine(server.base_url, tmp_path, clock=time.time, redis_url=redis_url,
                        namespace="tenant-b")
        async with closing(a, b):
            question = "What is our internal escalation policy?"
            first_a = await a.ainvoke(request(question, "a-1"))
            await background_done(a)
            assert (await a.ainvoke(request(question, "a-2"))).cache_tier == "l1"
            # The same request from the other tenant goes upstream: no tier answers it.
            calls = server.stats().by_status.get(200, 0)
            first_b = await b.ainvoke(request(question, "b-1"))
            assert first_b.cache_tier is None
            assert server.stats().by_status.get(200, 0) == calls + 1
            await background_done(b)
            # A new process of tenant B (empty L1) finds B's answer in L2, never A's.
            b2 = make_engine(server.base_url, tmp_path, clock=time.time, redis_url=redis_url,
                             namespace="tenant-b")
            async with closing(b2):
                hit = await b2.ainvoke(request(question, "b-2"))
                assert hit.cache_tier == "l2" and hit.content == first_b.content
            # One engine asked for another namespace per request gets a miss there too.
            other = await a.ainvoke(replace(request(question, "a-3"), namespace="tenant-c"))
            assert other.cache_tier is None
            await background_done(a)  # write-behind: L2 and L3 follow in a batch
            # Every Redis key lives under its tenant's prefix, and SQLite rows carry theirs.
            keys = redis_dump(redis_url, "ymera:*")
            prefixes = {k.split(b":")[1] for k in keys}
            assert prefixes <= {b"tenant-a", b"tenant-b", b"tenant-c"}
            assert any(b":cache:" in k for k in keys if k.startswith(b"ymera:tenant-a:"))
            assert any(b":quota:" in k for k in keys if k.startswith(b"ymera:tenant-b:"))
            conn = sqlite3.connect(tmp_path / "cache.db")
            try:
                spaces = {r[0] for r in conn.execute("SELECT DISTINCT namespace FROM ymera_cache")}
            finally:
                conn.close()
            assert spaces == {"tenant-a", "tenant-b", "tenant-c"}
            # Clearing tenant A leaves tenant B whole.
            await _cache(a).aclear()
            assert (await b.ainvoke(request(question, "b-3"))).cache_tier is not None
            again_a = await a.ainvoke(request(question, "a-4"))
            assert again_a.cache_tier is None and first_a.content


class _Boom:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


async def test_pickles_and_foreign_objects_are_never_revived(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_Boom(marker), protocol=pickle.HIGHEST_PROTOCOL)
    monkeypatch.setenv("GROQ_API_KEY", "gsk_ENVSECRETthatmustnotappear01")
    ns = "default"
    tag = "{" + ns + "}"
    with GroqTestServer(KEYS) as server:
        engine = make_engine(server.base_url, tmp_path, clock=time.time, redis_url=redis_url)
        async with closing(engine):
            cache = _cache(engine)
            chat = [request(f"poisoned chat {i}", f"p-{i}") for i in range(2)]
            k0, k1 = (cache.key_for(r) for r in chat)
            lc_prompt, lc_llm = "poisoned prompt", "poisoned llm string"
            lk = langchain_key(lc_prompt, lc_llm, namespace=ns)
            # LangChain envelopes that are well-formed JSON but name a secret, or a class
            # that is not a message: reviving them would read the environment or run code.
            evil = [
                {"class": "ChatGeneration", "info": None,
                 "message": {"lc": 1, "type": "secret", "id": ["GROQ_API_KEY"]}},
                {"class": "ChatGeneration", "info": None,
                 "message": {"lc": 1, "type": "constructor",
                             "id": ["langchain_core", "runnables", "RunnableLambda"],
                             "kwargs": {"func": "print"}}},
            ]
            lk2 = langchain_key(lc_prompt + " 2", lc_llm, namespace=ns)
            envelope = json.dumps({"ymera_cache": 1, "kind": "langchain", "key": lk2,
                                   "stored_at": 0, "expires_at": 4e9, "value": evil})
            client = redis.Redis.from_url(redis_url)
            try:
                for key in (k0, lk):
                    client.set(f"ymera:{ns}:cache:{tag}:e:{key}", payload)
                    client.zadd(f"ymera:{ns}:cache:{tag}:idx", {key: 4e9})
                client.set(f"ymera:{ns}:cache:{tag}:e:{lk2}", envelope)
                client.zadd(f"ymera:{ns}:cache:{tag}:idx", {lk2: 4e9})
                learning = f"ymera:{ns}:learning:{tag}"
                client.hset(f"{learning}:exec", "p-exec", payload)
                client.zadd(f"{learning}:events", {b"1\t1\texecution\tx\tp-exec\t" + payload: 1})
                client.hset(f"ymera:{ns}:quota:{{org_a|{MODEL}}}:b", mapping={"l1": payload})
            finally:
                client.close()
            # L3: the same payload as the row of the other chat request and the LangChain one.
            l3 = cache._lower[1].store
            for key in (k1, lk):
                await on_portal(engine, l3.set(ns, key, payload.decode("latin-1"), 3600))
            conn = sqlite3.connect(tmp_path / "cache.db")
            try:
                conn.execute("UPDATE ymera_cache SET value = ? WHERE key = ?", (payload, k1))
                conn.commit()
            finally:
                conn.close()

            answers = await asyncio.gather(*(engine.ainvoke(r) for r in chat))
            assert all(a.cache_tier is None and a.content for a in answers)  # misses
            assert await asyncio.to_thread(cache.lookup, lc_prompt, lc_llm) is None
            assert await cache.alookup(lc_prompt + " 2", lc_llm) is None
            await background_done(engine)
            learner = engine.learner
            assert learner is not None
            await on_portal(engine, learner.refresh())
            assert await on_portal(engine, learner.store.get("p-exec")) is None
            stats = cache.stats()
    assert not marker.exists()
    # Entries that are text but not the package's JSON count as corrupt; bytes that are not
    # even text are dropped by the store itself.
    assert stats["l2"]["corrupt"] + stats["l3"]["corrupt"] >= 2
    # The poisoned cache entries are gone; the chat ones now hold the package's own JSON.
    after = redis_dump(redis_url, f"ymera:{ns}:cache:*")
    assert f"ymera:{ns}:cache:{tag}:e:{lk}".encode() not in after
    assert f"ymera:{ns}:cache:{tag}:e:{lk2}".encode() not in after
    stored = after[f"ymera:{ns}:cache:{tag}:e:{k0}".encode()]
    assert json.loads(stored)["kind"] == "chat"
    assert "ENVSECRET" not in repr(after)


def test_no_module_can_unpickle_or_evaluate() -> None:
    root = Path(ymera_groq_plugin.__file__).parent
    banned_modules = {"pickle", "cPickle", "dill", "marshal", "shelve", "jsonpickle", "yaml"}
    banned_calls = {"eval", "exec", "compile", "__import__"}
    found: list[str] = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.split(".")[0] in banned_modules]
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] in banned_modules
            ):
                found.append(f"{path.name}: from {node.module}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in banned_calls
            ):
                found.append(f"{path.name}:{node.lineno}: {node.func.id}()")
    assert found == []
    # The Lua scripts come from the package's files, never from Redis.
    lua = root / "storage" / "lua"
    for script in lua.glob("*.lua"):
        text = script.read_text("utf-8")
        assert "loadstring" not in text and "dofile" not in text, script.name
