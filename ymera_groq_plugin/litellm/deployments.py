"""The pieces every part of the LiteLLM adapter shares: the model list built from settings,
the deployment fields and ids, the capacity error the router understands, request hints and
the facts read from LiteLLM's responses and exceptions."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from litellm.exceptions import APIConnectionError, Timeout
from litellm.secret_managers.main import get_secret_str
from litellm.types.router import (
    RouterRateLimitError,
)

from ..catalog import Catalog, load_catalog
from ..config import ApiKey, YmeraSettings
from ..errors import (
    NoUsableKeyError,
)
from ..headers import parse_rate_limits
from ..types import RateLimits, Usage

if TYPE_CHECKING:
    from ..quota import Grant


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


class AdoptedKey(ApiKey):
    """A key the package found in a router's deployment (not in its settings).

    `api_base` is the base URL LiteLLM sends it to (in the settings' form, without
    `/openai/v1`) when that is not the engine's `settings.base_url`; `None` when it is. The
    engine's own HTTP goes to `settings.base_url` (its model listing, its own chat calls), and
    a key with an `api_base` belongs to a proxy or another Groq-compatible server: the engine
    must not send it there, so its models are taken from the router's deployments instead.
    """

    api_base: str | None = None


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
    """The key LiteLLM sends for a `groq/` deployment, from its `api_key` as the router holds
    it: that value, or `GROQ_API_KEY` when there is none.

    LiteLLM resolves `os.environ/NAME` when it builds a model list (the constructor,
    `set_model_list`; an unset variable leaves no key, hence `GROQ_API_KEY`), but
    `add_deployment` and `upsert_deployment` keep the reference and LiteLLM sends it as it is,
    which Groq refuses: no key, so the package leaves such a deployment alone rather than
    charge (and, on the 401, disable) the key the variable names.
    """
    if api_key is None:
        return get_secret_str("GROQ_API_KEY")
    if api_key.startswith("os.environ/"):
        return None
    return api_key or None


_GROQ_API_BASE = "https://api.groq.com/openai/v1"
"""LiteLLM's base URL for a `groq/` deployment that names none and has no `GROQ_API_BASE`."""


def _base_url(url: str) -> str:
    """A Groq base URL in the settings' form: no `/openai/v1`, no trailing `/`, scheme and
    host in lower case (as `GroqTransport` builds its URLs)."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/").removesuffix("/openai/v1").rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def _deployment_base(api_base: Any) -> str:
    """The base URL LiteLLM calls a `groq/` deployment at: its `api_base` as the router holds
    it (see `_resolve_secret` for `os.environ/`), else `GROQ_API_BASE`, else Groq's, in the
    settings' form."""
    base = api_base if isinstance(api_base, str) else None
    return _base_url(base or get_secret_str("GROQ_API_BASE") or _GROQ_API_BASE)


def _router_deployments(router: Any) -> list[Any]:
    try:
        found = router.registry().all()
    except Exception:  # an older surface: the deprecated listing
        found = router.get_model_list()
    return list(found or [])


def _registry_version(router: Any) -> int | None:
    """LiteLLM's counter of the router's deployment changes (`None`: not available)."""
    try:
        version = router.registry().version
    except Exception:
        return None
    return version if isinstance(version, int) else None


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
