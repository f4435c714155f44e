"""The engine: one request's path, written out once.

    cache → route (classify, plan) → key under quota → call Groq → settle usage and headers
    → record for learning → store in the cache

Every model object and adapter in a process shares one `Engine` per configuration
(`Engine.shared`). Its stateful async parts (quota ledger, key pool, cache tiers, learner,
HTTP clients) live on the process's portal loop (`_portal.py`), so sync callers (LangChain
`invoke`, LiteLLM's sync routing), async callers on any loop, and several loops in one process
all see the same state. The only work done in the caller's thread is validation and the L1
cache probe, which need no I/O.

Failure rules (DESIGN.md, issue 6), all decided in one place (`route.Route.failed`):

| What happened                      | What the engine does                                    |
|------------------------------------|---------------------------------------------------------|
| no room in the ledger for a model  | the next model now; later, wait (up to `max_wait`) for  |
|                                    | the model that opens first                              |
| 429                                | cool that organisation and model (`retry-after`; a day  |
|                                    | limit: until its bucket has room); another organisation,|
|                                    | then the next model, then wait for the first opening    |
| 413 "request too large"            | never that model again for this request; the next one   |
| 5xx, 498, timeout, lost connection | the same model after a jittered backoff, `max_retries`  |
|                                    | times inside the budget; then the next model            |
| 401 / 403                          | disable the key everywhere; another key, else next model|
| 404, decommissioned model          | mark (organisation, model) unserved for the fleet and   |
|                                    | list the account's models again; another organisation,  |
|                                    | then (routed) the next model or (pinned) the successor  |
| `event: error` inside a 200 stream | `StreamError`; fails over only while no token has       |
|                                    | reached the caller; nothing is cached                   |
| any other 4xx                      | raised as it is (the request itself is wrong)           |

When every Groq model is out, the configured fallback providers are tried through LiteLLM. A
request either succeeds or raises one typed error within its budget (`Engine.budget`), and
whatever it reserved is given back, also when it is cancelled: a cancelled caller gets its
`CancelledError` only after the request's reservation has been released.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import queue
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import SecretStr

from ._portal import Portal, get_portal
from .batching import DelayedBatcher
from .catalog import Catalog, load_catalog
from .clock import Clock
from .config import YmeraSettings
from .errors import (
    ConfigurationError,
    InvalidRequestError,
    ModelRetiredError,
    NoUsableKeyError,
    QuotaExhaustedError,
    StorageError,
    UnknownModelError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamTimeoutError,
    YmeraError,
)
from .events import EngineClosed, EngineEvent, RequestFinished, Subscribers
from .latency import LatencyTally, LatencyWindow
from .route import MIN_CALL_TIMEOUT, Route
from .served import NOT_SERVED_CODES
from .types import ChatRequest, ChatResult, Execution, Plan

if TYPE_CHECKING:
    from .cache import TieredCache
    from .learning import Learner
    from .quota import Grant, QuotaManager
    from .routing import Router
    from .served import ServedModels
    from .transport import FallbackTransport, GroqTransport

__all__ = ["Engine", "StreamEvent"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
_LATENCY_WINDOW = 2048
_CANCEL_GRACE = 5.0
"""Seconds a cancelled caller waits for the portal side to give its reservation back."""
# Learning records wait this long and go to the store together: written the moment an answer
# was handed over, a record held the interpreter while the caller's thread woke, which cost a
# cache miss about 0.2 ms (`benchmarks/bench_engine.py`). Feedback and `aflush` wait for them.
_RECORD_DELAY = 0.02
_BACKOFF_BASE = 0.25


@dataclasses.dataclass(frozen=True, slots=True)
class StreamEvent:
    """One item of an engine stream: a Groq chunk dict, or the final assembled result."""

    chunk: dict[str, Any] | None = None
    result: ChatResult | None = None


class _Stats:
    """Counters the engine keeps for the monitoring snapshot (per process).

    Latencies go to a window of the last 2048 (averages, percentiles) that also counts each
    one in `latency_histogram`, every request since the engine was built. A finished request
    is announced to `events` subscribers after the lock is released.
    """

    def __init__(self, events: Subscribers | None = None) -> None:
        self.lock = threading.Lock()
        self.events = events
        self.requests = 0
        self.succeeded = 0
        self.failed = 0
        self.cache_hits = 0
        self.upstream_calls = 0
        self.rate_limited_received = 0
        self.rate_limited_avoided = 0
        self.not_served_received = 0
        self.fallback_used = 0
        self.latency_histogram = LatencyTally()
        self.latencies_ms = LatencyWindow(maxlen=_LATENCY_WINDOW, tally=self.latency_histogram)
        self.by_model: Counter[str] = Counter()
        self.tokens_by_model: Counter[str] = Counter()
        self.by_key: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            lat = sorted(self.latencies_ms)
            done = self.succeeded + self.failed
            return {
                "requests": self.requests,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "success_rate": (self.succeeded / done) if done else 1.0,
                "cache_hits": self.cache_hits,
                "upstream_calls": self.upstream_calls,
                "rate_limited_received": self.rate_limited_received,
                "rate_limited_avoided": self.rate_limited_avoided,
                "not_served_received": self.not_served_received,
                "fallback_used": self.fallback_used,
                "avg_latency_ms": (sum(lat) / len(lat)) if lat else 0.0,
                "p50_latency_ms": lat[len(lat) // 2] if lat else 0.0,
                "p95_latency_ms": lat[min(len(lat) - 1, int(len(lat) * 0.95))] if lat else 0.0,
                "by_model": dict(self.by_model),
                "tokens_by_model": dict(self.tokens_by_model),
                "by_key": dict(self.by_key),
                "errors": dict(self.errors),
            }

    def bump(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def served(self, result: ChatResult, key_label: str | None) -> None:
        with self.lock:
            self.by_model[result.model] += 1
            self.tokens_by_model[result.model] += result.usage.total_tokens
            if key_label is not None:
                self.by_key[key_label] += 1

    def finished(self, started: float, error: BaseException | None = None) -> None:
        ms = (time.perf_counter() - started) * 1000
        with self.lock:
            if error is None:
                self.succeeded += 1
                self.latencies_ms.append(ms)
            else:
                self.failed += 1
                self.errors[type(error).__name__] += 1
        events = self.events
        if events is not None and events.wants(RequestFinished):
            events.emit(RequestFinished(ms, error))

    def latency(self, last: int) -> tuple[list[float], dict[str, Any]]:
        """The `last` most recent latencies (ms) and the histogram, read together."""
        with self.lock:
            window = list(self.latencies_ms)
            return window[-last:] if last > 0 else [], self.latency_histogram.as_dict()


class Engine:
    """The framework-free pipeline every adapter shares.

    Args:
        settings: The configuration; default: from the environment.
        catalog: The model catalog; default: the embedded one with the settings' overrides.
        clock: Wall clock for quota windows, cooldowns and cache expiry.
        quota: A ready `QuotaManager` (tests); default: built from the settings.
        cache: A ready `TieredCache`; default: built from the settings.
        learner: A ready `Learner`; default: built from the settings.
        router: A ready `Router`; default: the catalog with the settings' policy.
        transport: A ready `GroqTransport`; default: built from the settings.
        fallback: A `FallbackTransport` for `settings.fallback_models`; default: LiteLLM's,
            built with `fallback_api_bases` and `fallback_api_keys`.
        fallback_api_bases: Provider prefix (`"mistral"`) → base URL for the fallback models
            (a proxy, or a local server in tests); default: LiteLLM's own.
        fallback_api_keys: Provider prefix → API key for the fallback models; default: the
            provider's usual environment variable (`MISTRAL_API_KEY`, …).
        retry_backoff: Seconds before the first retry of a model after a 5xx, 498 or timeout;
            each further retry waits twice as long (up to 8 s), jittered by ±50 %.
        rng: Randomness for retry jitter (seeded in tests).
    """

    _registry: ClassVar[dict[str, Engine]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        settings: YmeraSettings | None = None,
        *,
        catalog: Catalog | None = None,
        clock: Clock = time.time,
        quota: QuotaManager | None = None,
        cache: TieredCache | None = None,
        learner: Learner | None = None,
        router: Router | None = None,
        transport: GroqTransport | None = None,
        fallback: FallbackTransport | None = None,
        fallback_api_bases: Mapping[str, str] | None = None,
        fallback_api_keys: Mapping[str, SecretStr | str] | None = None,
        retry_backoff: float = _BACKOFF_BASE,
        rng: random.Random | None = None,
    ) -> None:
        from .routing import Router, load_policy

        self.settings = settings if settings is not None else YmeraSettings()
        s = self.settings
        self.catalog = catalog or load_catalog(s.catalog_path, serve_successor=s.serve_successor)
        self.clock = clock
        self._portal: Portal = get_portal()
        self._rng = rng or random.Random()
        if retry_backoff < 0:
            raise ConfigurationError("retry_backoff must not be negative", setting="retry_backoff")
        self.retry_backoff = float(retry_backoff)
        self._quota = quota
        self._cache = cache
        self._learner = learner
        self._transport = transport
        self._fallback = fallback
        self._fallback_api_bases = dict(fallback_api_bases or {})
        self._fallback_api_keys = {
            k: v if isinstance(v, SecretStr) else SecretStr(v)
            for k, v in (fallback_api_keys or {}).items()
        }
        self.router = router or Router(
            self.catalog,
            load_policy(s.policy_path),
            learner,
            context_margin=s.context_margin,
            allow_model_fallback=s.allow_model_fallback,
        )
        self._served: ServedModels | None = None
        self._events = Subscribers()
        self.stats = _Stats(self._events)
        self._started: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._records: DelayedBatcher[Execution] = DelayedBatcher(
            self._write_records, delay=_RECORD_DELAY, name="learning record"
        )
        self._closed = False
        self._close_hooks: list[Callable[[], Awaitable[None]]] = []
        self._orgs = max(1, len({k.organisation for k in s.api_keys}))
        if self._cache is None and s.cache_enabled:
            from .cache import TieredCache

            # Built here, not on the portal: its L1 serves hits in the caller's thread.
            self._cache = TieredCache.from_settings(s, clock=clock)
            self._cache.write_behind = True

    # -- sharing ---------------------------------------------------------------------------

    @classmethod
    def shared(
        cls,
        settings: YmeraSettings | None = None,
        *,
        fallback_api_bases: Mapping[str, str] | None = None,
        fallback_api_keys: Mapping[str, SecretStr | str] | None = None,
    ) -> Engine:
        """The process's engine for this configuration (created on first use).

        Model objects with equal settings share one engine: one quota view, one cache, one
        learner. The registry key is a digest of the settings, secrets included (so different
        keys get different engines) but never stored in clear.
        """
        settings = settings if settings is not None else YmeraSettings()
        digest = _settings_digest(settings, fallback_api_bases, fallback_api_keys)
        with cls._registry_lock:
            engine = cls._registry.get(digest)
            if engine is None or engine._closed:
                engine = cls(
                    settings,
                    fallback_api_bases=fallback_api_bases,
                    fallback_api_keys=fallback_api_keys,
                )
                cls._registry[digest] = engine
            return engine

    # -- lifecycle -------------------------------------------------------------------------

    async def _ensure_started(self) -> None:
        """Build the loop-bound parts on the portal, once.

        The build runs in a task of its own that every early caller awaits: a caller
        cancelled meanwhile only stops waiting, and the build goes on for the others. (Run by
        the first caller, its cancellation reached every concurrent first call as their own
        `CancelledError`.) A failed build raises in each caller waiting for it; the next
        call builds again.
        """
        started = self._started
        if started is None:
            started = self._started = asyncio.get_running_loop().create_future()
            task = asyncio.get_running_loop().create_task(self._start(started))
            self._background.add(task)
            task.add_done_callback(self._background_done)
        if not started.done():
            await asyncio.shield(started)
        else:
            started.result()

    async def _start(self, started: asyncio.Future[None]) -> None:
        try:
            await self._build()
        except BaseException as exc:
            if self._started is started:
                self._started = None  # the next call retries
            if isinstance(exc, asyncio.CancelledError):  # the portal is shutting down
                started.cancel()
                raise
            started.set_exception(exc)
            started.exception()  # retrieved: a build that no caller awaits any more is no error
            return
        started.set_result(None)
        await self._attach_monitor()

    async def _attach_monitor(self) -> None:
        # After start-up (the monitor starts the engine itself): alert events and, with Redis,
        # this worker's share of the fleet's counters, so every engine reports without code
        # in the worker.
        from .monitor import aattach

        try:
            await aattach(self)
        except Exception as exc:
            logger.warning("monitoring not started: %s: %s", type(exc).__name__, exc)

    async def _build(self) -> None:
        s = self.settings
        if self._quota is None:
            from .quota import QuotaManager

            self._quota = QuotaManager.from_settings(s, self.catalog, clock=self.clock)
        if self._learner is None:
            from .learning import Learner

            try:
                self._learner = Learner.from_settings(s, clock=self.clock)
            except (StorageError, OSError) as exc:
                logger.warning("learning store unavailable, learning disabled: %s", exc)
        if self._learner is not None and self.router.learner is None:
            self.router.learner = self._learner
        if self._transport is None:
            from .transport import GroqTransport

            self._transport = GroqTransport(base_url=s.base_url, timeout=s.request_timeout)
        if self._fallback is None and s.fallback_models:
            from .transport import FallbackTransport

            self._fallback = FallbackTransport(
                timeout=s.request_timeout,
                api_keys=self._fallback_api_keys,
                api_bases=self._fallback_api_bases,
            )
        warm = getattr(self._fallback, "warm", None)
        if callable(warm):
            warm()  # LiteLLM's import runs on a thread now, not on the first fallback request
        await self._start_served()
        if self._learner is not None:
            # Evidence recorded by earlier runs and other workers counts from the first plan.
            try:
                await self._learner.refresh()
            except Exception as exc:
                logger.warning("learning history not loaded: %s: %s", type(exc).__name__, exc)

    async def _start_served(self) -> None:
        """Route on the last known listing of the account's models, and list again in the
        background (never on a request's path; see `served.py`)."""
        from .served import ServedModels

        quota = self.quota
        transport = self._transport
        assert transport is not None
        timeout = min(10.0, self.settings.request_timeout)

        async def lister(key: Any) -> dict[str, Any]:
            return await transport.alist_models(key=key, timeout=timeout)

        served = ServedModels.from_settings(
            self.settings,
            self.catalog,
            groups=lambda: quota.pool.groups(),
            lister=lister,
            clock=self.clock,
        )
        try:
            await served.load()
        except Exception as exc:
            logger.warning("served models not loaded: %s: %s", type(exc).__name__, exc)
        quota.served = served.serves
        self._served = served
        if self.settings.models_refresh_interval > 0:
            served.start()

    @property
    def served(self) -> ServedModels | None:
        """What the account serves, per organisation (after `start`)."""
        return self._served

    async def astart(self) -> Engine:
        """Build the loop-bound parts (quota, learner, transport) on the portal; idempotent."""
        await self._on_portal(self._ensure_started())
        return self

    def start(self) -> Engine:
        """Sync twin of `astart`."""
        self._portal.run(self._ensure_started())
        return self

    @property
    def portal(self) -> Portal:
        """The loop every stateful part of this engine lives on."""
        return self._portal

    @property
    def quota(self) -> QuotaManager:
        """The quota manager (after `start`)."""
        if self._quota is None:
            raise RuntimeError("engine not started")
        return self._quota

    @property
    def cache(self) -> TieredCache | None:
        """The response cache, or `None` when caching is off."""
        return self._cache

    @property
    def learner(self) -> Learner | None:
        """The learner, or `None` when its store is unavailable (or before `start`)."""
        return self._learner

    @property
    def transport(self) -> GroqTransport | None:
        """The Groq transport (after `start`)."""
        return self._transport

    @property
    def closed(self) -> bool:
        """Whether `aclose` has run: the engine's stores and connections are closed."""
        return self._closed

    @property
    def budget(self) -> float:
        """Seconds one request may take at most, waiting for quota and retrying included."""
        s = self.settings
        return s.max_wait + s.request_timeout * (s.max_retries + 1) + 1.0

    def close(self) -> None:
        """Release connections and flush background work (sync)."""
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):
            self._portal.run(self.aclose(), timeout=10)

    async def aclose(self) -> None:
        """Release connections and flush background work."""
        if self._closed:
            return
        if not self._portal.in_portal():
            await self._portal.arun(self.aclose())
            return
        # Integrations (the LiteLLM callback) stop feeding work in and give their
        # reservations back while the parts they need are still open.
        for hook in self._close_hooks:
            try:
                await hook()
            except Exception as exc:
                logger.warning("close hook failed: %s: %s", type(exc).__name__, exc)
        self._closed = True
        # Subscribers (the monitor's last publish) finish while every part is still open.
        closing = EngineClosed()
        self._events.emit(closing)
        for work in closing.pending:
            try:
                await work
            except Exception as exc:
                logger.warning("close subscriber failed: %s: %s", type(exc).__name__, exc)
        await self._records.aclose()
        await self.aflush()
        for part in (
            self._served,
            self._transport,
            self._fallback,
            self._cache,
            self._learner,
            self._quota,
        ):
            closer = getattr(part, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    async def aflush(self) -> None:
        """Wait for background work (learning records, cache write-behind) to land."""
        if not self._portal.in_portal():
            await self._portal.arun(self.aflush())
            return
        await self._records.flush()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if self._cache is not None:
            await self._cache.aflush()

    def flush(self) -> None:
        """Sync twin of `aflush`."""
        self._portal.run(self.aflush())

    # -- validation (before any network call) ----------------------------------------------

    def validate(self, request: ChatRequest) -> None:
        """Refuse a malformed request with a typed error before anything is spent.

        Raises:
            InvalidRequestError: Empty or malformed messages, or bad parameters.
            UnknownModelError: An explicit model that neither the catalog nor the account's
                listing knows.
            ModelRetiredError: A shut-down model whose successor may not serve.
            NoUsableKeyError: No key is configured.
        """
        if not request.messages:
            raise InvalidRequestError("The request has no messages.")
        for i, m in enumerate(request.messages):
            if not isinstance(m, Mapping):
                raise InvalidRequestError(f"Message {i} is not a mapping.")
            role = m.get("role")
            if role not in _ROLES:
                raise InvalidRequestError(f"Message {i} has an invalid role {role!r}.")
            if m.get("content") is None and not m.get("tool_calls"):
                raise InvalidRequestError(f"Message {i} ({role}) has no content.")
        p = request.params
        mt = p.get("max_completion_tokens", p.get("max_tokens"))
        if mt is not None:
            if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
                raise InvalidRequestError(f"max_tokens must be a positive integer, got {mt!r}.")
            largest = max((m.max_completion_tokens for m in self.catalog.served()), default=0)
            if mt > largest:
                raise InvalidRequestError(
                    f"max_tokens={mt} exceeds the largest completion any served model "
                    f"produces ({largest})."
                )
        t = p.get("temperature")
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 2
        ):
            raise InvalidRequestError(f"temperature must be in [0, 2], got {t!r}.")
        tp = p.get("top_p")
        if tp is not None and (
            isinstance(tp, bool) or not isinstance(tp, int | float) or not 0 < tp <= 1
        ):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {tp!r}.")
        n = p.get("n")
        if n not in (None, 1):
            raise InvalidRequestError("Groq supports n=1 only.")
        if request.model is not None:
            try:
                self.catalog.resolve(request.model)
            except (UnknownModelError, ModelRetiredError):
                # A model newer than the catalog, or one its dates call shut down, may be served
                # by the account: decided once the first listing is known (`_check_model`).
                if self.catalog.account_known or self.settings.models_refresh_interval <= 0:
                    raise
        if not self.settings.api_keys:
            raise NoUsableKeyError(
                "No Groq API key is configured: set GROQ_API_KEY (and GROQ_API_KEY_2, …) or "
                "pass api_keys=[…]."
            )

    def plan(self, request: ChatRequest) -> Plan:
        """The route the engine would take for a request (pure: no quota, no I/O).

        Raises:
            UnknownModelError: `request.model` is not in the catalog.
            ContextWindowError: No served model fits the prompt plus the completion budget.
        """
        plan = self.router.plan(request, self.router.profile(request))
        if request.model is not None and plan.reasons and "instead" in plan.reasons[0]:
            # The pinned model is not served (listing, 404s or dates): say so where it shows.
            logger.warning("%s", plan.reasons[0].removeprefix("request.model: "))
        return plan

    # -- crossing to the portal ------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the portal from a sync caller and block for its outcome.

        The portal task wakes the caller the moment it finishes (before the loop runs the
        background work the request spawned), which keeps a call's thread hop short.
        """
        portal = self._portal
        if portal.in_portal():
            coro.close()
            raise RuntimeError("a sync engine call from the portal thread would deadlock")
        done = threading.Event()
        outcome: list[Any] = []
        holder: list[asyncio.Task[None]] = []

        async def runner() -> None:
            try:
                outcome.append((True, await coro))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                done.set()

        def start() -> None:
            holder.append(portal.loop.create_task(runner()))

        portal.loop.call_soon_threadsafe(start)
        try:
            # The request is bounded by its own budget; this is only a net under it.
            if not done.wait(self.budget + _CANCEL_GRACE):
                raise UpstreamTimeoutError(
                    f"The request did not finish within its {self.budget:g} s budget."
                )
        except BaseException:
            portal.loop.call_soon_threadsafe(lambda: holder and holder[0].cancel())
            done.wait(_CANCEL_GRACE)
            raise
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    async def _on_portal(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the portal from any loop.

        Cancelling the caller cancels the portal task and waits (briefly) until it has
        finished, so a cancelled request has given its reservation back when the caller's
        `CancelledError` propagates.
        """
        portal = self._portal
        if portal.in_portal():
            return await coro
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[T] = loop.create_future()
        holder: list[asyncio.Task[T]] = []

        def deliver(task: asyncio.Task[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(_transfer, task, finished)

        def start() -> None:
            task = portal.loop.create_task(coro)
            task.add_done_callback(deliver)
            holder.append(task)

        portal.loop.call_soon_threadsafe(start)
        try:
            return await asyncio.shield(finished)
        except asyncio.CancelledError:
            if not finished.done():
                portal.loop.call_soon_threadsafe(lambda: holder and holder[0].cancel())
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(finished), _CANCEL_GRACE)
            raise

    # -- the request path ------------------------------------------------------------------

    def invoke(self, request: ChatRequest) -> ChatResult:
        """Serve a request from sync code.

        Raises:
            InvalidRequestError: The request is malformed (before any network call).
            QuotaExhaustedError: No model had room within the wait bound (`retry_after`).
            NoUsableKeyError: Every key is disabled.
            UpstreamError: Groq (and every fallback) failed; the subclass says how.
        """
        self.validate(request)
        if (hit := self._l1(request)) is not None:
            return hit
        return self._run(self._serve(request))

    async def ainvoke(self, request: ChatRequest) -> ChatResult:
        """Serve a request from async code on any loop (see `invoke`)."""
        self.validate(request)
        if (hit := self._l1(request)) is not None:
            return hit
        return await self._on_portal(self._serve(request))

    def _l1(self, request: ChatRequest) -> ChatResult | None:
        cache = self._cache
        if cache is None or not cache.should_cache(request):
            return None
        hit = cache.get_l1(request)
        if hit is not None:
            self.stats.bump(requests=1, succeeded=1, cache_hits=1)
        return hit

    async def _check_model(self, request: ChatRequest) -> None:
        """An explicit model that only the catalog's guesses rule out (absent from it, or shut
        down by its dates) waits for the first listing of the account's models (bounded): the
        account may serve it, and a pinned model must not be answered by its successor on a
        cold start when the account serves it (issue 13). Any other request never waits."""
        model = request.model
        if model is None:
            return
        catalog = self.catalog
        if model in catalog and (catalog.account_known or catalog.is_served(model)):
            return
        served = self._served
        if served is not None and not served.known:
            await served.wait_first()
        # UnknownModelError / ModelRetiredError when the listing rules it out too.
        catalog.resolve(model)

    async def _serve(self, request: ChatRequest) -> ChatResult:
        await self._ensure_started()
        await self._check_model(request)
        self.stats.bump(requests=1)
        started = time.perf_counter()
        try:
            cache = self._cache
            if cache is not None and cache.should_cache(request):
                hit = await cache.aget_result(request)
                if hit is not None:
                    self.stats.bump(cache_hits=1)
                    result = hit
                else:
                    result = await cache.coalesce(request, lambda: self._route_and_call(request))
            else:
                result = await self._route_and_call(request)
        except BaseException as exc:
            self.stats.finished(started, exc)
            raise
        self.stats.finished(started)
        return result

    def _deadline(self) -> float:
        return time.monotonic() + self.budget

    def _route(self, request: ChatRequest, plan: Plan) -> Route:
        return Route(
            request,
            plan,
            quota=self.quota,
            catalog=self.catalog,
            settings=self.settings,
            deadline=self._deadline(),
            budget=self.budget,
            organisations=self._orgs,
            retry_backoff=self.retry_backoff,
            rng=self._rng,
            on_wait=lambda: self.stats.bump(rate_limited_avoided=1),
        )

    async def _route_and_call(self, request: ChatRequest) -> ChatResult:
        plan = self.plan(request)
        route = self._route(request, plan)
        while (grant := await route.next()) is not None:
            try:
                return await self._complete(
                    request, route.plan_so_far(), grant, route.call_timeout()
                )
            except UpstreamError as exc:
                await route.failed(grant, exc)
        if self.settings.fallback_models and route.may_fall_back():
            return await self._fallback_call(request, route.plan_so_far(), route.last_error)
        raise route.error()

    async def _complete(
        self, request: ChatRequest, plan: Plan, grant: Grant, call_timeout: float
    ) -> ChatResult:
        """One upstream call under a grant; the grant is settled, failed or released."""
        transport = self._transport
        assert transport is not None
        quota = self.quota
        started = time.perf_counter()
        outcome = "released"
        try:
            self.stats.bump(upstream_calls=1)
            try:
                resp = await transport.acomplete(
                    key=grant.key,
                    model=grant.model,
                    messages=request.messages,
                    params=request.params,
                    timeout=call_timeout,
                )
            except UpstreamError as exc:
                outcome = "failed"
                await self._report(request, plan, grant, exc, started)
                raise
            result = transport.to_result(resp, key_label=grant.key.label)
            await quota.settle(grant, result.usage, resp.rate_limits)
            outcome = "settled"
        finally:
            if outcome == "released":
                # Cancelled (or broken) before Groq answered: give everything back.
                await asyncio.shield(quota.release(grant))
        return self._succeeded(request, plan, result, grant.key.label, started)

    async def _report(
        self, request: ChatRequest, plan: Plan, grant: Grant, exc: UpstreamError, started: float
    ) -> None:
        """Tell the quota (and, for the model's own failures, the learner) about a failure."""
        if isinstance(exc, UpstreamRateLimitError):
            self.stats.bump(rate_limited_received=1)
        if exc.code in NOT_SERVED_CODES and self._served is not None:
            self.stats.bump(not_served_received=1)
            await asyncio.shield(self._served.mark(grant.org, grant.model))
        await asyncio.shield(
            self.quota.report_failure(
                grant, status=exc.status_code, rate_limits=exc.rate_limits, message=str(exc)
            )
        )
        if not isinstance(exc, UpstreamRateLimitError | UpstreamAuthError):
            # A limit or a bad key says nothing about the model; a 5xx or a timeout does.
            self._record(request, plan, grant.model, False, started, 0, type(exc).__name__)

    def _succeeded(
        self,
        request: ChatRequest,
        plan: Plan,
        result: ChatResult,
        key_label: str | None,
        started: float,
    ) -> ChatResult:
        result = dataclasses.replace(
            result,
            plan=plan,
            latency_ms=(time.perf_counter() - started) * 1000,
            request_id=request.request_id,
            # Kept with the cached answer, so feedback on a cache hit reaches the execution
            # that produced it.
            raw={**result.raw, "execution_id": request.request_id},
        )
        self.stats.served(result, key_label)
        self._record(request, plan, result.model, True, started, result.usage.total_tokens, None)
        return result

    async def _fallback_call(
        self, request: ChatRequest, plan: Plan, cause: BaseException | None
    ) -> ChatResult:
        fallback = self._fallback
        assert fallback is not None
        errors: list[str] = []
        deadline = self._deadline()
        last: BaseException | None = cause
        for model in self.settings.fallback_models:
            left = deadline - time.monotonic()
            if left < MIN_CALL_TIMEOUT:
                break
            started = time.perf_counter()
            try:
                result = await fallback.acomplete(
                    model=model,
                    messages=request.messages,
                    params=request.params,
                    timeout=min(self.settings.request_timeout, left),
                )
            except YmeraError as exc:
                errors.append(f"{model}: {type(exc).__name__}")
                last = exc
                continue
            self.stats.bump(fallback_used=1)
            return self._succeeded(request, plan, result, None, started)
        raise QuotaExhaustedError(
            "Every Groq model and every fallback provider failed (" + "; ".join(errors) + ")."
        ) from last

    def _record(
        self,
        request: ChatRequest,
        plan: Plan,
        model: str,
        success: bool,
        started: float,
        tokens: int,
        error: str | None,
    ) -> None:
        learner = self._learner
        if learner is None:
            return
        execution = Execution(
            agent_name=request.agent_name or plan.profile.agent_name or "*",
            task_type=plan.profile.task_type,
            model=model,
            success=success,
            latency_ms=(time.perf_counter() - started) * 1000,
            tokens=tokens,
            timestamp=self.clock(),
            execution_id=request.request_id if success else _failure_id(request.request_id),
            error=error,
        )
        # Off the request's path: learning is evidence, not part of the answer.
        if self._closed:
            return
        self._records.add(execution)

    async def _write_records(self, batch: list[Execution]) -> None:
        learner = self._learner
        if learner is None:
            return
        for execution in batch:
            try:
                await learner.record(execution)
            except Exception as exc:
                logger.warning("learning record failed: %s: %s", type(exc).__name__, exc)

    def add_close_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` on the portal at the start of `aclose`, before any part closes."""
        self._close_hooks.append(hook)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("background task failed: %s: %s", type(exc).__name__, exc)

    # -- streaming -------------------------------------------------------------------------

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        """Stream from sync code: Groq chunk dicts, then the final result.

        Closing the iterator early cancels the request (and gives its reservation back).
        """
        self.validate(request)
        if (hit := self._l1(request)) is not None:
            yield from self._replay(hit)
            return
        q: queue.Queue[tuple[str, Any]] = queue.Queue()
        fut = self._portal.submit(self._pump(request, q.put))
        finished = False
        try:
            while True:
                try:
                    kind, item = q.get(timeout=self.budget + _CANCEL_GRACE)
                except queue.Empty:
                    raise UpstreamTimeoutError(
                        f"The stream did not finish within its {self.budget:g} s budget."
                    ) from None
                if kind == "event":
                    yield item
                    continue
                finished = True
                if kind == "error":
                    raise item
                return
        finally:
            if not finished:
                fut.cancel()
                # `_pump` says "done" even when cancelled: wait for its reservation to go back.
                with contextlib.suppress(queue.Empty):
                    while q.get(timeout=_CANCEL_GRACE)[0] == "event":
                        pass

    async def astream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Stream from async code on any loop: Groq chunk dicts, then the final result.

        Closing the iterator early (or cancelling its consumer) cancels the request and gives
        its reservation back before the closing returns.
        """
        self.validate(request)
        if (hit := self._l1(request)) is not None:
            for event in self._replay(hit):
                yield event
            return
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(item: tuple[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(q.put_nowait, item)

        if self._portal.in_portal():
            fut: Any = asyncio.ensure_future(self._pump(request, q.put_nowait))
        else:
            fut = self._portal.submit(self._pump(request, put))
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self.budget + _CANCEL_GRACE):
                        kind, item = await q.get()
                except TimeoutError:
                    raise UpstreamTimeoutError(
                        f"The stream did not finish within its {self.budget:g} s budget."
                    ) from None
                if kind == "event":
                    yield item
                elif kind == "error":
                    finished = True
                    raise item
                else:
                    finished = True
                    return
        finally:
            if not finished:
                fut.cancel()
                with contextlib.suppress(BaseException):
                    async with asyncio.timeout(_CANCEL_GRACE):
                        while (await q.get())[0] == "event":
                            pass

    def _replay(self, result: ChatResult) -> Iterator[StreamEvent]:
        """A whole answer (cached, or from a fallback provider) as the chunks Groq streams."""
        from .cache import codec

        for chunk in codec.replay_stream(result, created=int(self.clock())):
            yield StreamEvent(chunk=chunk)
        yield StreamEvent(result=result)

    async def _pump(self, request: ChatRequest, put: Any) -> None:
        """Run a stream on the portal, handing events to the caller's queue.

        Whatever happens, the last item put is `("error", exc)` or `("done", None)`, after
        the stream's reservation was settled or given back.
        """
        try:
            async for event in self._stream_on_portal(request):
                put(("event", event))
        except asyncio.CancelledError:
            put(("done", None))
            raise
        except BaseException as exc:
            put(("error", exc))
        else:
            put(("done", None))

    async def _stream_on_portal(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        await self._ensure_started()
        await self._check_model(request)
        self.stats.bump(requests=1)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            cache = self._cache
            cacheable = cache is not None and cache.should_cache(request)
            if cache is not None and cacheable:
                hit = await cache.aget_result(request)
                if hit is not None:
                    self.stats.bump(cache_hits=1)
                    for event in self._replay(hit):
                        yield event
                    return
            plan = self.plan(request)
            route = self._route(request, plan)
            while (grant := await route.next()) is not None:
                emitted = False
                try:
                    async for event in self._stream_model(
                        request, route.plan_so_far(), grant, route
                    ):
                        emitted = True
                        yield event
                        if event.result is not None and cache is not None and cacheable:
                            await cache.aput_result(request, event.result)
                    return
                except UpstreamError as exc:
                    # Fail over only while no token has reached the caller.
                    if emitted:
                        raise
                    await route.failed(grant, exc)
            if self.settings.fallback_models and route.may_fall_back():
                result = await self._fallback_call(request, route.plan_so_far(), route.last_error)
                for event in self._replay(result):
                    yield event
                return
            raise route.error()
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.stats.finished(started, error)

    async def _stream_model(
        self, request: ChatRequest, plan: Plan, grant: Grant, route: Route
    ) -> AsyncIterator[StreamEvent]:
        """One upstream stream under a grant: chunk events, then the result event.

        Chunks that carry no token (the role chunk) are held back until the first token, so a
        failure before it leaves the caller with nothing to undo and the request may fail over.
        """
        transport = self._transport
        assert transport is not None
        quota = self.quota
        started = time.perf_counter()
        outcome = "released"
        held: list[dict[str, Any]] | None = []
        try:
            self.stats.bump(upstream_calls=1)
            try:
                handle = await transport.astream(
                    key=grant.key,
                    model=grant.model,
                    messages=request.messages,
                    params=request.params,
                    timeout=route.call_timeout(),
                )
                try:
                    async for chunk in handle:
                        if held is not None:
                            held.append(chunk)
                            if not _has_token(chunk):
                                continue
                            for c in held:
                                yield StreamEvent(chunk=c)
                            held = None
                            continue
                        yield StreamEvent(chunk=chunk)
                finally:
                    await handle.aclose()
            except UpstreamError as exc:
                outcome = "failed"
                await self._report(request, plan, grant, exc, started)
                raise
            result = handle.to_result()
            await quota.settle(grant, result.usage, handle.rate_limits)
            outcome = "settled"
        finally:
            if outcome == "released":
                await asyncio.shield(quota.release(grant))
        for c in held or ():
            yield StreamEvent(chunk=c)
        yield StreamEvent(result=self._succeeded(request, plan, result, grant.key.label, started))

    # -- learning and monitoring -----------------------------------------------------------

    async def afeedback(self, request_id: str, quality: float) -> None:
        """Attach a quality score in [0, 1] to an earlier answer (by its `request_id`).

        Raises:
            InvalidRequestError: The score is out of range, learning is unavailable, or no
                execution has that id.
        """
        if not 0 <= quality <= 1:
            raise InvalidRequestError("quality must be in [0, 1]")
        if not self._portal.in_portal():
            await self._on_portal(self.afeedback(request_id, quality))
            return
        await self._ensure_started()
        # The execution's record may still be on its way to the store.
        await self._records.flush()
        if self._learner is None:
            raise InvalidRequestError("learning is not available")
        await self._learner.feedback(request_id, quality)

    def feedback(self, request_id: str, quality: float) -> None:
        """Sync twin of `afeedback`."""
        self._portal.run(self.afeedback(request_id, quality))

    async def asnapshot(self) -> dict[str, Any]:
        """The monitoring snapshot (original plan §9 shape)."""
        if not self._portal.in_portal():
            return await self._portal.arun(self.asnapshot())
        await self._ensure_started()
        from .monitor import build_snapshot

        return await build_snapshot(self)

    def snapshot(self) -> dict[str, Any]:
        """Sync twin of `asnapshot`."""
        return self._portal.run(self.asnapshot())

    def subscribe(
        self, callback: Callable[[EngineEvent], object], *kinds: type[EngineEvent]
    ) -> Callable[[], None]:
        """Call `callback(event)` for each engine event of `kinds` (default: every kind).

        Events are `RequestFinished` (latency and outcome of a request the pipeline served)
        and `EngineClosed` (see `events.py`). Callbacks run synchronously on the portal
        thread and must be cheap; one that raises is logged, never raised into a request.

        Returns:
            A function that unsubscribes.

        Raises:
            TypeError: A kind is not an engine event class.
        """
        return self._events.subscribe(callback, *kinds)

    def __repr__(self) -> str:
        keys = len(self.settings.api_keys)
        mode = "embedded" if self.settings.embedded else "redis"
        return f"<Engine [{keys} keys, {mode}, {len(self.catalog.served())} models served]>"


def _transfer(task: asyncio.Task[T], target: asyncio.Future[T]) -> None:
    """Copy a portal task's outcome onto a future of another loop."""
    if target.done():
        return
    if task.cancelled():
        target.cancel()
    elif (exc := task.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(task.result())


def _has_token(chunk: Mapping[str, Any]) -> bool:
    """Whether a chunk carries part of the answer (text, reasoning or a tool call)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning") or delta.get("tool_calls"):
            return True
        if choice.get("finish_reason"):
            return True
    return False


def _failure_id(request_id: str) -> str:
    # A request can fail on several models before one answers; each failure is its own
    # execution, and the answer keeps the request id (the handle for feedback).
    return f"{request_id}:failed:{uuid.uuid4().hex[:12]}"


def _settings_digest(
    settings: YmeraSettings,
    fallback_api_bases: Mapping[str, str] | None = None,
    fallback_api_keys: Mapping[str, SecretStr | str] | None = None,
) -> str:
    h = hashlib.sha256()
    h.update(settings.model_dump_json(exclude={"api_keys"}).encode())
    for k in settings.api_keys:
        h.update(b"\0" + k.label.encode() + b"\0" + (k.org or "").encode() + b"\0")
        h.update(hashlib.sha256(k.secret.get_secret_value().encode()).digest())
    for name, base in sorted((fallback_api_bases or {}).items()):
        h.update(b"\1" + name.encode() + b"\0" + base.encode())
    for name, secret in sorted((fallback_api_keys or {}).items()):
        raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        h.update(b"\2" + name.encode() + b"\0" + hashlib.sha256(raw.encode()).digest())
    return h.hexdigest()
