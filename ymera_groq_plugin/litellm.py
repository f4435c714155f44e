"""LiteLLM: one line gives an existing `Router` quota-aware, learning Groq routing.

```python
from litellm import Router
from ymera_groq_plugin.litellm import attach, model_list_from_settings

router = Router(model_list=model_list_from_settings(), routing_strategy="usage-based-routing-v2")
attach(router)                 # quota filter + accounting callback; your strategy still picks
# attach(router, strategy=True)  # or: the package picks the key (and, for "groq-auto", the model)
# Router(model_list=..., plugins=[YmeraRoutingPlugin()])  # or: in the constructor (async only)
```

Any model list works: the router's own `groq/` deployments are adopted with their keys (literal,
`os.environ/NAME`, or `GROQ_API_KEY`) and organisations (`model_info["groq_org"]`, else learnt).

How it plugs into LiteLLM 1.110 (read from its source, `litellm/router_rust/`; see
`docs/litellm.md`):

- `Router` cannot be subclassed. Every `CustomLogger` in `litellm.callbacks` that overrides
  `async_filter_deployments` runs in the router's `callback_filters` stage, after cooldowns and
  before the routing strategy picks, on every attempt (retries and fallback hops included). The
  filter here reserves quota on the organisation with most headroom and keeps only that
  organisation's deployments (plus any non-Groq ones), so it composes with whichever
  `routing_strategy` the router names.
- LiteLLM's sync path (`router.completion`) runs no callback filter; it runs each routing
  callback's `pre_call_check(deployment)` on the deployment its strategy picked, in the caller's
  thread. The callback reserves there, on that deployment's organisation, waiting for room.
- `router.register_plugin(strategy)` replaces the pick entirely, and with it LiteLLM's own
  cooldown filtering; `YmeraRoutingStrategy` asks `router.select(model, kind="healthy")` for the
  deployments that are not cooling down (that call also runs the callback filters).
- When nothing has room, the filter or strategy raises `GroqCapacityError`, a
  `RouterRateLimitError` ("No deployments available … Try again in N seconds") with
  `num_retries = 0`: the router skips its retries and goes straight to its own `fallbacks`
  (including cross-provider ones).
- The reservation made at pick time is tied to the call it paid for: the pick stores it in a
  context variable of the request's task; `async_pre_call_deployment_hook` (which sees the chosen
  deployment and the attempt's `litellm_call_id`) binds it to that id, and the success/failure
  hooks settle or report exactly that reservation. A reservation that is never bound or never
  resolved (the request was cancelled, a stream was abandoned) is released when the request's
  task ends or, at the latest, after `reservation_timeout`.
- Response headers (`x-ratelimit-*`) arrive in `response._hidden_params["additional_headers"]`;
  failure headers in the exception's `litellm_response_headers`.

Only importing this module imports LiteLLM; `import ymera_groq_plugin` does not.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import hashlib
import logging
import math
import random
import threading
import time
import warnings
import weakref
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

try:
    import litellm
    from litellm.exceptions import APIConnectionError, ContextWindowExceededError, Timeout
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.secret_managers.main import get_secret_str
    from litellm.types.router import (
        CustomRoutingStrategyBase,
        RouterRateLimitError,
        RoutingContext,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ymera_groq_plugin.litellm needs LiteLLM: install `ymera-groq-plugin[litellm]`"
    ) from exc

from pydantic import SecretStr, ValidationError

from ._litellm_cache import TieredLiteLLMCache, litellm_cache
from .catalog import Catalog, load_catalog
from .config import ApiKey, YmeraSettings
from .engine import Engine
from .errors import (
    ContextWindowError,
    NoUsableKeyError,
    QuotaExhaustedError,
    RequestTooLargeError,
    UnknownModelError,
)
from .headers import parse_rate_limits
from .tokens import estimate_prompt_tokens
from .types import OUTPUT_PARAMS, ChatRequest, Execution, RateLimits, Usage, messages_tuple

if TYPE_CHECKING:
    from litellm.router import Router

    from .quota import Grant

__all__ = [
    # building a model list
    "model_list_from_settings",
    # attaching to a Router
    "attach",
    "YmeraLiteLLM",
    "YmeraRoutingStrategy",
    "YmeraRoutingPlugin",
    "GroqCapacityError",
    # the cache
    "TieredLiteLLMCache",
    "litellm_cache",
]

logger = logging.getLogger(__name__)

PROVIDER_PREFIX = "groq/"
"""LiteLLM's provider prefix for Groq models (`groq/openai/gpt-oss-20b`)."""

DEFAULT_ROUTED_GROUPS: tuple[str, ...] = ("groq-auto",)

ID_SEP = "@"
"""Joins group, model and key label in deployment ids (never `:`: usage-based routing splits
on it)."""

_RESERVED, _BOUND, _DONE = "reserved", "bound", "done"

SETTLE_GRACE = 2.0
"""Seconds a finished call's reservation waits for LiteLLM's success event before it is
released (the sync path reports from a logging thread)."""

_IN_PICK: contextvars.ContextVar[bool] = contextvars.ContextVar("ymera_litellm_pick", default=False)
"""Set while the strategy asks the router for healthy deployments (our filter stands aside)."""

ORG_FIELD = "groq_org"
"""`model_info` field naming a deployment's Groq organisation (keys of one organisation share
one budget); without it the organisation is learnt from Groq's headers and 429 texts."""

LABEL_FIELD = "groq_key_label"
"""`model_info` field naming a deployment's key in logs and metrics; default: `lk-` and the first
8 hex digits of the key's SHA-256 (stable across processes, never the key)."""

_SYNC_REQUEST: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "ymera_litellm_sync_request", default=None
)
"""The request of the sync router call running in this thread (set by `attach`'s wrappers of
`router.completion` / `router.text_completion`): the sync pre-call check sees only the
deployment, and needs the prompt to reserve its tokens."""

_SYNC_ENDPOINTS = ("completion", "text_completion")


# -- the model list ------------------------------------------------------------------------


def model_list_from_settings(
    settings: YmeraSettings | None = None,
    *,
    catalog: Catalog | None = None,
    models: Sequence[str] | None = None,
    api_base: str | None = None,
    routed_groups: Sequence[str] = DEFAULT_ROUTED_GROUPS,
) -> list[dict[str, Any]]:
    """A `Router` `model_list`: one deployment per (served Groq model × configured key).

    Each model is a model group named by its Groq id (`openai/gpt-oss-20b`); each routed group
    (`groq-auto` by default) holds a deployment for every (model × key), so the package picks
    the model as well as the key there. Deployment ids are `<model>@<key label>` (and
    `<group>@<model>@<key label>`): the label, never the key, and no `:` (LiteLLM's
    `usage-based-routing-v2` splits its counter keys on `:`). `model_info` carries the
    context window (`max_input_tokens`) so LiteLLM's `enable_pre_call_checks` and
    `context_window_fallbacks` know it. No `rpm`/`tpm` is set on the deployments: the
    package's quota already counts the traffic (see `docs/litellm.md`).

    Args:
        settings: Keys and base URL; default: from the environment.
        catalog: The model catalog; default: the settings' one.
        models: Model ids or aliases to include; default: every served model.
        api_base: The OpenAI-style base URL; default: `settings.base_url + "/openai/v1"`.
        routed_groups: Names of the groups spanning every model; `()` for none.

    Returns:
        The model list. It holds the keys in `litellm_params["api_key"]` (LiteLLM needs them):
        do not log it.

    Raises:
        NoUsableKeyError: No key is configured.
        UnknownModelError: A name in `models` is not in the catalog.
    """
    settings = settings if settings is not None else YmeraSettings()
    if not settings.api_keys:
        raise NoUsableKeyError(
            "No Groq API key is configured: set GROQ_API_KEY (and GROQ_API_KEY_2, …) or pass "
            "api_keys=[…]."
        )
    catalog = catalog or load_catalog(
        settings.catalog_path, serve_successor=settings.serve_successor
    )
    infos = [catalog.resolve(m).model for m in models] if models else catalog.served()
    base = api_base or settings.base_url.rstrip("/") + "/openai/v1"

    def entry(group: str, model_id: str, key: ApiKey, ident: str) -> dict[str, Any]:
        info = catalog.get(model_id)
        return {
            "model_name": group,
            "litellm_params": {
                "model": PROVIDER_PREFIX + model_id,
                "api_key": key.secret.get_secret_value(),
                "api_base": base,
            },
            "model_info": {
                "id": ident,
                "max_input_tokens": info.context_window,
                "max_output_tokens": info.max_completion_tokens,
            },
        }

    out = [
        entry(info.id, info.id, key, f"{info.id}{ID_SEP}{key.label}")
        for info in infos
        for key in settings.api_keys
    ]
    for group in routed_groups:
        out += [
            entry(group, info.id, key, f"{group}{ID_SEP}{info.id}{ID_SEP}{key.label}")
            for info in infos
            for key in settings.api_keys
        ]
    return out


# -- the signal the router understands -----------------------------------------------------


class GroqCapacityError(RouterRateLimitError):
    """No Groq key has room for the request now: the router's own fallbacks take over.

    A `litellm.types.router.RouterRateLimitError` (LiteLLM's "No deployments available …
    Try again in N seconds"), so the router treats it as it treats its own: with
    `num_retries = 0` it skips the retries and moves to the group's `fallbacks`.

    Attributes:
        retry_after: Seconds until the earliest Groq key is expected to have room (`None` if
            unknown).
    """

    def __init__(self, model: str, retry_after: float | None) -> None:
        if retry_after is not None and not math.isfinite(retry_after):
            retry_after = None
        cooldown = round(retry_after, 3) if retry_after is not None else 0.0
        super().__init__(model, cooldown, False, [])
        self.retry_after = retry_after
        # Read by the router core (`attempt_failure`): no retry inside the group.
        self.num_retries = 0


# -- deployments ---------------------------------------------------------------------------


class _Managed(NamedTuple):
    """A deployment the package shapes: a Groq model on one of its keys."""

    model: str
    key: ApiKey


@dataclasses.dataclass(slots=True, eq=False)
class _Hold:
    """One reservation, from the pick to the outcome of the call it paid for."""

    grant: Grant
    group: str
    started: float
    deadline: float
    metadata: Mapping[str, Any]
    messages: Sequence[Mapping[str, Any]]
    task_type: str | None = None
    state: str = _RESERVED
    call_id: str | None = None
    stream: bool = False
    task: weakref.ref[asyncio.Task[Any]] | None = None


class _Pick(NamedTuple):
    """What a pick knows about its request before it reserves."""

    group: str
    ours: Sequence[tuple[dict[str, Any], _Managed]]
    metadata: Mapping[str, Any]
    messages: Sequence[Mapping[str, Any]]
    task_type: str | None


def _resolve_secret(api_key: str | None) -> str | None:
    """A deployment's key as LiteLLM resolves it for a `groq/` call: `os.environ/NAME` through
    its secret reader, and `GROQ_API_KEY` when the deployment names none."""
    if api_key is None:
        return get_secret_str("GROQ_API_KEY")
    if api_key.startswith("os.environ/"):
        return get_secret_str(api_key)
    return api_key or None


def _deployment_id(deployment: Mapping[str, Any]) -> str | None:
    info = deployment.get("model_info")
    ident = info.get("id") if isinstance(info, Mapping) else None
    return ident if isinstance(ident, str) else None


def _metadata(request_kwargs: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not request_kwargs:
        return {}
    for name in ("metadata", "litellm_metadata"):
        md = request_kwargs.get(name)
        if isinstance(md, Mapping):
            return md
    return {}


def _hint(md: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = md.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _headers_of(obj: Any) -> Mapping[str, Any] | None:
    hidden = getattr(obj, "_hidden_params", None)
    if isinstance(hidden, Mapping):
        headers = hidden.get("additional_headers")
        if isinstance(headers, Mapping):
            return headers
    return None


def _usage_of(response: Any) -> Usage | None:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    if hasattr(usage, "model_dump"):
        usage = usage.model_dump()
    return Usage.from_openai(usage) if isinstance(usage, Mapping) else None


def _failure_facts(exception: BaseException) -> tuple[int | None, RateLimits, str]:
    """Status, rate limits and message of a failed attempt, in Groq's terms."""
    message = str(exception)
    status = getattr(exception, "status_code", None)
    if not isinstance(status, int) or isinstance(status, bool):
        status = None
    if isinstance(exception, Timeout | APIConnectionError):
        status = None  # no answer: the call may have reached Groq
    elif status == 429 and "Request too large" in message:
        status = 413  # LiteLLM maps Groq's 413 "request too large" to a 429
    headers = getattr(exception, "litellm_response_headers", None)
    if not isinstance(headers, Mapping):
        response = getattr(exception, "response", None)
        headers = getattr(response, "headers", None)
    rl = parse_rate_limits(headers if isinstance(headers, Mapping) else None, message)
    return status, rl, message


def _not_served(status: int | None, message: str) -> bool:
    """Whether a failure is Groq's 404 `model_not_found` or `model_decommissioned`."""
    if "model_decommissioned" in message or "has been decommissioned" in message:
        return True
    return status == 404 and (
        "model_not_found" in message or "does not exist or you do not have access" in message
    )


# -- the callback --------------------------------------------------------------------------


class YmeraLiteLLM(CustomLogger):
    """The package inside LiteLLM: a quota filter and the accounting callback.

    Registered once per engine in `litellm.callbacks` (LiteLLM reads its routing callbacks
    from that process-wide list). It touches only Groq deployments (`groq/<catalog model>` with
    a key; keys the engine's settings lack are adopted, see `managed`); others pass through
    untouched.

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
        self._background: set[Any] = set()
        self._accounting: dict[tuple[str, str], list[int]] = {}
        self._reserved = [0, 0]  # settled calls, tokens their reservations held

    def __repr__(self) -> str:
        with self._lock:
            live = len(self._holds)
        return f"<YmeraLiteLLM {len(self._keys)} keys, {live} reservations live, {self.engine!r}>"

    # -- recognising deployments ----------------------------------------------------------

    def managed(
        self, model: Any, api_key: Any, *, org: str | None = None, label: str | None = None
    ) -> _Managed | None:
        """Whether a deployment (its `litellm_params` `model` and `api_key`) is ours.

        Every `groq/<catalog model>` deployment is: its key is resolved as LiteLLM resolves it
        (a literal, `os.environ/NAME`, or `GROQ_API_KEY` when the deployment names none) and,
        when the engine's settings do not list it, adopted into the engine's key pool under
        `label` (or a hash-derived one) with organisation `org` (or its own until Groq's
        headers or 429 texts show it shares one).
        """
        if not isinstance(model, str) or not (api_key is None or isinstance(api_key, str)):
            return None
        if not model.startswith(PROVIDER_PREFIX):
            return None
        # Resolved first, so an environment variable set later is seen (a literal costs nothing).
        secret = _resolve_secret(api_key)
        memo = (model, secret, org, label)
        found = self._managed.get(memo, self)
        if found is not self:
            return found  # type: ignore[return-value]
        result: _Managed | None = None
        key = self._key_for(secret, org, label) if secret else None
        if key is not None:
            try:
                info = self.engine.catalog.get(model.removeprefix(PROVIDER_PREFIX))
                result = _Managed(info.id, key)
            except UnknownModelError:
                result = None
        if len(self._managed) > 4096:
            self._managed.clear()
        self._managed[memo] = result
        return result

    def _key_for(self, secret: str, org: str | None, label: str | None) -> ApiKey | None:
        """The pool's key with this secret, adopting it first when the pool lacks it."""
        key = self._keys.get(secret)
        if key is not None:
            return key
        pool = self.engine.quota.pool
        digest = "lk-" + hashlib.sha256(secret.encode()).hexdigest()[:8]
        for name in dict.fromkeys((label or digest, digest)):
            try:
                candidate = ApiKey(secret=SecretStr(secret), label=name, org=org or None)
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
        logger.info(
            "Governing the router's Groq key %s (%s), organisation %s",
            key.label,
            key.masked,
            key.org or "not given (learnt from Groq's answers)",
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
        return self.managed(params.get("model"), params.get("api_key"), org=org, label=label)

    def _split(
        self, deployments: Iterable[Any]
    ) -> tuple[list[tuple[dict[str, Any], _Managed]], list[dict[str, Any]]]:
        ours: list[tuple[dict[str, Any], _Managed]] = []
        others: list[dict[str, Any]] = []
        for d in deployments:
            if not isinstance(d, dict):
                continue
            m = self._of(d)
            if m is None:
                others.append(d)
            else:
                ours.append((d, m))
        return ours, others

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
        ours, others = self._split(healthy_deployments)
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
        m = self.managed(kwargs.get("model"), kwargs.get("api_key"))
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


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


# -- the strategy --------------------------------------------------------------------------


class YmeraRoutingStrategy(CustomRoutingStrategyBase):
    """A routing strategy for `router.register_plugin`: the package picks every deployment.

    For a Groq group it picks the key whose organisation has room, reserving the estimated
    prompt tokens; for a routed group (`groq-auto`) or a group spanning several Groq models it
    profiles the request and picks the model too, with the engine's plan and learner. Groups
    without Groq deployments of its keys get a weighted random pick.

    A registered strategy bypasses LiteLLM's own filtering, so it asks for the deployments a
    pick may use itself: with `healthy="select"` (the default) through
    `router.select(model, kind="healthy")`, which applies everything LiteLLM would (cooldowns,
    paused deployments, tags, teams, pre-call checks, other callbacks' filters); with
    `healthy="cooldowns"` from the registry minus the deployments cooling down, about 190 µs
    cheaper per pick and enough for a model list of plain Groq (and other provider)
    deployments. The sync pick always uses the cooldown store (`select` is async).

    Args:
        router: The router it is registered on.
        ymera: The callback of the same engine (it settles what the strategy reserves).
        healthy: `"select"` or `"cooldowns"` (see above).
        rng: Randomness for non-Groq groups.
    """

    def __init__(
        self,
        router: Router,
        ymera: YmeraLiteLLM,
        *,
        healthy: Literal["select", "cooldowns"] = "select",
        rng: random.Random | None = None,
    ) -> None:
        if healthy not in ("select", "cooldowns"):
            raise ValueError(f"healthy must be 'select' or 'cooldowns', got {healthy!r}")
        self.healthy = healthy
        self._router = weakref.ref(router)
        self.ymera = ymera
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return f"<YmeraRoutingStrategy {self.ymera!r}>"

    @staticmethod
    def _deployments(router: Any, model: str) -> list[dict[str, Any]]:
        return [d for d in router.registry().deployments(model) if isinstance(d, dict)]

    def _router_or_fail(self) -> Any:
        router = self._router()
        if router is None:
            raise RuntimeError("the router this strategy was registered on is gone")
        return router

    def _weighted(self, deployments: Sequence[dict[str, Any]]) -> dict[str, Any]:
        weights = []
        for d in deployments:
            w = (d.get("litellm_params") or {}).get("weight")
            weights.append(float(w) if isinstance(w, int | float) and w > 0 else 1.0)
        return self._rng.choices(list(deployments), weights=weights)[0]

    def _pick(self, hold: _Hold, kept: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The deployment of the reserved key (or another key of its organisation)."""
        label = hold.grant.key.label
        for d in kept:
            m = self.ymera._of(d)
            if m is not None and m.key.label == label:
                return d
        return kept[0]

    async def async_get_available_deployment(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        router = self._router_or_fail()
        if self.healthy == "cooldowns" and not specific_deployment:
            deployments = self._deployments(router, model)
            ids = [i for d in deployments if (i := _deployment_id(d)) is not None]
            cooling = await router.health().cooldowns.async_get_active_cooldowns(ids, None)
            return await self._choose_among(
                model, _without(deployments, cooling), request_kwargs or {}, messages
            )
        request: dict[str, Any] = dict(request_kwargs or {})
        token = _IN_PICK.set(True)
        try:
            healthy = await router.select(
                model, request, kind="healthy", specific_deployment=specific_deployment
            )
        finally:
            _IN_PICK.reset(token)
        if isinstance(healthy, Mapping):
            return dict(healthy)  # a deployment named by its id
        return await self._choose_among(model, list(healthy), request_kwargs or {}, messages)

    async def _choose_among(
        self,
        model: str,
        healthy: list[Any],
        request_kwargs: Mapping[str, Any],
        messages: Any,
    ) -> dict[str, Any]:
        ours, others = self.ymera._split(healthy)
        if not ours:
            return self._other(model, others, None)
        hold, kept, retry = await self.ymera._choose(
            model, ours, request_kwargs, messages, may_wait=not others
        )
        return self._pick(hold, kept) if hold is not None else self._other(model, others, retry)

    def _other(
        self, model: str, others: Sequence[dict[str, Any]], retry: float | None
    ) -> dict[str, Any]:
        """A non-Groq deployment of the group, or the signal that none is left."""
        if not others:
            raise GroqCapacityError(model, retry)
        return self._weighted(others)

    def get_available_deployment(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        router = self._router_or_fail()
        deployments = self._deployments(router, model)
        ids = [i for d in deployments if (i := _deployment_id(d)) is not None]
        healthy = _without(deployments, router.health().cooldowns.get_active_cooldowns(ids, None))
        if self.ymera.engine.portal.in_portal():
            raise RuntimeError("the sync pick cannot run on the engine's own loop")
        ours, others = self.ymera._split(healthy)
        if not ours:
            return self._other(model, others, None)
        hold, kept, retry = self.ymera._choose_sync(
            model, ours, request_kwargs or {}, messages, may_wait=not others
        )
        return self._pick(hold, kept) if hold is not None else self._other(model, others, retry)


def _without(deployments: list[dict[str, Any]], cooling: Iterable[Any]) -> list[dict[str, Any]]:
    """The deployments not in LiteLLM's cooldown list (`(id, info)` pairs)."""
    cool = {entry[0] for entry in cooling}
    return [d for d in deployments if _deployment_id(d) not in cool]


# -- attaching ------------------------------------------------------------------------------

_ATTACHED: dict[int, YmeraLiteLLM] = {}
_ATTACH_LOCK = threading.Lock()


def attach(
    router: Router,
    *,
    settings: YmeraSettings | None = None,
    engine: Engine | None = None,
    strategy: bool = False,
    routed_groups: Sequence[str] = DEFAULT_ROUTED_GROUPS,
    max_wait: float | None = None,
    reservation_timeout: float | None = None,
    healthy: Literal["select", "cooldowns"] = "select",
) -> YmeraLiteLLM:
    """Give an existing `Router` the package's quota, routing, learning and accounting.

    Args:
        router: The router; its `routing_strategy`, `fallbacks`, retries and cooldowns stay.
        settings: The configuration; default: the environment (ignored when `engine` is given).
        engine: The engine to share (with `ChatYmeraGroq` and other routers); default:
            `Engine.shared(settings)`.
        strategy: `False`: a filter runs before the router's own strategy (which still picks
            among the keys left); `True`: the package picks (`register_plugin`).
        routed_groups: Groups whose model the package chooses by the request's profile.
        max_wait: Seconds a pick may wait for room; default: `settings.max_wait`.
        reservation_timeout: See `YmeraLiteLLM`.
        healthy: How the strategy learns which deployments it may pick (see
            `YmeraRoutingStrategy`); only with `strategy=True`.

    The router's own Groq deployments are adopted as they are: every `groq/<model>` deployment
    (a model the catalog knows) with its key from `litellm_params.api_key` (a literal,
    `os.environ/NAME`, or LiteLLM's `GROQ_API_KEY` default), its organisation from
    `model_info["groq_org"]` when given, otherwise learnt from Groq's answers. Deployments added
    later (`add_deployment`, `set_model_list`) are adopted the first time a pick sees them.

    Both paths are governed: the async one by the callback filter (or the strategy), the sync
    one (`router.completion`, `router.text_completion`) by a pre-call check on the deployment
    the router's strategy picked; `attach` wraps those two sync methods of this router so the
    check knows the prompt.

    Returns:
        The callback (one per engine; attaching another router reuses it).

    Warns:
        UserWarning: The router has no Groq deployment the package can manage (also logged,
            with the reason).
    """
    engine = engine if engine is not None else Engine.shared(settings)
    ymera = _register(
        engine,
        routed_groups=routed_groups,
        max_wait=max_wait,
        reservation_timeout=reservation_timeout,
    )
    if strategy:
        router.register_plugin(YmeraRoutingStrategy(router, ymera, healthy=healthy))
    wrapped = _wrap_sync_endpoints(router)
    deployments = _router_deployments(router)
    ours, others = ymera._split(deployments)
    if not ours:
        why = _unmanaged_reason(ymera, deployments)
        logger.warning("attach(): %s", why)
        warnings.warn(why, UserWarning, stacklevel=2)
    else:
        ungoverned = [d for d in others if _is_groq(d)]
        if ungoverned:
            logger.warning(
                "attach(): %s",
                _unmanaged_reason(ymera, ungoverned, partial=True),
            )
        pool = engine.quota.pool
        keys = {m.key.label: m.key for _, m in ours}
        logger.info(
            "attach(): governing %d Groq deployments (%d keys, %d organisations, %d other "
            "deployments untouched); async path: %s; sync path: %s",
            len(ours),
            len(keys),
            len({pool.organisation(k) for k in keys.values()}),
            len(others),
            "the package's strategy picks" if strategy else "quota filter before your strategy",
            "the package's strategy picks"
            if strategy
            else (
                "pre-call check on your strategy's pick"
                if wrapped
                else "pre-call check (prompt size unknown: router.completion not wrapped)"
            ),
        )
    return ymera


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


def _router_deployments(router: Any) -> list[Any]:
    try:
        found = router.registry().all()
    except Exception:  # an older surface: the deprecated listing
        found = router.get_model_list()
    return list(found or [])


def _is_groq(deployment: Any) -> bool:
    params = deployment.get("litellm_params") if isinstance(deployment, Mapping) else None
    return isinstance(params, Mapping) and str(params.get("model", "")).startswith(PROVIDER_PREFIX)


def _unmanaged_reason(
    ymera: YmeraLiteLLM, deployments: Sequence[Any], *, partial: bool = False
) -> str:
    """Why none of these deployments is one the package can manage (`partial`: the router has
    others it can)."""
    groq = [d for d in deployments if _is_groq(d)]
    if not groq:
        return (
            f"the router has no Groq deployment ({len(deployments)} deployments, none with a "
            "`groq/<model>` litellm_params.model): the package governs nothing on it"
        )
    keyless = sum(1 for d in groq if not _resolve_secret(d["litellm_params"].get("api_key")))
    unknown = sorted(
        {
            str(d["litellm_params"]["model"]).removeprefix(PROVIDER_PREFIX)
            for d in groq
            if d["litellm_params"]["model"].removeprefix(PROVIDER_PREFIX)
            not in ymera.engine.catalog
        }
    )
    parts = []
    if keyless:
        parts.append(
            f"{keyless} have no key (no api_key, an unset os.environ/ variable, or no GROQ_API_KEY)"
        )
    if unknown:
        parts.append(f"models not in the catalog: {', '.join(unknown)}")
    head = (
        f"{len(groq)} of the router's Groq deployments cannot be governed"
        if partial
        else f"none of the router's {len(groq)} Groq deployments can be governed"
    )
    return (
        f"{head}: "
        + ("; ".join(parts) or "unusable keys")
        + ". Requests to them go out without quota control."
    )


def _sync_request(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What the sync pre-call check needs of a `completion` / `text_completion` call."""
    request = dict(kwargs)
    if name == "completion":
        messages = kwargs.get("messages", args[1] if len(args) > 1 else None)
    else:
        prompt = kwargs.get("prompt", args[1] if len(args) > 1 else None)
        messages = [{"role": "user", "content": prompt if isinstance(prompt, str) else str(prompt)}]
    request["messages"] = messages if isinstance(messages, list) else []
    return request


def _wrap_sync_endpoints(router: Any) -> bool:
    """Wrap `router.completion` and `router.text_completion` (this router only) so the sync
    pre-call check can see the request; whether it worked."""
    ok = True
    for name in _SYNC_ENDPOINTS:
        try:
            current = getattr(router, name)
            if getattr(current, "_ymera_sync", False):
                continue

            def endpoint(*args: Any, _orig: Any = current, _name: str = name, **kwargs: Any) -> Any:
                token = _SYNC_REQUEST.set(_sync_request(_name, args, kwargs))
                try:
                    return _orig(*args, **kwargs)
                finally:
                    _SYNC_REQUEST.reset(token)

            functools.update_wrapper(endpoint, current)
            endpoint._ymera_sync = True  # type: ignore[attr-defined]
            setattr(router, name, endpoint)
        except Exception:  # a router surface we do not know: the check still runs
            ok = False
    return ok


# -- the constructor form -------------------------------------------------------------------


class YmeraRoutingPlugin:
    """The package as a LiteLLM routing plugin: `Router(..., plugins=[YmeraRoutingPlugin()])`.

    Constructing it registers the engine's callback (the quota filter and the accounting) in
    `litellm.callbacks`, as `attach` does; the router's Groq deployments are adopted the first
    time a pick sees them. Each async pick then runs the plugin (which only records, in
    `context.signals["ymera"]`, that the package governs the request: the choice of key and
    model is the filter's, which sees deployments, where a plugin sees only model names) and
    the filter. LiteLLM 1.110 runs plugins on the async path only and refuses a sync call
    (`router.completion`) on a router that has plugins; use `attach(router)` for sync callers.

    Args:
        settings: The configuration; default: the environment (ignored when `engine` is given).
        engine: The engine to share; default: `Engine.shared(settings)`.
        routed_groups: Groups whose model the package chooses by the request's profile.
        max_wait: Seconds a pick may wait for room; default: `settings.max_wait`.
        reservation_timeout: See `YmeraLiteLLM`.
    """

    def __init__(
        self,
        *,
        settings: YmeraSettings | None = None,
        engine: Engine | None = None,
        routed_groups: Sequence[str] = DEFAULT_ROUTED_GROUPS,
        max_wait: float | None = None,
        reservation_timeout: float | None = None,
    ) -> None:
        self.engine = engine if engine is not None else Engine.shared(settings)
        self._options: dict[str, Any] = {
            "routed_groups": routed_groups,
            "max_wait": max_wait,
            "reservation_timeout": reservation_timeout,
        }
        self.ymera = _register(self.engine, **self._options)

    def __repr__(self) -> str:
        return f"<YmeraRoutingPlugin {self.ymera!r}>"

    async def run(self, context: RoutingContext) -> RoutingContext:
        """Keep the callback registered (something may have reset `litellm.callbacks`) and
        mark the request as governed; the candidate models are left as they are."""
        if self.ymera._closed:
            return context
        if self.ymera not in litellm.callbacks:
            self.ymera = _register(self.engine, **self._options)
        context.signals["ymera"] = "quota filter"
        return context


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
