"""What the account serves: per-organisation model listings and the memory of 404s.

Groq adds and retires models every few months, and what an account may call is its plan's
business (enterprise plans keep models the free plan lost). So the engine asks Groq:
`GET /openai/v1/models` once per organisation (one key each) at start, in the background, then
every `models_refresh_interval` seconds and right after a call answers 404 `model_not_found`
or `model_decommissioned`. What the listing says outranks the catalog's lifecycle dates
(`Catalog.apply_account`); the dates decide only while nothing is known.

A request never waits for a listing: it routes on what is known (the last listing, from the
data directory's file or from Redis, else the dates). The one exception is an explicit model
the catalog does not know while no listing is known yet: it waits for the first listing (it
would otherwise be refused), at most `_FIRST_LISTING_WAIT` seconds.

A 404 or `model_decommissioned` marks (organisation, model) unserved in memory, in the file
and, with Redis, for the whole fleet, until a later listing of that organisation says
otherwise; the quota manager no longer hands out that organisation's keys for that model
(`ServedModels.serves`). So such an answer comes at most once per organisation and model per
listing. With Redis one process lists for all (a lock), the others read its listing and its
marks (polling a revision counter once a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .catalog import Catalog, is_chat_model, listed_models
from .clock import Clock
from .errors import ConfigurationError, StorageError, YmeraError
from .storage.served import FileServedStore, OrgListing, RedisServedStore, ServedState

if TYPE_CHECKING:
    from .config import ApiKey, YmeraSettings

__all__ = ["NOT_SERVED_CODES", "ServedModels"]

logger = logging.getLogger(__name__)

NOT_SERVED_CODES = frozenset({"model_not_found", "model_decommissioned"})
"""Groq error codes that say an organisation is not served a model."""

_FIRST_LISTING_WAIT = 5.0
_RELIST_GAP = 5.0
"""Least seconds between two listings triggered by 404s (a listing that disagrees with the
chat endpoint must not turn into a listing per request)."""
_POLL = 1.0
"""Seconds between checks of the fleet's revision (Redis)."""
_LOCK_SECONDS = 30.0
_RETRY_FAILED = 60.0
"""Seconds before a listing that failed for every organisation is tried again."""

Lister = Callable[["ApiKey"], Awaitable[dict[str, Any]]]
Groups = Callable[[], Sequence[tuple[str, Sequence["ApiKey"]]]]


class ServedModels:
    """The account's served models per organisation, applied to a catalog.

    Args:
        catalog: The catalog to update in place (`Catalog.apply_account`).
        groups: The usable keys by organisation (`KeyPool.groups`), read at each listing.
        lister: Lists one organisation's models with one of its keys
            (`GroqTransport.alist_models`).
        file: Where the last state is kept between runs (`None`: nowhere).
        shared: The fleet's store (Redis), if any.
        clock: Wall-clock seconds (listings and marks are compared across processes).
        refresh_interval: Seconds between listings; 0: never list (404 memory still works).
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        groups: Groups,
        lister: Lister,
        file: FileServedStore | None = None,
        shared: RedisServedStore | None = None,
        clock: Clock = time.time,
        refresh_interval: float = 3600.0,
    ) -> None:
        if refresh_interval < 0:
            raise ConfigurationError(
                "models_refresh_interval must not be negative", setting="models_refresh_interval"
            )
        self.catalog = catalog
        # A key adopted from a LiteLLM deployment at another base (`AdoptedKey.api_base`) must
        # not be sent to the engine's own base: its organisation's models come from the
        # router's deployments instead. Filtered here, not per listing, so `due()` settles.
        self._groups: Groups = lambda: [
            (org, listable)
            for org, keys in groups()
            if (listable := [k for k in keys if getattr(k, "api_base", None) is None])
        ]
        self._lister = lister
        self._file = file
        self._shared = shared
        self._clock = clock
        self.refresh_interval = float(refresh_interval)
        self.state = ServedState()
        self._revision = -1
        self._kicked = asyncio.Event()
        self._last_kick_listing = -float("inf")
        self._failed_at = -float("inf")
        self._first: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listings = 0
        """Listings this process made (`GET /models` rounds)."""
        self.source = "none"
        """Where the state in force came from: `none`, `file`, `redis` or `groq`."""

    @classmethod
    def from_settings(
        cls,
        settings: YmeraSettings,
        catalog: Catalog,
        *,
        groups: Groups,
        lister: Lister,
        clock: Clock = time.time,
    ) -> ServedModels:
        """Built from the settings: the file under `data_dir`, Redis when `redis_url` is set."""
        shared = None
        if settings.redis_url:
            ttl = max(86400.0, 4 * settings.models_refresh_interval)
            shared = RedisServedStore.from_url(
                settings.redis_url, namespace=settings.namespace, ttl=ttl
            )
        return cls(
            catalog,
            groups=groups,
            lister=lister,
            file=FileServedStore(Path(settings.data_dir) / f"served-{settings.namespace}.json"),
            shared=shared,
            clock=clock,
            refresh_interval=settings.models_refresh_interval,
        )

    def __repr__(self) -> str:
        return (
            f"<ServedModels [{len(self.state.orgs)} orgs listed, {len(self.state.marks)} marks, "
            f"from {self.source}]>"
        )

    # -- answers (pure, no I/O) --------------------------------------------------------------

    def serves(self, org: str, model: str) -> bool:
        """Whether `org` may be asked for `model`: listed and not marked since (an organisation
        not listed yet may, unless it answered 404 for it)."""
        state = self.state
        listing = state.orgs.get(org)
        mark = state.marks.get((org, model))
        if mark is not None and (listing is None or mark >= listing.fetched_at):
            return False
        if listing is None:
            return True
        entry = listing.models.get(model)
        return entry is not None and entry.get("active") is not False

    def _orgs(self) -> list[str]:
        return [org for org, _ in self._groups()]

    def apply(self) -> bool:
        """Push the state to the catalog; whether what it answers changed."""
        orgs = self._orgs()
        listed: dict[str, dict[str, Any]] | None = None
        known = [org for org in orgs if org in self.state.orgs]
        if known:
            listed = {}
            for org in known:
                for mid, entry in self.state.orgs[org].models.items():
                    if entry.get("active") is not False and self.serves(org, mid):
                        listed.setdefault(mid, entry)
        marked = {model for (_, model) in self.state.marks}
        unserved = [m for m in marked if orgs and not any(self.serves(o, m) for o in orgs)]
        return self.catalog.apply_account(listed, unserved)

    @property
    def known(self) -> bool:
        """Whether some organisation's listing is known."""
        return bool(self.state.orgs)

    # -- loading and listing -------------------------------------------------------------------

    async def load(self) -> None:
        """What is known before asking Groq: Redis (the fleet's), else the file."""
        state: ServedState | None = None
        if self._shared is not None:
            try:
                state, self._revision = await self._shared.load()
                if state is not None:
                    self.source = "redis"
            except StorageError as exc:
                logger.warning("served models: Redis unavailable, using the file: %s", exc)
        if state is None and self._file is not None:
            state = self._file.load()
            if state is not None:
                self.source = "file"
        if state is not None:
            self.state = state
            self.apply()
        if self.known:
            self._first.set()

    def due(self) -> bool:
        """Whether a listing is due (none yet, older than the interval, or a 404 asked)."""
        if self.refresh_interval <= 0:
            return False
        if self._kicked.is_set() and time.monotonic() - self._last_kick_listing >= _RELIST_GAP:
            return True
        if time.monotonic() - self._failed_at < min(_RETRY_FAILED, self.refresh_interval):
            return False
        orgs = self._orgs()
        if not orgs:
            return False
        now = self._clock()
        return any(
            org not in self.state.orgs
            or now - self.state.orgs[org].fetched_at >= self.refresh_interval
            for org in orgs
        )

    async def refresh(self, *, force: bool = False) -> bool:
        """List every organisation's models (with Redis: unless another process just did).

        Returns:
            Whether a listing was made (by this process).
        """
        kicked = self._kicked.is_set()
        if kicked:
            # Whatever happens next, the 404 that asked has had its listing (or its try).
            self._kicked.clear()
            self._last_kick_listing = time.monotonic()
        shared = self._shared
        locked = False
        if shared is not None:
            try:
                locked = await shared.try_lock(_LOCK_SECONDS)
                if not locked:
                    return False  # another process lists; its result arrives by polling
                # Another process may have listed a moment ago.
                await self.poll(force=True)
                if not force and not kicked and not self.due():
                    await shared.unlock()
                    return False
            except StorageError as exc:
                logger.warning("served models: Redis unavailable, listing alone: %s", exc)
        try:
            return await self._list_all()
        finally:
            if locked and shared is not None:
                with contextlib.suppress(StorageError):
                    await shared.unlock()

    async def _list_all(self) -> bool:
        groups = [(org, list(keys)) for org, keys in self._groups() if keys]
        if not groups:
            return False
        # Taken before asking: a 404 that arrives while the listing is on its way may postdate
        # what Groq listed, and its mark must outlive this listing.
        now = self._clock()
        results = await asyncio.gather(*(self._list_org(keys) for _, keys in groups))
        got = False
        for (org, _), models in zip(groups, results, strict=True):
            if models is not None:
                self.state.orgs[org] = OrgListing(now, models)
                got = True
        if not got:
            self._failed_at = time.monotonic()
            return False
        self._failed_at = -float("inf")
        self.listings += 1
        self.source = "groq"
        superseded = self.state.prune()
        self.apply()
        self._first.set()
        if self._file is not None:
            await self._file.asave(self.state)
        if self._shared is not None:
            try:
                await self._shared.save_listing(self.state, superseded)
                self._revision = await self._shared.revision()
            except StorageError as exc:
                logger.warning("served models: listing not shared: %s", exc)
        return True

    async def _list_org(self, keys: Sequence[ApiKey]) -> dict[str, dict[str, Any]] | None:
        for key in keys[:2]:
            try:
                payload = await self._lister(key)
                listed = listed_models(payload)
            except YmeraError as exc:
                logger.warning("served models: listing with key %s failed: %s", key.label, exc)
                continue
            return {
                mid: {
                    k: e[k] for k in ("active", "context_window", "max_completion_tokens") if k in e
                }
                for mid, e in listed.items()
                if is_chat_model(mid)
            }
        return None

    async def poll(self, *, force: bool = False) -> bool:
        """Adopt the fleet's state when its revision moved (Redis only).

        Returns:
            Whether something new was adopted.
        """
        shared = self._shared
        if shared is None:
            return False
        if not force and await shared.revision() == self._revision:
            return False
        state, revision = await shared.load()
        self._revision = revision
        if state is None:
            return False
        # Marks made here and not yet in Redis (an outage) are kept.
        for pair, at in self.state.marks.items():
            if at > state.marks.get(pair, -1.0):
                state.marks[pair] = at
        state.prune()
        self.state = state
        self.source = "redis"
        self.apply()
        self._first.set()
        return True

    # -- 404 memory ----------------------------------------------------------------------------

    async def mark(self, org: str, model: str) -> None:
        """`model` answered 404 or `model_decommissioned` on `org`: never ask it there again
        until a later listing of `org` says it is served; and list again soon."""
        now = self._clock()
        self.state.marks[(org, model)] = now
        self.apply()
        self._kicked.set()
        logger.info("served models: %s is not served on %s (404); listing again", model, org)
        if self._shared is not None:
            try:
                await self._shared.mark(org, model, now)
            except StorageError as exc:
                logger.warning("served models: 404 mark not shared: %s", exc)
        if self._file is not None:
            await self._file.asave(self.state)

    # -- background ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the listing loop in the background (on the running loop); idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_first(self, timeout: float = _FIRST_LISTING_WAIT) -> bool:  # noqa: ASYNC109
        """Wait (bounded) until some listing is known; whether one is."""
        if self.known:
            return True
        if self._task is None or self.refresh_interval <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._first.wait()
        return self.known

    async def _run(self) -> None:
        while True:
            try:
                if self.due():
                    await self.refresh()
                elif self._shared is not None:
                    await self.poll()
            except asyncio.CancelledError:
                raise
            except StorageError as exc:
                # Redis away: polled every second, so said quietly (the storage alerts say it).
                logger.debug("served models: %s", exc)
            except Exception as exc:
                logger.warning("served models: %s: %s", type(exc).__name__, exc)
            wait = _POLL if self._shared is not None else max(_POLL, self._until_due())
            if self._kicked.is_set():
                # A 404 asked for a listing: as soon as the gap since the last such one allows.
                gap = _RELIST_GAP - (time.monotonic() - self._last_kick_listing)
                await asyncio.sleep(max(0.0, min(wait, gap)))
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._kicked.wait()

    def _until_due(self) -> float:
        if not self.state.orgs:
            return _POLL
        oldest = min(lst.fetched_at for lst in self.state.orgs.values())
        return max(0.0, oldest + self.refresh_interval - self._clock())

    async def aclose(self) -> None:
        """Stop the background loop and close the shared store."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._shared is not None:
            await self._shared.aclose()
