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
`os.environ/NAME` as LiteLLM resolves it, or `GROQ_API_KEY`) and organisations
(`model_info["groq_org"]`, else learnt). Only the routers `attach` was given are governed
(`YmeraRoutingPlugin`: every router in the process; see `docs/litellm.md`).

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

try:
    import litellm  # noqa: F401 - only to fail early, with the install hint
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ymera_groq_plugin.litellm needs LiteLLM: install `ymera-groq-plugin[litellm]`"
    ) from exc

from .attach import attach
from .cache import TieredLiteLLMCache, litellm_cache
from .callback import YmeraLiteLLM
from .deployments import GroqCapacityError, model_list_from_settings
from .strategy import YmeraRoutingPlugin, YmeraRoutingStrategy

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
