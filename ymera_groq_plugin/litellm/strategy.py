"""The two other ways in: `YmeraRoutingStrategy` (registered with `router.register_plugin`,
it makes the pick) and `YmeraRoutingPlugin` (`Router(plugins=[...])`, async path only)."""

from __future__ import annotations

import logging
import random
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import litellm
from litellm.types.router import (
    CustomRoutingStrategyBase,
    RoutingContext,
)

from ..config import YmeraSettings
from ..engine import Engine
from .callback import YmeraLiteLLM, _register
from .deployments import _IN_PICK, DEFAULT_ROUTED_GROUPS, GroqCapacityError, _deployment_id, _Hold

if TYPE_CHECKING:
    from litellm.router import Router


logger = logging.getLogger(__name__)


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

    The filter then governs the Groq deployments of **every** router in the process, not only
    this one's: LiteLLM runs the callbacks in the process-wide `litellm.callbacks` for every
    router, and neither the plugin nor the filter is told which router is calling (the
    request's `metadata` cannot tell either: LiteLLM writes the plugin's signals into the
    caller's dict, which callers reuse). `attach(router)` governs its routers only.

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
        self.ymera._govern(None)

    def __repr__(self) -> str:
        return f"<YmeraRoutingPlugin {self.ymera!r}>"

    async def run(self, context: RoutingContext) -> RoutingContext:
        """Keep the callback registered (something may have reset `litellm.callbacks`) and
        mark the request as governed; the candidate models are left as they are."""
        if self.ymera._closed:
            return context
        if self.ymera not in litellm.callbacks:
            self.ymera = _register(self.engine, **self._options)
            self.ymera._govern(None)
        context.signals["ymera"] = "quota filter"
        return context
