"""The learning store on Redis: one log shared by many workers on many hosts.

Keys (one namespace, one hash tag, so the Lua scripts touch a single slot):

```
ymera:<ns>:learning:{<ns>}:seq      counter: the last sequence number
ymera:<ns>:learning:{<ns>}:events   zset: score = seq,
                                    member = "seq\\tts\\tkind\\torigin\\tid\\tJSON"
ymera:<ns>:learning:{<ns>}:exec     hash: execution id -> execution JSON (without quality)
ymera:<ns>:learning:{<ns>}:quality  hash: execution id -> quality
```

Appending (counter + zset + hash) and feedback (read + update + append) are one Lua script
each (`storage/lua/learning_*.lua`), so two workers never interleave inside either. The
client (`redis.asyncio`) is bound to the event loop that first uses it: use a store from one
loop (the engine's portal does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from ..types import Execution
from .base import KEY_PREFIX, astorage_errors, dumps, loads, lua_script
from .learning_base import (
    EventKind,
    LearningEvent,
    check_execution_id,
    execution_from_dict,
    execution_to_dict,
)
from .redis_quota import fast_failing_client

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisLearningStore"]

logger = logging.getLogger(__name__)

_KINDS = frozenset({"execution", "feedback", "summary"})

_PRUNE_BATCH = 500


def _tag(namespace: str) -> str:
    # Braces inside the tag would end it early.
    return namespace.replace("{", "(").replace("}", ")")


def _num(x: float) -> str:
    # repr() of a float is valid JSON and Lua `tonumber` input, and round-trips exactly.
    return repr(float(x))


class RedisLearningStore:
    """`LearningStore` on Redis.

    Args:
        client: A `redis.asyncio.Redis` with `decode_responses=False`.
        namespace: Separates tenants sharing one server.
        owns_client: Close the client in `aclose`.
    """

    def __init__(
        self, client: Redis, *, namespace: str = "default", owns_client: bool = True
    ) -> None:
        self._client = client
        self.namespace = namespace
        self._owns = owns_client
        base = f"{KEY_PREFIX}{namespace}:learning:{{{_tag(namespace)}}}:"
        self._keys = [base + "seq", base + "events", base + "exec", base + "quality"]
        self._record: AsyncScript = client.register_script(lua_script("learning_record.lua"))
        self._feedback: AsyncScript = client.register_script(lua_script("learning_feedback.lua"))
        self._prune: AsyncScript = client.register_script(lua_script("learning_prune.lua"))

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "default", **kwargs: Any) -> RedisLearningStore:
        """Build from a Redis URL: one server, `redis+cluster://` or `redis+sentinel://` (other
        kwargs go to the client).

        A `clock` keyword is accepted and ignored (the learner passes times in explicitly).
        """
        kwargs.pop("clock", None)
        return cls(fast_failing_client(url, **kwargs), namespace=namespace)

    def __repr__(self) -> str:
        return f"<RedisLearningStore namespace={self.namespace!r}>"

    # -- LearningStore -----------------------------------------------------------------------

    async def record(self, execution: Execution, *, origin: str) -> int:
        eid = check_execution_id(execution.execution_id)
        data = execution_to_dict(execution)
        kept = {k: v for k, v in data.items() if k != "quality"}
        q = "" if execution.quality is None else _num(execution.quality)
        async with astorage_errors("redis", "learning record"):
            seq = await self._record(
                keys=self._keys,
                args=[
                    "execution",
                    _num(execution.timestamp),
                    origin,
                    eid,
                    dumps(data),
                    dumps(kept),
                    q,
                ],
            )
        return int(seq)

    async def add_summary(
        self, summary: Mapping[str, Any], *, timestamp: float, origin: str
    ) -> int:
        async with astorage_errors("redis", "learning add_summary"):
            seq = await self._record(
                keys=self._keys,
                args=["summary", _num(timestamp), origin, "", dumps(dict(summary)), "", ""],
            )
        return int(seq)

    async def feedback(
        self, execution_id: str, quality: float, *, timestamp: float, origin: str
    ) -> Execution | None:
        eid = check_execution_id(execution_id)
        async with astorage_errors("redis", "learning feedback"):
            reply = await self._feedback(
                keys=self._keys, args=[eid, _num(quality), _num(timestamp), origin]
            )
        if not reply:
            return None
        raw, prev = reply[0], reply[1]
        try:
            before = dict(loads(raw))
            before["quality"] = None if prev is None else float(prev)
            return execution_from_dict(before)
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("Feedback went to a malformed kept execution in Redis: %s", exc)
            return None

    async def get(self, execution_id: str) -> Execution | None:
        async with astorage_errors("redis", "learning get"):
            raw = await self._client.hget(self._keys[2], execution_id)
            q = await self._client.hget(self._keys[3], execution_id)
        if raw is None:
            return None
        try:
            d = dict(loads(raw))
            d["quality"] = None if q is None else float(q)
            return execution_from_dict(d)
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("Ignoring a malformed kept execution in Redis: %s", exc)
            return None

    async def events(self, after: int = 0, *, limit: int = 1000) -> list[LearningEvent]:
        """Events after `after`, in order.

        If the log's counter is below `after`, the log was reset (Redis restarted without its
        data, or the keys were deleted): the reader's position means nothing any more, so the
        whole log is returned, instead of nothing until the counter catches up.
        """
        async with astorage_errors("redis", "learning events"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self._keys[0])
                pipe.zrangebyscore(self._keys[1], f"({int(after)}", "+inf", start=0, num=int(limit))
                counter, members = await pipe.execute(raise_on_error=False)
            if isinstance(members, Exception):
                raise members
            try:
                last = int(counter) if counter is not None else 0
            except (TypeError, ValueError):
                last = after  # not a counter: the record script repairs it on the next write
            if after > 0 and last < after:
                logger.warning(
                    "The learning log restarted below position %d (Redis lost its data?); "
                    "reading it from the start",
                    after,
                )
                members = await self._client.zrangebyscore(
                    self._keys[1], "-inf", "+inf", start=0, num=int(limit)
                )
        out: list[LearningEvent] = []
        for m in members:
            try:
                text = m.decode("utf-8") if isinstance(m, bytes) else str(m)
                seq, ts, kind, origin, _eid, data = text.split("\t", 5)
                if kind not in _KINDS:
                    raise ValueError(f"unknown event kind {kind!r}")
                payload = loads(data)
                if not isinstance(payload, dict):
                    raise ValueError("the event data is not an object")
                event = LearningEvent(
                    seq=int(seq),
                    kind=cast(EventKind, kind),
                    timestamp=float(ts),
                    origin=origin,
                    data=payload,
                )
            except ValueError as exc:
                # Written by something else (or another version): skip it, keep learning.
                logger.warning("Skipping a malformed learning event in Redis: %s", exc)
                continue
            out.append(event)
        return out

    async def prune(self, before: float) -> int:
        total = 0
        keys = [self._keys[1], self._keys[2], self._keys[3]]
        async with astorage_errors("redis", "learning prune"):
            while True:
                n = int(await self._prune(keys=keys, args=[_num(before), _PRUNE_BATCH]))
                total += n
                if n < _PRUNE_BATCH:
                    return total

    async def check(self) -> bool:
        try:
            async with astorage_errors("redis", "ping"):
                return bool(await self._client.ping())
        except Exception:
            return False

    async def aclose(self) -> None:
        if self._owns:
            async with astorage_errors("redis", "close"):
                await self._client.aclose()
