"""Redis stores for quota and key health: one truth for every process on every host.

A reservation across all four limits of one (organisation, model) is one `EVALSHA` of
`lua/quota_reserve.lua`: the script drains the buckets to the caller's `now`, checks all four
and takes all four or nothing. Settling, releasing and folding in Groq's headers is one call of
`lua/quota_settle.lua`. The keys one operation touches share a hash tag, `{org|model}`:

```
ymera:<namespace>:quota:{<org>|<model>}:b   hash: levels, pending, cooldown, learned limits
ymera:<namespace>:quota:{<org>|<model>}:r   hash: reservation id -> "requests tokens"
ymera:<namespace>:quota:{<org>|<model>}:x   zset: reservation id -> expiry
ymera:<namespace>:quota:workers             zset: worker id -> last heartbeat (for the
                                            share each takes while Redis is unreachable)
ymera:<namespace>:key:<label>               hash: one key's health record (never the secret)
ymera:<namespace>:orgs                      hash: merged organisation -> organisation
```

On a Redis Cluster each (organisation, model) is its own slot, so the fleet's quota traffic
spreads over the primaries (see `docs/design-notes.md`, "Redis Cluster and Sentinel").

Bucket state expires two days after its last use (a day window plus margin); reservations expire
on their own (`ttl`), so a crashed process's reservations come back. A key of the wrong type
under the prefix (something else wrote it) is dropped by the script that meets it, and a
malformed field reads as zero: one foreign entry never fails every call for its pair.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .base import KEY_PREFIX, astorage_errors, lua_script, redis_client
from .quota_base import (
    KEY_FIELDS,
    KeyStates,
    Limits,
    Observation,
    QuotaState,
    Report,
    key_record_from,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["Heartbeat", "RedisKeyStateStore", "RedisQuotaStore", "fast_failing_client"]

logger = logging.getLogger(__name__)

STATE_TTL_MS = 2 * 86400 * 1000
"""Idle bucket state (and learned limits) is kept this long: a day window plus margin."""
KEY_RECORD_TTL_MS = 7 * 86400 * 1000
"""Key records (disabled, merges) are kept this long after their last change."""


class Heartbeat(NamedTuple):
    """What a worker's heartbeat found (`RedisQuotaStore.heartbeat`)."""

    workers: int
    """Live workers, this one included."""
    joined: float
    """When this worker joined the live set (the score of its first heartbeat since it was
    last absent; scores only grow, so they order heartbeats whatever the clocks say)."""
    unaware: int
    """Other live workers whose last heartbeat came before this worker joined: they do not
    count it yet."""


def _wrong_type(reply: object) -> bool:
    """Whether a reply is Redis's WRONGTYPE error (a key something else wrote)."""
    return isinstance(reply, Exception) and "WRONGTYPE" in str(reply)


def fast_failing_client(url: str, **kwargs: Any) -> Redis:
    """`redis_client`, retrying a failed command once, at once, instead of redis-py's default
    of ten retries with backoff (seconds of stall per call during an outage). One retry is
    enough to replace a pooled connection that a Redis restart closed."""
    if "retry" not in kwargs:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs["retry"] = Retry(NoBackoff(), 1)
    return redis_client(url, **kwargs)


def _tag(text: str) -> str:
    # Braces would end the hash tag early; `|` separates organisation from model.
    return text.replace("{", "(").replace("}", ")").replace("|", "/")


def _num(value: float | int | None) -> str:
    """One number for the scripts' packed argument: exact (`repr` round-trips a float)."""
    if value is None:
        return "-"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _pack(*values: float | int | None) -> str:
    return " ".join([_num(v) for v in values])


def _opt_int(text: str) -> int | None:
    return None if text == "-" else int(float(text))


def _opt_float(text: str) -> float | None:
    return None if text == "-" else float(text)


def _reply(raw: bytes | str) -> list[str]:
    """Split the scripts' reply: one space-separated string, `-` for "none"."""
    return (raw.decode() if isinstance(raw, bytes) else raw).split(" ")


def _state(reply: list[str]) -> QuotaState:
    """Decode the scripts' reply: head1, head2, l1..l4, pr, pt, cool, t, lim1..4, learned1..4,
    rr, rt, ra, n."""
    f = [float(x) for x in reply[2:10]]
    lim = [_opt_int(x) for x in reply[10:14]]
    learned = [_opt_int(x) for x in reply[14:18]]
    return QuotaState(
        levels=(f[0], f[1], f[2], f[3]),
        pending_requests=f[4],
        pending_tokens=f[5],
        limits=(lim[0], lim[1], lim[2], lim[3]),
        learned=(learned[0], learned[1], learned[2], learned[3]),
        cool_until=f[6],
        updated=f[7],
        remaining_requests=_opt_int(reply[18]),
        remaining_tokens=_opt_int(reply[19]),
        reported_at=_opt_float(reply[20]),
        outstanding=int(reply[21]),
    )


class RedisQuotaStore:
    """Buckets in Redis, shared by every process using the same URL and namespace.

    Args:
        client: A `redis.asyncio.Redis` (bound to the event loop that first uses it).
        namespace: Separates tenants sharing one Redis.
        owns_client: Close the client in `aclose`.
    """

    shared = True

    def __init__(self, client: Redis, *, namespace: str = "default", owns_client: bool = True):
        self._client = client
        self._prefix = f"{KEY_PREFIX}{namespace}:quota:"
        self._owns = owns_client
        self._reserve: AsyncScript = client.register_script(
            lua_script("quota_common.lua", "quota_reserve.lua")
        )
        self._settle: AsyncScript = client.register_script(
            lua_script("quota_common.lua", "quota_settle.lua")
        )
        self._heartbeat: AsyncScript = client.register_script(lua_script("quota_heartbeat.lua"))
        self._workers = f"{self._prefix}workers"

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "default", **kwargs: Any) -> RedisQuotaStore:
        """Build from a Redis URL: one server, `redis+cluster://` or `redis+sentinel://`."""
        return cls(fast_failing_client(url, **kwargs), namespace=namespace)

    async def heartbeat(
        self, worker: str, *, now: float, window: float, joined: float | None = None
    ) -> Heartbeat:
        """Note that `worker` is alive: how many workers were seen within `window` seconds
        (this one included), and how many of them may not count it yet. One round trip.

        Args:
            worker: This worker's id.
            now: Its clock.
            window: A heartbeat counts this long.
            joined: When this worker joined, as the last heartbeat answered; `None` before.
        """
        async with astorage_errors("redis", "quota heartbeat"):
            n, since, unaware = await self._heartbeat(
                keys=[self._workers],
                args=[
                    worker,
                    repr(float(now)),
                    repr(float(window)),
                    STATE_TTL_MS,
                    "" if joined is None else repr(float(joined)),
                ],
            )
        return Heartbeat(max(1, int(n)), float(since), int(unaware))

    def _keys(self, org: str, model: str) -> list[str]:
        base = f"{self._prefix}{{{_tag(org)}|{_tag(model)}}}:"
        return [base + "b", base + "r", base + "x"]

    async def reserve(
        self,
        org: str,
        model: str,
        *,
        reservation_id: str,
        requests: int,
        tokens: int,
        defaults: Limits,
        now: float,
        ttl: float,
    ) -> tuple[float, QuotaState]:
        """Take `requests` and `tokens` from all four buckets, or nothing (one round trip)."""
        async with astorage_errors("redis", "quota reserve"):
            reply = await self._reserve(
                keys=self._keys(org, model),
                args=[
                    reservation_id,
                    _pack(float(now), requests, tokens, float(ttl), STATE_TTL_MS, *defaults, 0),
                ],
            )
        parts = _reply(reply)
        wait = 0.0 if parts[0] == "1" else float(parts[1])
        return wait, _state(parts)

    async def settle(
        self,
        org: str,
        model: str,
        *,
        reservation_id: str | None,
        requests: float,
        tokens: float,
        defaults: Limits,
        now: float,
        observation: Observation | None = None,
    ) -> tuple[bool, QuotaState]:
        """Swap a reservation for what was used and fold in what Groq said (one round trip)."""
        obs = observation or Observation()
        report = obs.remaining_requests is not None or obs.remaining_tokens is not None
        packed = _pack(
            float(now),
            requests,
            tokens,
            STATE_TTL_MS,
            *defaults,
            *obs.limits,
            *obs.floors,
            obs.remaining_requests,
            obs.remaining_tokens,
            1 if report else 0,
            obs.cool_until,
            *obs.charges,
        )
        async with astorage_errors("redis", "quota settle"):
            reply = await self._settle(
                keys=self._keys(org, model), args=[reservation_id or "", packed]
            )
        parts = _reply(reply)
        return parts[0] == "1", _state(parts)

    def _peek_args(self, defaults: Limits, now: float) -> list[str]:
        return ["", _pack(float(now), 0, 0, 0.0, STATE_TTL_MS, *defaults, 1)]

    async def get(self, org: str, model: str, *, defaults: Limits, now: float) -> QuotaState:
        """The buckets of (org, model) at `now` (drained, expired reservations given back)."""
        async with astorage_errors("redis", "quota get"):
            reply = await self._reserve(
                keys=self._keys(org, model), args=self._peek_args(defaults, now)
            )
        return _state(_reply(reply))

    async def get_many(
        self, items: Sequence[tuple[str, str, Limits]], *, now: float
    ) -> list[QuotaState]:
        """`get` for several pairs in one pipelined round trip."""
        if not items:
            return []
        from redis.exceptions import NoScriptError

        async with astorage_errors("redis", "quota get"):
            for attempt in (1, 2):
                try:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for org, model, defaults in items:
                            await self._reserve(
                                keys=self._keys(org, model),
                                args=self._peek_args(defaults, now),
                                client=pipe,
                            )
                        replies = await pipe.execute()
                    break
                except NoScriptError:
                    # A cluster pipeline sends EVALSHA as is (a plain one loads its scripts
                    # first): a node that never ran the script, or a replica promoted since,
                    # does not know it. SCRIPT LOAD goes to every primary of a cluster.
                    if attempt == 2:
                        raise
                    await self._client.script_load(self._reserve.script)
        return [_state(_reply(r)) for r in replies]

    async def clear(self) -> None:
        """Delete every quota key of this namespace."""
        async with astorage_errors("redis", "quota clear"):
            batch: list[Any] = []
            async for key in self._client.scan_iter(match=f"{self._prefix}*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    await self._client.delete(*batch)
                    batch = []
            if batch:
                await self._client.delete(*batch)

    async def check(self) -> bool:
        try:
            async with astorage_errors("redis", "ping"):
                return bool(await self._client.ping())
        except Exception:
            return False

    async def aclose(self) -> None:
        if self._owns:
            await self._client.aclose()

    def __repr__(self) -> str:
        return f"<RedisQuotaStore {self._prefix}*>"


class RedisKeyStateStore:
    """Key health and organisation merges in Redis, shared by every process.

    Args:
        client: A `redis.asyncio.Redis`.
        namespace: Separates tenants sharing one Redis.
        owns_client: Close the client in `aclose`.
    """

    shared = True

    def __init__(self, client: Redis, *, namespace: str = "default", owns_client: bool = True):
        self._client = client
        self._prefix = f"{KEY_PREFIX}{namespace}:"
        self._aliases = f"{self._prefix}orgs"
        self._owns = owns_client
        self._failure: AsyncScript = client.register_script(lua_script("keys_failure.lua"))

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "default", **kwargs: Any) -> RedisKeyStateStore:
        """Build from a Redis URL: one server, `redis+cluster://` or `redis+sentinel://`."""
        return cls(fast_failing_client(url, **kwargs), namespace=namespace)

    def _key(self, label: str) -> str:
        return f"{self._prefix}key:{label}"

    async def load(self, labels: Sequence[str]) -> KeyStates:
        keys = [self._key(label) for label in labels] + [self._aliases]
        async with (
            astorage_errors("redis", "key state load"),
            self._client.pipeline(transaction=False) as pipe,
        ):
            for key in keys:
                pipe.hgetall(key)
            replies = await pipe.execute(raise_on_error=False)
            foreign = [k for k, r in zip(keys, replies, strict=True) if _wrong_type(r)]
            if foreign:
                # Not hashes, so not written by this package: dropped, read as "nothing known".
                logger.warning("Dropping %d foreign key-state entries in Redis", len(foreign))
                await self._client.delete(*foreign)
            for r in replies:
                if isinstance(r, Exception) and not _wrong_type(r):
                    raise r
        records = {}
        for label, raw in zip(labels, replies[:-1], strict=True):
            if raw and not isinstance(raw, Exception):
                records[label] = key_record_from(
                    {k.decode("utf-8", "replace"): v for k, v in raw.items()}
                )
        aliases: dict[str, str] = {}
        if not isinstance(replies[-1], Exception):
            aliases = {
                k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                for k, v in replies[-1].items()
            }
        return KeyStates(records, aliases)

    async def update(self, label: str, changes: Mapping[str, str | int | float | None]) -> None:
        unknown = set(changes) - KEY_FIELDS
        if unknown:
            raise ValueError(f"unknown key record fields: {sorted(unknown)}")
        sets = {
            k: _num(v) if not isinstance(v, str) else v for k, v in changes.items() if v is not None
        }
        dels = [k for k, v in changes.items() if v is None]
        key = self._key(label)
        async with astorage_errors("redis", "key state update"):
            for attempt in (1, 2):
                try:
                    async with self._client.pipeline(transaction=True) as pipe:
                        if sets:
                            pipe.hset(key, mapping=sets)  # type: ignore[arg-type]
                        if dels:
                            pipe.hdel(key, *dels)
                        pipe.pexpire(key, KEY_RECORD_TTL_MS)
                        await pipe.execute()
                    return
                except Exception as exc:
                    if attempt == 2 or not _wrong_type(exc):
                        raise
                    await self._client.delete(key)

    async def record_failure(self, label: str, *, now: float, window: float) -> int:
        async with astorage_errors("redis", "key state failure"):
            n = await self._failure(
                keys=[self._key(label)],
                args=[repr(float(now)), repr(float(window)), str(KEY_RECORD_TTL_MS)],
            )
        return int(n)

    async def set_alias(self, org: str, canonical: str) -> bool:
        if org == canonical:
            return False
        async with astorage_errors("redis", "key state alias"):
            try:
                # HSET answers how many fields it added: 1 only for the first process.
                added = await self._client.hset(self._aliases, org, canonical)
            except Exception as exc:
                if not _wrong_type(exc):
                    raise
                await self._client.delete(self._aliases)
                added = await self._client.hset(self._aliases, org, canonical)
        return bool(added)

    def _reports_key(self, model: str, org: str) -> str:
        return f"{self._prefix}reports:{{{org}:{model}}}"

    async def report(
        self,
        model: str,
        org: str,
        report: Report,
        *,
        orgs: Sequence[str],
        window: float,
        keep: int,
    ) -> dict[str, list[Report]]:
        own = self._reports_key(model, org)
        entry = f"{report.at!r} {report.limit} {report.remaining}"
        async with (
            astorage_errors("redis", "key state report"),
            self._client.pipeline(transaction=False) as pipe,
        ):
            pipe.rpush(own, entry)
            pipe.ltrim(own, -keep, -1)
            pipe.pexpire(own, max(1, int(window * 1000)))
            for o in orgs:
                pipe.lrange(self._reports_key(model, o), -keep, -1)
            replies = await pipe.execute(raise_on_error=False)
        since = report.at - window
        out: dict[str, list[Report]] = {}
        for o, raw in zip(orgs, replies[3:], strict=True):
            if isinstance(raw, Exception) or not raw:
                continue  # a foreign or unreadable entry: nothing known about that organisation
            recent: list[Report] = []
            for item in raw:
                parts = item.decode("ascii", "replace").split()
                try:
                    r = Report(float(parts[0]), int(parts[1]), int(parts[2]))
                except (IndexError, ValueError):
                    continue
                if r.at >= since:
                    recent.append(r)
            if recent:
                out[o] = recent
        return out

    async def clear(self) -> None:
        async with astorage_errors("redis", "key state clear"):
            keys = [k async for k in self._client.scan_iter(match=f"{self._prefix}key:*")]
            keys += [k async for k in self._client.scan_iter(match=f"{self._prefix}reports:*")]
            keys.append(self._aliases)
            await self._client.delete(*keys)

    async def check(self) -> bool:
        try:
            async with astorage_errors("redis", "ping"):
                return bool(await self._client.ping())
        except Exception:
            return False

    async def aclose(self) -> None:
        if self._owns:
            await self._client.aclose()

    def __repr__(self) -> str:
        return f"<RedisKeyStateStore {self._prefix}key:*>"
