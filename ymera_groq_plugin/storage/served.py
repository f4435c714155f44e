"""Where the account's model listings and 404 marks live: a JSON file, and Redis for a fleet.

The file (`<data_dir>/served-<namespace>.json`) lets a restarted process route on the last
listing before it has asked Groq again. With Redis, one process lists for the whole fleet: the
listing is one JSON string with a TTL, the marks one hash (`organisation|model` → when), and a
revision counter that the others poll (one `GET` a second) to learn of changes.

The keys are `ymera:<namespace>:served:{<namespace>}:listing|marks|rev|lock`: one hash tag per
namespace, because publishing a listing (one script) and a mark (one `MULTI`) each change two or
three of them atomically, which a Redis Cluster refuses across slots. (Keys without the tag, as
written before, are ignored: the listing is a cache of Groq's, refetched.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import KEY_PREFIX, astorage_errors, dumps, loads

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["FileServedStore", "OrgListing", "RedisServedStore", "ServedState"]

logger = logging.getLogger(__name__)

_SEP = "|"
# KEYS: listing, marks, rev. ARGV: the listing, its TTL, then (field, listed at) per superseded
# mark. A mark is deleted only if still older than the listing: another process may have marked
# the pair again since this one read it.
_SAVE_LISTING = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for i = 3, #ARGV, 2 do
  local at = tonumber(redis.call('HGET', KEYS[2], ARGV[i]))
  if at and at < tonumber(ARGV[i + 1]) then redis.call('HDEL', KEYS[2], ARGV[i]) end
end
return redis.call('INCR', KEYS[3])
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class OrgListing:
    """One organisation's `GET /openai/v1/models` answer, reduced to what routing needs."""

    fetched_at: float
    """Wall-clock seconds of the listing."""
    models: dict[str, dict[str, Any]]
    """Model id → `{"active", "context_window", "max_completion_tokens"}`."""


@dataclass(slots=True)
class ServedState:
    """Every organisation's listing and the (organisation, model) pairs that answered 404."""

    orgs: dict[str, OrgListing] = field(default_factory=dict)
    marks: dict[tuple[str, str], float] = field(default_factory=dict)
    """(organisation, model) → when it answered 404 or `model_decommissioned`."""

    def as_json(self) -> dict[str, Any]:
        return {
            "orgs": {
                org: {"fetched_at": lst.fetched_at, "models": lst.models}
                for org, lst in self.orgs.items()
            },
            "marks": {f"{org}{_SEP}{model}": at for (org, model), at in self.marks.items()},
        }

    @classmethod
    def from_json(cls, doc: Any) -> ServedState:
        """Parse `as_json`'s shape; anything malformed is dropped, not raised."""
        state = cls()
        if not isinstance(doc, dict):
            return state
        orgs = doc.get("orgs")
        if isinstance(orgs, dict):
            for org, raw in orgs.items():
                if not isinstance(raw, dict):
                    continue
                at = raw.get("fetched_at")
                models = raw.get("models")
                if isinstance(at, int | float) and isinstance(models, dict):
                    state.orgs[str(org)] = OrgListing(
                        float(at),
                        {str(k): dict(v) for k, v in models.items() if isinstance(v, dict)},
                    )
        marks = doc.get("marks")
        if isinstance(marks, dict):
            state.marks.update(_marks_from(marks.items()))
        return state

    def prune(self) -> list[tuple[str, str]]:
        """Forget marks that a later listing of their organisation supersedes.

        Returns:
            The pairs forgotten (for the shared store to delete them too).
        """
        kept: dict[tuple[str, str], float] = {}
        gone: list[tuple[str, str]] = []
        for (org, model), at in self.marks.items():
            if org not in self.orgs or at >= self.orgs[org].fetched_at:
                kept[(org, model)] = at
            else:
                gone.append((org, model))
        self.marks = kept
        return gone


def _marks_from(items: Any) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for k, v in items:
        name = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
        org, sep, model = name.partition(_SEP)
        try:
            at = float(v)
        except (TypeError, ValueError):
            continue
        if sep and org and model:
            out[(org, model)] = at
    return out


class FileServedStore:
    """The last known state in one JSON file (written atomically; unreadable means empty).

    Args:
        path: The file; its directory is created on the first write.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"<FileServedStore {self.path}>"

    def load(self) -> ServedState | None:
        """The stored state, or `None` when there is none (or it is unreadable)."""
        try:
            text = self.path.read_text("utf-8")
        except OSError:
            return None
        try:
            return ServedState.from_json(json.loads(text))
        except ValueError:
            logger.warning("ignoring unreadable served-model file %s", self.path)
            return None

    def save(self, state: ServedState) -> None:
        """Write the state (replaces the file in one rename; errors are logged, not raised)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".served-", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(dumps(state.as_json()))
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.warning("served-model file %s not written: %s", self.path, exc)
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)

    async def asave(self, state: ServedState) -> None:
        """`save` off the event loop."""
        snapshot = ServedState(dict(state.orgs), dict(state.marks))
        await asyncio.to_thread(self.save, snapshot)


class RedisServedStore:
    """The fleet's listing and 404 marks in Redis.

    Args:
        client: A `redis.asyncio.Redis`.
        namespace: Separates tenants sharing one Redis.
        ttl: Seconds the listing and the marks are kept without a refresh.
        owns_client: Close the client in `aclose`.
    """

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str = "default",
        ttl: float = 86400.0,
        owns_client: bool = True,
    ) -> None:
        self._client = client
        tag = namespace.replace("{", "(").replace("}", ")")  # a brace would end the tag early
        prefix = f"{KEY_PREFIX}{namespace}:served:{{{tag}}}:"
        self._listing = prefix + "listing"
        self._marks = prefix + "marks"
        self._rev = prefix + "rev"
        self._lock = prefix + "lock"
        self._ttl = max(1, int(ttl))
        self._owns = owns_client
        self._token = secrets.token_hex(8)

    @classmethod
    def from_url(
        cls, url: str, *, namespace: str = "default", ttl: float = 86400.0
    ) -> RedisServedStore:
        """Build from a Redis URL: one server (`redis://`, `rediss://`, `unix://`),
        `redis+cluster://` or `redis+sentinel://` (`storage.redis_url`)."""
        from .redis_quota import fast_failing_client

        return cls(fast_failing_client(url), namespace=namespace, ttl=ttl)

    def __repr__(self) -> str:
        return f"<RedisServedStore {self._listing}>"

    async def revision(self) -> int:
        """A counter bumped by every change (cheap to poll)."""
        async with astorage_errors("redis", "served revision"):
            raw = await self._client.get(self._rev)
        try:
            return int(raw) if raw is not None else 0
        except ValueError:
            return 0

    async def load(self) -> tuple[ServedState | None, int]:
        """The fleet's state (`None` when no process has listed yet) and its revision."""
        async with (
            astorage_errors("redis", "served load"),
            self._client.pipeline(transaction=False) as pipe,
        ):
            pipe.get(self._listing)
            pipe.hgetall(self._marks)
            pipe.get(self._rev)
            listing, marks, rev = await pipe.execute(raise_on_error=False)
        state: ServedState | None = None
        if isinstance(listing, bytes):
            try:
                state = ServedState.from_json(loads(listing))
            except ValueError:
                state = None
        if isinstance(marks, dict) and marks:
            state = state or ServedState()
            state.marks.update(_marks_from(marks.items()))
            state.prune()
        try:
            revision = int(rev) if isinstance(rev, bytes) else 0
        except ValueError:
            revision = 0
        return state, revision

    async def save_listing(
        self, state: ServedState, superseded: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Publish the listings and delete the marks they supersede.

        Args:
            state: The listings to publish (its marks are not written).
            superseded: Marks its listings supersede that `state` no longer holds (what
                `state.prune()` returned); those it still holds are found here.
        """
        doc = {"orgs": state.as_json()["orgs"]}
        pairs = set(superseded)
        pairs.update(
            pair
            for pair, at in state.marks.items()
            if pair[0] in state.orgs and at < state.orgs[pair[0]].fetched_at
        )
        args: list[str] = [dumps(doc), str(self._ttl)]
        for org, model in sorted(pairs):
            if org in state.orgs:
                args += [f"{org}{_SEP}{model}", repr(state.orgs[org].fetched_at)]
        async with astorage_errors("redis", "served save"):
            await self._client.eval(_SAVE_LISTING, 3, self._listing, self._marks, self._rev, *args)

    async def mark(self, org: str, model: str, at: float) -> None:
        """Record that `model` answered 404 (or `model_decommissioned`) on `org`."""
        async with (
            astorage_errors("redis", "served mark"),
            self._client.pipeline(transaction=True) as pipe,
        ):
            pipe.hset(self._marks, f"{org}{_SEP}{model}", repr(at))
            pipe.expire(self._marks, self._ttl)
            pipe.incr(self._rev)
            await pipe.execute()

    async def try_lock(self, seconds: float) -> bool:
        """Become the one process that lists, for at most `seconds`."""
        async with astorage_errors("redis", "served lock"):
            got = await self._client.set(
                self._lock, self._token, nx=True, px=max(1, int(seconds * 1000))
            )
        return bool(got)

    async def unlock(self) -> None:
        """Give the listing lock back (only if still ours)."""
        async with astorage_errors("redis", "served unlock"):
            await self._client.eval(_UNLOCK, 1, self._lock, self._token)

    async def aclose(self) -> None:
        if self._owns:
            with contextlib.suppress(Exception):
                await self._client.aclose()
