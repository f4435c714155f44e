"""`YmeraLiteLLM`: the callback that reserves quota in the router's filter stage (and, on the
sync path, in `pre_call_check`), binds each reservation to its call and settles or reports it
from LiteLLM's success and failure hooks."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import litellm
from litellm.exceptions import ContextWindowExceededError
from litellm.integrations.custom_logger import CustomLogger
from pydantic import SecretStr, ValidationError

from ..config import ApiKey
from ..engine import Engine
from ..errors import (
    ContextWindowError,
    NoUsableKeyError,
    QuotaExhaustedError,
    RequestTooLargeError,
    UnknownModelError,
)
from ..headers import parse_rate_limits
from ..tokens import estimate_prompt_tokens
from ..types import OUTPUT_PARAMS, ChatRequest, Execution, messages_tuple
from .deployments import (
    _BOUND,
    _DONE,
    _IN_PICK,
    _RESERVED,
    _SYNC_REQUEST,
    DEFAULT_ROUTED_GROUPS,
    LABEL_FIELD,
    ORG_FIELD,
    PROVIDER_PREFIX,
    SETTLE_GRACE,
    AdoptedKey,
    GroqCapacityError,
    _base_url,
    _deployment_base,
    _deployment_id,
    _failure_facts,
    _headers_of,
    _hint,
    _Hold,
    _Managed,
    _metadata,
    _not_served,
    _Pick,
    _registry_version,
    _resolve_secret,
    _router_deployments,
    _usage_of,
)

if TYPE_CHECKING:
    from ..quota import Grant


logger = logging.getLogger(__name__)


# -- the callback --------------------------------------------------------------------------


class YmeraLiteLLM(CustomLogger):
    """The package inside LiteLLM: a quota filter and the accounting callback.

    Registered once per engine in `litellm.callbacks`, the process-wide list LiteLLM reads its
    routing callbacks from, so every Router in the process calls it. It governs only the Groq
    deployments (`groq/<catalog model>` with a key; keys the engine's settings lack are
    adopted, see `managed`) of the routers it was attached to (`attach`): LiteLLM does not say
    which router calls, so a deployment is recognised by its `model_info.id` being one of
    theirs. With `YmeraRoutingPlugin` it governs every router's (a plugin never learns its
    router). Everything else passes through untouched.

    Args:
        engine: The engine whose quota, learner and statistics it uses (started).
        routed_groups: Groups where the request is profiled and the model chosen by the plan.
        max_wait: Seconds a pick may wait for room before the router's fallbacks take over;
            default: `settings.max_wait`. A group that also has non-Groq deployments never waits.
        reservation_timeout: Seconds after which a reservation whose call never reported back
            is released; default: twice the request timeout plus `max_wait`.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        routed_groups: Iterable[str] = DEFAULT_ROUTED_GROUPS,
        max_wait: float | None = None,
        reservation_timeout: float | None = None,
    ) -> None:
        super().__init__()
        s = engine.settings
        self.engine = engine
        self.routed_groups = frozenset(routed_groups)
        self.max_wait = s.max_wait if max_wait is None else max_wait
        self.reservation_timeout = (
            2 * s.request_timeout + self.max_wait
            if reservation_timeout is None
            else reservation_timeout
        )
        # The secrets stay in memory, only to recognise our deployments.
        self._keys = {k.secret.get_secret_value(): k for k in s.api_keys}
        self._closed = False
        engine.add_close_hook(self._on_engine_close)
        self._managed: dict[tuple[str, str | None, str | None, str | None], _Managed | None] = {}
        self._lock = threading.Lock()
        self._holds: dict[int, _Hold] = {}
        self._bound: dict[str, _Hold] = {}
        self._by_task: weakref.WeakKeyDictionary[asyncio.Task[Any], set[_Hold]] = (
            weakref.WeakKeyDictionary()
        )
        # The reservation the last pick in this task (or thread) made; one variable per
        # callback, so two engines' callbacks in one process never touch each other's.
        self._current: contextvars.ContextVar[_Hold | None] = contextvars.ContextVar(
            f"ymera_litellm_hold_{id(self):x}", default=None
        )
        self._next_sweep = 0.0
        # The routers governed (`attach`): id(router) -> (weak reference, registry version,
        # deployment ids at that version). `_everywhere`: True with the plugin form; None
        # while nothing was attached (a callback put in `litellm.callbacks` by hand).
        self._routers: dict[int, tuple[weakref.ref[Any], int | None, frozenset[str]]] = {}
        self._everywhere: bool | None = None
        self._base = _base_url(s.base_url)
        self._background: set[Any] = set()
        self._accounting: dict[tuple[str, str], list[int]] = {}
        self._reserved = [0, 0]  # settled calls, tokens their reservations held

    def __repr__(self) -> str:
        with self._lock:
            live = len(self._holds)
        return f"<YmeraLiteLLM {len(self._keys)} keys, {live} reservations live, {self.engine!r}>"

    # -- recognising deployments ----------------------------------------------------------

    def managed(
        self,
        model: Any,
        api_key: Any,
        *,
        org: str | None = None,
        label: str | None = None,
        api_base: Any = None,
        adopt: bool = True,
    ) -> _Managed | None:
        """Whether a deployment (its `litellm_params` `model`, `api_key`, `api_base`) is ours.

        Every `groq/<catalog model>` deployment with a key is: the key LiteLLM sends (its
        `api_key` as the router holds it, or `GROQ_API_KEY` when there is none) is, when the
        engine's settings do not list it, adopted into the engine's key pool under
        `label` (or a hash-derived one) with organisation `org` (or its own until Groq's
        headers or 429 texts show it shares one), as an `AdoptedKey` that carries `api_base`
        when LiteLLM calls it elsewhere than `settings.base_url`. `adopt=False` only
        recognises keys already known.
        """
        if not isinstance(model, str) or not (api_key is None or isinstance(api_key, str)):
            return None
        if not model.startswith(PROVIDER_PREFIX):
            return None
        # Resolved first, so an environment variable set later is seen (a literal costs nothing).
        secret = _resolve_secret(api_key)
        if not adopt and (secret is None or secret not in self._keys):
            return None  # not remembered: a later adopting call must not find a miss
        memo = (model, secret, org, label)
        found = self._managed.get(memo, self)
        if found is not self:
            return found  # type: ignore[return-value]
        result: _Managed | None = None
        try:
            info = self.engine.catalog.get(model.removeprefix(PROVIDER_PREFIX))
        except UnknownModelError:
            info = None  # not governed, so its key is not adopted either
        key = self._key_for(secret, org, label, api_base) if secret and info else None
        if info is not None and key is not None:
            result = _Managed(info.id, key)
        if len(self._managed) > 4096:
            self._managed.clear()
        self._managed[memo] = result
        return result

    def _key_for(
        self, secret: str, org: str | None, label: str | None, api_base: Any
    ) -> ApiKey | None:
        """The pool's key with this secret, adopting it first when the pool lacks it.

        Its base is the one of the deployment that brought it in. A key first seen at another
        base keeps that mark when a later deployment sends it to `settings.base_url` (the cost:
        it stays unlisted, its models come from the deployments); a key first seen at
        `settings.base_url` works there, so a later deployment elsewhere changes nothing.
        """
        key = self._keys.get(secret)
        if key is not None:
            return key
        pool = self.engine.quota.pool
        digest = "lk-" + hashlib.sha256(secret.encode()).hexdigest()[:8]
        base = _deployment_base(api_base)
        elsewhere = base if base != self._base else None
        for name in dict.fromkeys((label or digest, digest)):
            try:
                candidate = AdoptedKey(
                    secret=SecretStr(secret), label=name, org=org or None, api_base=elsewhere
                )
            except ValidationError:
                return None  # not a usable key (empty, whitespace): not ours
            if self._pool_add(candidate):
                key = candidate
                break
            # Another thread adopted it meanwhile, or the label belongs to another key.
            key = next((k for k in pool.keys if k.secret.get_secret_value() == secret), None)
            if key is not None:
                break
        if key is None:
            return None
        with self._lock:
            known = self._keys.get(secret)
            if known is not None:
                return known
            self._keys[secret] = key
        # The label only: not even the last characters of a key go to a log.
        logger.info(
            "Governing the router's Groq key %s, organisation %s",
            key.label,
            key.org or "not given (learnt from Groq's answers)",
        )
        if isinstance(key, AdoptedKey) and key.api_base is not None:
            # The URL is not logged either: a proxy's may carry a credential.
            logger.debug(
                "Groq key %s: its deployment's api_base is not settings.base_url, so the "
                "engine is not to list its models there; they are the router's deployments'",
                key.label,
            )
        return key

    def _pool_add(self, key: ApiKey) -> bool:
        """Add a key to the engine's pool on the portal, where every reader of the pool runs
        (never while holding `_lock`: the portal takes it too)."""
        pool = self.engine.quota.pool
        portal = self.engine.portal
        if portal.in_portal():
            return bool(pool.add([key]))

        async def add() -> bool:
            return bool(pool.add([key]))

        return portal.run(add())

    def _of(self, deployment: Mapping[str, Any]) -> _Managed | None:
        params = deployment.get("litellm_params")
        if not isinstance(params, Mapping):
            return None
        info = deployment.get("model_info")
        org = label = None
        if isinstance(info, Mapping):
            o, lb = info.get(ORG_FIELD), info.get(LABEL_FIELD)
            org = o.strip() or None if isinstance(o, str) else None
            label = lb.strip() or None if isinstance(lb, str) else None
        return self.managed(
            params.get("model"),
            params.get("api_key"),
            org=org,
            label=label,
            api_base=params.get("api_base"),
        )

    def _split(
        self, deployments: Iterable[Any], scope: Sequence[frozenset[str]] | None = None
    ) -> tuple[list[tuple[dict[str, Any], _Managed]], list[dict[str, Any]]]:
        """The Groq deployments the package governs (adopting their keys) and the others;
        `scope`: only those whose id one of these sets holds (see `_scope`)."""
        ours: list[tuple[dict[str, Any], _Managed]] = []
        others: list[dict[str, Any]] = []
        for d in deployments:
            if not isinstance(d, dict):
                continue
            if scope is not None and not _in(scope, d):
                others.append(d)
                continue
            m = self._of(d)
            if m is None:
                others.append(d)
            else:
                ours.append((d, m))
        return ours, others

    # -- which routers ---------------------------------------------------------------------

    def _govern(self, router: Any | None) -> None:
        """Govern `router`'s Groq deployments (`None`: every router's in the process)."""
        if router is None:
            self._everywhere = True
            return
        if self._everywhere is None:
            self._everywhere = False
        with self._lock:
            entry = self._routers.get(id(router))
            if entry is not None and entry[0]() is router:
                return
            # Routers gone are dropped here, never from a weakref callback (the collector may
            # run one in any thread, while `_scope` reads the dict); a new router may have the
            # id of one gone.
            live = {k: e for k, e in self._routers.items() if e[0]() is not None}
            live[id(router)] = (weakref.ref(router), None, frozenset())
            self._routers = live

    def _scope(self) -> list[frozenset[str]] | None:
        """The deployment ids of each governed router (`None`: every router is governed).

        LiteLLM hands a filter copies of the deployments and nothing about the router, so ids
        are what tells them apart; each router's are read again when its registry's version
        moves (`add_deployment`, `set_model_list`, `upsert_deployment`, deletions)."""
        if self._everywhere is not False:
            return None
        out: list[frozenset[str]] = []
        for key, (ref, seen, ids) in list(self._routers.items()):
            router = ref()
            if router is None:
                continue
            version = _registry_version(router)
            if version is None or version != seen:
                ids = frozenset(
                    ident
                    for d in _router_deployments(router)
                    if isinstance(d, Mapping) and (ident := _deployment_id(d)) is not None
                )
                # One assignment: a reader in another thread sees the old entry or the new.
                self._routers[key] = (ref, version, ids)
            out.append(ids)
        return out

    # -- choosing: model order, tokens, reservation ---------------------------------------

    def _request(
        self,
        group: str,
        ours: Sequence[tuple[dict[str, Any], _Managed]],
        request_kwargs: Mapping[str, Any],
        messages: Any,
    ) -> tuple[list[str], int, int | None, str | None, Mapping[str, Any], list[Any]]:
        """Model order, prompt estimate, completion budget and task type of one request."""
        msgs = messages if isinstance(messages, list) else request_kwargs.get("messages") or []
        md = _metadata(request_kwargs)
        params = {k: v for k, v in request_kwargs.items() if k in OUTPUT_PARAMS and v is not None}
        mt = params.get("max_completion_tokens", params.get("max_tokens"))
        max_tokens = int(mt) if isinstance(mt, int) and not isinstance(mt, bool) else None
        models = list(dict.fromkeys(m.model for _, m in ours))
        if len(models) > 1 or group in self.routed_groups:
            request = ChatRequest(
                messages=messages_tuple(msgs),
                params=params,
                agent_name=_hint(md, "agent_name", "ymera_agent_name"),
                task_type=_hint(md, "task_type", "ymera_task_type"),
                metadata=md,
            )
            router = self.engine.router
            profile = router.profile(request)
            plan = router.plan(request, profile)
            order = [m for m in plan.models if m in models] or models
            return order, profile.estimated_tokens, max_tokens, profile.task_type, md, msgs
        tools = params.get("tools")
        tokens = estimate_prompt_tokens(msgs, tools=tools if isinstance(tools, list) else None)
        return models, tokens, max_tokens, _hint(md, "task_type", "ymera_task_type"), md, msgs

    async def _acquire(
        self,
        order: Sequence[str],
        keys: Mapping[str, Sequence[ApiKey]],
        tokens: int,
        max_tokens: int | None,
        wait: float,
    ) -> tuple[Grant | None, float | None]:
        """On the portal: a grant on an organisation that one of `keys[model]` spends, for
        the first model in `order` with room now, else (within `wait`) the soonest one.

        Returns:
            `(grant, None)`, or `(None, seconds until the earliest room)` (`inf`: the request
            is too large for every model; `None`: unknown).
        """
        quota = self.engine.quota
        pool = quota.pool
        await pool.refresh()
        allowed = {
            m: {pool.organisation(k) for k in ks if not pool.is_disabled(k)}
            for m, ks in keys.items()
        }
        try:
            grant = await quota.acquire_first(
                order, tokens, max_tokens=max_tokens, wait=wait, orgs=allowed
            )
        except RequestTooLargeError:
            return None, math.inf
        except QuotaExhaustedError as exc:
            return None, exc.retry_after
        except NoUsableKeyError:
            return None, None
        return grant, None

    def _prepare(
        self,
        group: str,
        ours: Sequence[tuple[dict[str, Any], _Managed]],
        request_kwargs: Mapping[str, Any],
        messages: Any,
        *,
        may_wait: bool,
    ) -> tuple[Coroutine[Any, Any, tuple[Grant | None, float | None]], _Pick]:
        """Everything a pick computes before reserving (in the caller's thread)."""
        self._sweep()
        self._drop_current()
        try:
            order, tokens, max_tokens, task_type, md, msgs = self._request(
                group, ours, request_kwargs, messages
            )
        except ContextWindowError as exc:
            # LiteLLM's own type, so the router's `context_window_fallbacks` apply.
            raise ContextWindowExceededError(
                message=exc.message, model=group, llm_provider="groq"
            ) from exc
        keys: dict[str, list[ApiKey]] = {}
        for _, m in ours:
            keys.setdefault(m.model, []).append(m.key)
        wait = self.max_wait if may_wait else 0.0
        pick = _Pick(group, ours, md, msgs, task_type)
        return self._acquire(order, keys, tokens, max_tokens, wait), pick

    def _hold(
        self, pick: _Pick, grant: Grant | None, retry: float | None
    ) -> tuple[_Hold | None, list[dict[str, Any]], float | None]:
        """The reservation of a pick, made current in the caller's context, and the
        deployments it may use."""
        if grant is None:
            return None, [], retry
        pool = self.engine.quota.pool
        kept = [
            d
            for d, m in pick.ours
            if m.model == grant.model
            and pool.organisation(m.key) == grant.org
            and not pool.is_disabled(m.key)
        ]
        if not kept:  # its last key was disabled meanwhile
            self._spawn(self.engine.quota.release(grant))
            return None, [], None
        hold = _Hold(
            grant=grant,
            group=pick.group,
            started=time.perf_counter(),
            deadline=time.monotonic() + self.reservation_timeout,
            metadata=pick.metadata,
            messages=pick.messages,
            task_type=pick.task_type,
        )
        task = _current_task()
        with self._lock:
            self._holds[id(hold)] = hold
            if task is not None:
                # When the request's task ends (or is cancelled) before its call reported
                # back, the reservation goes back; one callback per task, however many calls.
                held = self._by_task.get(task)
                if held is None:
                    held = self._by_task[task] = set()
                    task.add_done_callback(self._task_done)
                held.add(hold)
                hold.task = weakref.ref(task)
        self._current.set(hold)
        return hold, kept, None

    async def _choose(
        self,
        group: str,
        ours: Sequence[tuple[dict[str, Any], _Managed]],
        request_kwargs: Mapping[str, Any],
        messages: Any,
        *,
        may_wait: bool,
    ) -> tuple[_Hold | None, list[dict[str, Any]], float | None]:
        """Reserve for one pick: the hold and the deployments it may use, or the retry time."""
        acquire, pick = self._prepare(group, ours, request_kwargs, messages, may_wait=may_wait)
        grant, retry = await self.engine.portal.arun(acquire)
        return self._hold(pick, grant, retry)

    def _choose_sync(
        self,
        group: str,
        ours: Sequence[tuple[dict[str, Any], _Managed]],
        request_kwargs: Mapping[str, Any],
        messages: Any,
        *,
        may_wait: bool,
    ) -> tuple[_Hold | None, list[dict[str, Any]], float | None]:
        """`_choose` for LiteLLM's sync pick (blocks this thread on the portal)."""
        acquire, pick = self._prepare(group, ours, request_kwargs, messages, may_wait=may_wait)
        grant, retry = self.engine.portal.run(acquire)
        return self._hold(pick, grant, retry)

    # -- LiteLLM routing hook -------------------------------------------------------------

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: Any,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[dict[str, Any]]:
        """Keep the deployments of the organisation that has room (reserving it), and every
        non-Groq deployment; raise `GroqCapacityError` when nothing is left."""
        if _IN_PICK.get():
            return healthy_deployments
        ours, others = self._split(healthy_deployments, self._scope())
        if not ours:
            return healthy_deployments
        hold, kept, retry = await self._choose(
            model, ours, request_kwargs or {}, messages, may_wait=not others
        )
        if hold is None:
            if others:
                return others
            raise GroqCapacityError(model, retry)
        return kept + others

    def pre_call_check(self, deployment: dict[str, Any]) -> dict[str, Any] | None:
        """The sync path's quota check (`router.completion`, `router.text_completion`).

        LiteLLM's sync pick runs no callback filter; it runs this check, in the caller's
        thread, on the deployment the router's own strategy picked, just before the call. For
        a Groq deployment it reserves on that deployment's organisation, waiting up to
        `max_wait` for room (the thread blocks, as a sync call does), and otherwise raises
        `GroqCapacityError`, which the router hands to its retries and fallbacks. The prompt
        comes from `attach`'s wrapper of the router's sync endpoints.
        """
        if self._closed or not isinstance(deployment, Mapping):
            return None
        scope = self._scope()
        if scope is not None and not _in(scope, deployment):
            return None  # a router this callback was not attached to
        m = self._of(deployment)
        if m is None:
            return None
        held = self._current.get()
        pool = self.engine.quota.pool
        if (
            held is not None
            and held.state == _RESERVED
            and held.grant.model == m.model
            and held.grant.org == pool.organisation(m.key)
        ):
            return None  # the package's own sync pick reserved for this deployment
        if self.engine.portal.in_portal():
            return None
        group = deployment.get("model_name")
        group = group if isinstance(group, str) else m.model
        request = _SYNC_REQUEST.get() or {}
        hold, _, retry = self._choose_sync(
            group, [(deployment, m)], request, request.get("messages"), may_wait=True
        )
        if hold is None:
            raise GroqCapacityError(group, retry)
        return None

    # -- binding a reservation to its call ------------------------------------------------

    def _bind(self, kwargs: Mapping[str, Any]) -> Coroutine[Any, Any, None] | None:
        """Tie this task's reservation to the attempt LiteLLM is about to make, or give it
        back when the attempt goes to a deployment it was not made for."""
        hold = self._current.get()
        if hold is None or hold.state != _RESERVED:
            return None
        call_id = kwargs.get("litellm_call_id")
        # Recognise only: an attempt is never a reason to adopt a key (a router this callback
        # does not govern may be making it).
        m = self.managed(kwargs.get("model"), kwargs.get("api_key"), adopt=False)
        pool = self.engine.quota.pool
        fits = (
            m is not None
            and isinstance(call_id, str)
            and m.model == hold.grant.model
            and pool.organisation(m.key) == hold.grant.org
        )
        with self._lock:
            if hold.state != _RESERVED:
                return None
            if not fits:
                self._finish_locked(hold)
            else:
                assert m is not None and isinstance(call_id, str)
                hold.grant = dataclasses.replace(hold.grant, key=m.key)
                hold.state = _BOUND
                hold.call_id = call_id
                hold.stream = bool(kwargs.get("stream"))
                self._bound[call_id] = hold
        if not fits:
            return self.engine.quota.release(hold.grant)
        return None

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        release = self._bind(kwargs)
        if release is not None:
            await self.engine.portal.arun(release)
        return None

    def _finish_locked(self, hold: _Hold) -> bool:
        """Mark a hold resolved (with `_lock` held); whether it was still live."""
        if hold.state == _DONE:
            return False
        hold.state = _DONE
        self._holds.pop(id(hold), None)
        if hold.call_id is not None and self._bound.get(hold.call_id) is hold:
            del self._bound[hold.call_id]
        task = hold.task() if hold.task is not None else None
        if task is not None:
            held = self._by_task.get(task)
            if held is not None:
                held.discard(hold)
        return True

    def _take(self, call_id: Any) -> _Hold | None:
        """The live reservation bound to a call id, now resolved by the caller."""
        if not isinstance(call_id, str):
            return None
        with self._lock:
            hold = self._bound.get(call_id)
            if hold is None or not self._finish_locked(hold):
                return None
            return hold

    def _drop_current(self) -> None:
        """A new pick in this context: what the previous one left unresolved goes back.

        A reservation never bound (its pick's deployment was not called) goes back now. One
        whose call finished without a report yet (LiteLLM's sync path reports success from a
        logging thread, a moment later, and failed attempts only at the end of the request)
        goes back after `SETTLE_GRACE` seconds unless the report arrives first. A stream may
        still be being read, so it stays.
        """
        hold = self._current.get()
        if hold is not None:
            if hold.state == _RESERVED:
                self._release_soon(hold)
            elif hold.state == _BOUND and not hold.stream:
                loop = self.engine.portal.loop
                loop.call_soon_threadsafe(loop.call_later, SETTLE_GRACE, self._release_soon, hold)
        self._current.set(None)

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        """LiteLLM's sync path has no deployment hook: bind the sync pick's reservation here."""
        if self._current.get() is None or not isinstance(kwargs, Mapping):
            return
        name = kwargs.get("model")
        if isinstance(name, str) and kwargs.get("custom_llm_provider") == "groq":
            name = PROVIDER_PREFIX + name.removeprefix(PROVIDER_PREFIX)
        release = self._bind({**kwargs, "model": name})
        if release is not None:
            self._spawn(release)

    # -- outcomes -------------------------------------------------------------------------

    async def _settle(self, hold: _Hold, response: Any) -> None:
        grant = hold.grant
        usage = _usage_of(response)
        headers = _headers_of(response)
        rl = parse_rate_limits(headers) if headers else None
        await self.engine.quota.settle(grant, usage, rl)
        tokens = usage.total_tokens if usage is not None else 0
        with self._lock:
            row = self._accounting.setdefault((grant.org, grant.model), [0, 0, 0])
            row[0] += 1
            if usage is not None:
                row[1] += usage.prompt_tokens
                row[2] += usage.completion_tokens
            self._reserved[0] += 1
            self._reserved[1] += grant.reserved_tokens
        latency = (time.perf_counter() - hold.started) * 1000
        stats = self.engine.stats
        with stats.lock:
            stats.requests += 1
            stats.succeeded += 1
            stats.upstream_calls += 1
            stats.by_model[grant.model] += 1
            stats.tokens_by_model[grant.model] += tokens
            stats.by_key[grant.key.label] += 1
            stats.latencies_ms.append(latency)
        self._learn(hold, True, latency, tokens, None)

    async def _fail(self, hold: _Hold, exception: BaseException) -> None:
        status, rl, message = _failure_facts(exception)
        await self.engine.quota.report_failure(
            hold.grant, status=status, rate_limits=rl, message=message
        )
        served = self.engine.served
        if served is not None and _not_served(status, message):
            # Remembered for the fleet: that organisation's deployments of the model are
            # filtered out until a listing says it is served again.
            await served.mark(hold.grant.org, hold.grant.model)
        latency = (time.perf_counter() - hold.started) * 1000
        stats = self.engine.stats
        with stats.lock:
            stats.requests += 1
            stats.failed += 1
            stats.upstream_calls += 1
            stats.errors[type(exception).__name__] += 1
            if status in (413, 429):
                stats.rate_limited_received += 1
        self._learn(hold, False, latency, 0, type(exception).__name__)

    def _learn(
        self, hold: _Hold, success: bool, latency_ms: float, tokens: int, error: str | None
    ) -> None:
        learner = self.engine.learner
        if learner is None:
            return
        agent = _hint(hold.metadata, "agent_name", "ymera_agent_name")

        async def record() -> None:
            task_type = hold.task_type
            if task_type is None:
                # Off the request's path: the profile only labels the evidence.
                request = ChatRequest(
                    messages=messages_tuple(hold.messages), agent_name=agent, metadata=hold.metadata
                )
                task_type = self.engine.router.profile(request).task_type
            await learner.record(
                Execution(
                    agent_name=agent or "*",
                    task_type=task_type,
                    model=hold.grant.model,
                    success=success,
                    latency_ms=latency_ms,
                    tokens=tokens,
                    timestamp=self.engine.clock(),
                    execution_id=hold.call_id or hold.grant.reservation_id,
                    error=error,
                )
            )

        self._spawn(record())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run accounting on the portal without making the caller wait for it."""
        if self._closed:
            # LiteLLM may call back after the engine closed (its logging runs as tasks).
            coro.close()
            return
        portal = self.engine.portal
        # On the portal already (settling spawns learning): no thread hop needed.
        fut: Any = portal.loop.create_task(coro) if portal.in_portal() else portal.submit(coro)
        with self._lock:
            self._background.add(fut)
        fut.add_done_callback(self._background_done)

    def _background_done(self, fut: Any) -> None:
        with self._lock:
            self._background.discard(fut)
        if not fut.cancelled() and (exc := fut.exception()) is not None:
            logger.warning("LiteLLM accounting task failed: %s: %s", type(exc).__name__, exc)

    def _release_soon(self, hold: _Hold) -> None:
        with self._lock:
            if not self._finish_locked(hold):
                return
        self._spawn(self.engine.quota.release(hold.grant))

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        with self._lock:
            held = self._by_task.pop(task, set())
            # A bound stream outlives the task that opened it; its end reports through the
            # success/failure events (or the timeout sweep).
            orphans = [
                h for h in held if h.state == _RESERVED or (h.state == _BOUND and not h.stream)
            ]
        for hold in orphans:
            self._release_soon(hold)

    def _sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        with self._lock:
            stale = [h for h in self._holds.values() if h.deadline <= now]
        for hold in stale:
            logger.warning(
                "Releasing a Groq reservation on %s (%s) whose call never reported back",
                hold.grant.model,
                hold.grant.key.label,
            )
            self._release_soon(hold)

    # -- LiteLLM success / failure hooks --------------------------------------------------

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: Any
    ) -> Any:
        # A non-streaming answer is settled at once (its completion tokens count from now);
        # a stream is settled by the success event once it has been read to the end.
        if request_data.get("stream") or _usage_of(response) is None:
            return None
        hold = self._take(request_data.get("litellm_call_id"))
        if hold is not None:
            # The answer is the caller's already; the ledger follows a moment later.
            self._spawn(self._settle(hold, response))
        return None

    async def async_post_call_failure_deployment_hook(
        self,
        request_data: Mapping[str, Any],
        exception: Exception,
        call_type: Any,
        fallback_depth: int | None = None,
    ) -> None:
        hold = self._take(request_data.get("litellm_call_id"))
        if hold is not None:
            await self.engine.portal.arun(self._fail(hold, exception))

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        hold = self._take(kwargs.get("litellm_call_id"))
        if hold is not None:
            await self.engine.portal.arun(self._settle(hold, response_obj))

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        hold = self._take(kwargs.get("litellm_call_id"))
        if hold is not None:
            exc = kwargs.get("exception")
            error = exc if isinstance(exc, BaseException) else RuntimeError("LiteLLM call failed")
            await self.engine.portal.arun(self._fail(hold, error))

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        hold = self._take(kwargs.get("litellm_call_id"))
        if hold is not None:
            self._spawn(self._settle(hold, response_obj))

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        hold = self._take(kwargs.get("litellm_call_id"))
        if hold is not None:
            exc = kwargs.get("exception")
            error = exc if isinstance(exc, BaseException) else RuntimeError("LiteLLM call failed")
            self._spawn(self._fail(hold, error))

    # -- lifecycle ------------------------------------------------------------------------

    def accounting(self) -> dict[tuple[str, str], dict[str, int]]:
        """What this callback settled, per (organisation, model): `requests`,
        `prompt_tokens`, `completion_tokens` (as Groq reported them)."""
        with self._lock:
            return {
                pair: {"requests": r, "prompt_tokens": p, "completion_tokens": c}
                for pair, (r, p, c) in self._accounting.items()
            }

    def reservation_use(self) -> dict[str, int]:
        """How much the settled calls' reservations held against what Groq counted:
        `settled` calls, `reserved_tokens` (held from the pick to the answer),
        `prompt_tokens` and `completion_tokens` (Groq's usage of the same calls)."""
        with self._lock:
            prompt = sum(r[1] for r in self._accounting.values())
            completion = sum(r[2] for r in self._accounting.values())
            return {
                "settled": self._reserved[0],
                "reserved_tokens": self._reserved[1],
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }

    @property
    def live_reservations(self) -> int:
        """Reservations made by picks and not yet settled, reported or released."""
        with self._lock:
            return len(self._holds)

    async def aflush(self) -> None:
        """Wait for background accounting (settlements, releases, learning) to finish."""
        await self.engine.portal.arun(self._drain())

    async def _drain(self) -> None:
        while True:
            with self._lock:
                pending = list(self._background)
            if not pending:
                return
            waits = [
                f if isinstance(f, asyncio.Future) else asyncio.wrap_future(f) for f in pending
            ]
            await asyncio.gather(*waits, return_exceptions=True)

    async def _on_engine_close(self) -> None:
        # Runs on the portal before the engine's parts close: stop taking callbacks, give
        # back what picks still hold, and let the accounting already started finish.
        self.detach()
        await self._drain()
        self._closed = True

    def detach(self) -> None:
        """Take the callback out of `litellm.callbacks` and give back every live reservation.

        A router given the strategy keeps it; build a new router to drop it.
        """
        _detach(self)
        with self._lock:
            holds = list(self._holds.values())
        for hold in holds:
            self._release_soon(hold)


def _in(scope: Sequence[frozenset[str]], deployment: Mapping[str, Any]) -> bool:
    ident = _deployment_id(deployment)
    return ident is not None and any(ident in ids for ids in scope)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


# -- one callback per engine ---------------------------------------------------------------

_ATTACHED: dict[int, YmeraLiteLLM] = {}
_ATTACH_LOCK = threading.Lock()


def _register(
    engine: Engine,
    *,
    routed_groups: Sequence[str] = DEFAULT_ROUTED_GROUPS,
    max_wait: float | None = None,
    reservation_timeout: float | None = None,
) -> YmeraLiteLLM:
    """The engine's callback, created once and put in `litellm.callbacks`."""
    engine.start()
    with _ATTACH_LOCK:
        ymera = _ATTACHED.get(id(engine))
        if ymera is None or ymera.engine is not engine:
            ymera = YmeraLiteLLM(
                engine,
                routed_groups=routed_groups,
                max_wait=max_wait,
                reservation_timeout=reservation_timeout,
            )
            _ATTACHED[id(engine)] = ymera
        else:
            ymera.routed_groups = ymera.routed_groups | frozenset(routed_groups)
        if ymera not in litellm.callbacks:
            litellm.logging_callback_manager.add_litellm_callback(ymera)
    return ymera


def _detach(ymera: YmeraLiteLLM) -> None:
    with _ATTACH_LOCK:
        if _ATTACHED.get(id(ymera.engine)) is ymera:
            del _ATTACHED[id(ymera.engine)]
        for name in (
            "callbacks",
            "success_callback",
            "failure_callback",
            "_async_success_callback",
            "_async_failure_callback",
            "input_callback",
        ):
            lst = getattr(litellm, name, None)
            if isinstance(lst, list):
                while ymera in lst:
                    lst.remove(ymera)
