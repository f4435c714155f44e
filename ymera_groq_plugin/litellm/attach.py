"""`attach(router)`: adopt a Router's own Groq deployments and keys, register the callback
(and, if asked, the strategy), wrap the sync endpoints; `_detach` undoes it."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..config import YmeraSettings
from ..engine import Engine
from .callback import YmeraLiteLLM, _register
from .deployments import (
    _SYNC_ENDPOINTS,
    _SYNC_REQUEST,
    DEFAULT_ROUTED_GROUPS,
    PROVIDER_PREFIX,
    _resolve_secret,
    _router_deployments,
)
from .strategy import YmeraRoutingStrategy

if TYPE_CHECKING:
    from litellm.router import Router


logger = logging.getLogger(__name__)


# -- attaching ------------------------------------------------------------------------------


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
    (a model the catalog knows) with its key from `litellm_params.api_key` as the router holds
    it (LiteLLM resolves `os.environ/NAME` in the lists it builds, not in `add_deployment`) or
    LiteLLM's `GROQ_API_KEY` default, and its organisation from `model_info["groq_org"]` when
    given, otherwise learnt from Groq's answers. A key whose
    deployment's `api_base` is not `settings.base_url` (a proxy) is adopted as an `AdoptedKey`
    carrying that base, so the engine knows not to send it to `settings.base_url`. Deployments
    added later (`add_deployment`, `set_model_list`) are adopted the first time a pick sees them.

    Only the routers attached to the engine are governed. The callback sits in LiteLLM's
    process-wide `litellm.callbacks`, so every router in the process calls it, but it governs a
    deployment only when its `model_info.id` is one of an attached router's (LiteLLM derives
    ids from the group and `litellm_params`, so an identical deployment in another router counts
    as the same one). With `YmeraRoutingPlugin` on the same engine every router is governed.

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
    ymera._govern(router)
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
            f"{keyless} have no key (no api_key and no GROQ_API_KEY, an unset os.environ/ "
            "variable, or an os.environ/ reference LiteLLM sends unresolved: add_deployment "
            "and upsert_deployment keep it)"
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
