"""A local Groq-compatible HTTP server with Groq's rate limits, headers, errors and faults.

`GroqTestServer` answers on Groq's own paths (`/openai/v1/chat/completions`,
`/openai/v1/models`), so the official `groq` SDK, `langchain_groq.ChatGroq` and LiteLLM's
`groq/…` provider work against it unchanged through their base URL. It powers the package's
rate-limit and fault tests, the offline `ymera-groq demo`, and users' own agent tests.

What it reproduces (sources in `shared/reference/groq-api.md`):

- **Bodies** shaped like the recordings: `chatcmpl-…` ids, `usage` with Groq's timing fields,
  `usage_breakdown: null`, `system_fingerprint`, `x_groq {id, seed}`, `service_tier:
  "on_demand"`; streams whose first chunk carries `x_groq.id` and whose last carries
  `x_groq.usage` and a top-level `usage`. What the "model" says is described in
  `ymera_groq_plugin.testing._generate`: short, deterministic, with tool calls and JSON mode.
- **Rate limits per organisation and model**: keys map to organisations; the keys of one
  organisation share four continuously refilling buckets (RPM, RPD, TPM, TPD) per model.
  Admission checks the request buckets and the token buckets against the *input* tokens only;
  completion tokens are charged afterwards and may leave a bucket in debt. A refused request
  consumes nothing. A request larger than the model's TPM gets Groq's 413.
- **Headers** on every answer to an authenticated request for a served model, errors and streams
  included: `x-ratelimit-{limit,remaining,reset}-requests` (the RPD bucket),
  `x-ratelimit-{limit,remaining,reset}-tokens` (the TPM bucket), resets as Go durations equal to
  `(limit − remaining) × window / limit`; `retry-after` (whole seconds, rounded up) on 429 only;
  `x-request-id` and `x-groq-region` on every answer.
- **What each account is served**: by default every organisation is served the catalog's models
  that are not shut down; `served={org: [ids]}` (or `set_served`) gives an organisation its own
  list, as plans differ (an enterprise plan keeps a model the free plan lost). `GET
  /openai/v1/models` lists the caller's organisation's models; a chat call for a model the
  organisation is not served answers 404 `model_not_found` (400 `model_decommissioned` for one
  the catalog says is shut down), in Groq's wire format.
- **Errors** with Groq's wording: 401 `invalid_api_key`, 404 `model_not_found`, 400
  `model_decommissioned`, 400 `context_length_exceeded`, 400 validation errors, 413 and 429
  `rate_limit_exceeded`, and injected 5xx, 498 `capacity_exceeded`, mid-stream `event: error`,
  latency and 429 storms (`FaultConfig`).

**Time.** Buckets run on *server time* = `clock() × time_scale`. With `time_scale=60` a minute
window refills in one wall-clock second and a day window in 24 minutes. Every duration sent to
clients — `x-ratelimit-reset-*`, `retry-after`, "Please try again in …" — is in *clock* seconds
(server time divided by the scale), so a client that honours them waits the right wall-clock
time. Injected latencies and storm durations are clock seconds too. Pass a fake `clock` (for
instance `ymera_groq_plugin.testing.clock.FakeClock`) to move time without sleeping.

Example:
    ```python
    from groq import Groq
    from ymera_groq_plugin.testing.server import GroqTestServer

    with GroqTestServer({"gsk_test_key_a1": "org_a"}) as server:
        client = Groq(api_key="gsk_test_key_a1", base_url=server.base_url, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="openai/gpt-oss-20b", messages=[{"role": "user", "content": "hi"}]
        )
        raw.headers["x-ratelimit-remaining-tokens"]
    ```

Run one from a shell with `python -m ymera_groq_plugin.testing.server --key gsk_x=org_a`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeAlias

import uvicorn
from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..catalog import Catalog, ModelInfo, ModelLimits, default_catalog
from ..errors import ConfigurationError
from ._faults import FaultConfig, FaultDecision, FaultInjector
from ._generate import generate, render_chunks, render_completion, usage
from ._limits import RPD, RPM, RateLimiter, Refusal, Snapshot
from ._request import ChatParams, RequestError, parse_body, require_model, validate_chat
from ._stats import OrgModelStats, ServerStats, StatsRecorder
from ._tokens import TokenCounter, count_prompt_tokens, resolve_token_counter
from ._wire import (
    FLEX_CAPACITY_BODY,
    JSON_HEADERS,
    SERVER_ERRORS,
    context_length_body,
    decommissioned_body,
    dumps,
    error_body,
    go_duration,
    invalid_key_body,
    mask_key,
    model_not_found_body,
    new_completion_id,
    new_request_id,
    rate_limit_message,
    retry_after_seconds,
    too_large_message,
    unknown_url_body,
)

__all__ = ["FaultConfig", "GroqTestServer", "OrgModelStats", "ServerStats"]

logger = logging.getLogger(__name__)

LimitsOverride: TypeAlias = Mapping[str, ModelLimits | Mapping[str, int | None]]
"""Per-model limit overrides: a `ModelLimits`, or a mapping of the fields to change."""

_OWNERS = {
    "openai": "OpenAI",
    "qwen": "Alibaba Cloud",
    "meta-llama": "Meta",
    "llama": "Meta",
    "moonshotai": "Moonshot AI",
    "groq": "Groq",
    "minimaxai": "MiniMax",
}
_START_TIMEOUT = 10.0


class _Reply(Exception):
    """An early answer (error) raised from inside the chat handler."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = list(headers)


class GroqTestServer:
    """A Groq-compatible server on loopback, with Groq's rate limiting and injectable faults.

    Use it as a context manager (`with` or `async with`) to run it in a background thread, or
    serve `server.app` (a Starlette ASGI app) yourself, e.g. through `httpx.ASGITransport`.

    Args:
        keys: API key → organisation id. Keys of one organisation share its limits. Keys are
            secrets: they appear only masked (`gsk_…a1b2`) in reprs, logs and stats.
        catalog: The models served; default: the package's catalog. Shut-down models answer
            400 `model_decommissioned`; ids not in the catalog answer 404. Aliases are not
            accepted (Groq does not know them).
        limits: Per-model overrides of the catalog limits, e.g.
            `{"openai/gpt-oss-20b": {"rpm": 5, "tpm": 500}}`; a `None` value removes a limit.
        time_scale: Server seconds per clock second (60: a minute window refills in 1 s).
        clock: Seconds, monotonic; default `time.monotonic`.
        faults: A `FaultConfig` (or a mapping of its fields); changeable later with
            `configure_faults`.
        host: Interface to bind (loopback by default).
        port: Port to bind; 0 picks a free one.
        region: Value of the `x-groq-region` header.
        token_counter: Counts prompt tokens of message dicts; default: the package's estimator
            (`ymera_groq_plugin.tokens.estimate_prompt_tokens`) if present, else characters / 4.
        served: Organisation → the model ids it is served (listed by `/openai/v1/models`,
            answered by chat, whatever the catalog's dates say); organisations not named are
            served the catalog's models that are not shut down. Every id must be in `catalog`.

    Raises:
        ConfigurationError: No keys, a non-positive `time_scale`, or `limits` naming a model the
            catalog lacks or holding invalid values.
    """

    def __init__(
        self,
        keys: Mapping[str, str] | Mapping[SecretStr, str],
        *,
        catalog: Catalog | None = None,
        limits: LimitsOverride | None = None,
        time_scale: float = 1.0,
        clock: Callable[[], float] | None = None,
        faults: FaultConfig | Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "local",
        token_counter: TokenCounter | None = None,
        served: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        if not keys:
            raise ConfigurationError("GroqTestServer needs at least one API key")
        if not time_scale > 0:
            raise ConfigurationError(f"time_scale must be positive, got {time_scale!r}")
        self._keys: dict[str, tuple[str, str]] = {}
        labels: dict[str, int] = {}
        for raw_key, org in keys.items():
            secret = raw_key.get_secret_value() if isinstance(raw_key, SecretStr) else raw_key
            label = mask_key(secret)
            labels[label] = labels.get(label, 0) + 1
            if labels[label] > 1:
                label = f"{label}#{labels[label]}"
            self._keys[secret] = (org, label)
        self._catalog = catalog if catalog is not None else default_catalog()
        today = self._catalog.today
        self._models: dict[str, ModelInfo] = {m.id: m for m in self._catalog.models}
        self._served = frozenset(m.id for m in self._catalog.models if m.is_served(today))
        self._org_served: dict[str, frozenset[str]] = {}
        for org, ids in (served or {}).items():
            self.set_served(org, ids)
        self._not_served: Counter[tuple[str, str]] = Counter()
        self._listings: Counter[str] = Counter()
        self._listing_status: int | None = None
        self._listing_delay = 0.0
        self._limits = _merge_limits(self._models, limits or {})
        self._scale = float(time_scale)
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._region = region
        self._host = host
        self._port = port
        self._count = resolve_token_counter(token_counter)
        self._limiter = RateLimiter()
        self._faults = FaultInjector(FaultConfig.of(faults), self._clock)
        self._stats = StatsRecorder()
        self._nonce = itertools.count()
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None
        self._sock: socket.socket | None = None
        self.app: Starlette = self._build_app()
        """The ASGI application (usable without starting the server)."""

    # -- running -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the background server is up."""
        return self._uvicorn is not None and self._uvicorn.started

    @property
    def base_url(self) -> str:
        """The groq SDK / `ChatGroq` base URL, e.g. `http://127.0.0.1:51234`.

        Raises:
            RuntimeError: The server is not running.
        """
        if self._bound_port is None:
            raise RuntimeError("GroqTestServer is not running: use it in a `with` block")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._bound_port}"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI-style base URL (`…/openai/v1`), e.g. for LiteLLM's `api_base`."""
        return self.base_url + "/openai/v1"

    def start(self) -> Self:
        """Start serving in a background thread and wait until the port accepts connections.

        Raises:
            RuntimeError: Already running, or uvicorn failed to start.
        """
        self._launch()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._ready():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("GroqTestServer did not start in time")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        """Stop the server and join its thread (idempotent)."""
        server, thread = self._uvicorn, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=5.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5.0)
        self._finish()

    async def astart(self) -> Self:
        """Like `start`, but waits without blocking the event loop."""
        self._launch()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._ready():
            if time.monotonic() > deadline:
                await self.astop()
                raise RuntimeError("GroqTestServer did not start in time")
            await asyncio.sleep(0.002)
        return self

    async def astop(self) -> None:
        """Like `stop`, but waits without blocking the event loop."""
        server, thread = self._uvicorn, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        deadline = time.monotonic() + 5.0
        while thread.is_alive():
            if time.monotonic() > deadline:
                server.force_exit = True
            await asyncio.sleep(0.01)
        self._finish()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def _launch(self) -> None:
        if self._thread is not None:
            raise RuntimeError("GroqTestServer is already running")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto
        # says TCP, and without it every answer waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._bound_port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=1,
            server_header=False,
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uvicorn.run,
            kwargs={"sockets": [sock]},
            name=f"GroqTestServer:{self._bound_port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("local Groq server on %s for %s", self.base_url, ", ".join(self._key_labels()))

    def _ready(self) -> bool:
        assert self._uvicorn is not None and self._thread is not None
        if self._uvicorn.started:
            return True
        if not self._thread.is_alive():
            self._finish()
            raise RuntimeError("GroqTestServer failed to start (see the uvicorn log)")
        return False

    def _finish(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._uvicorn = None
        self._thread = None
        self._bound_port = None

    # -- runtime control -----------------------------------------------------------------------

    @property
    def faults(self) -> FaultConfig:
        """The fault configuration in force."""
        return self._faults.config

    def configure_faults(self, config: FaultConfig | None = None, **changes: Any) -> FaultConfig:
        """Replace the fault configuration, or change some of its fields (thread-safe).

        Args:
            config: A whole new configuration (its `seed` reseeds the generator).
            **changes: Fields to change, e.g. `error_rate=0.2`; passing `seed` reseeds.

        Returns:
            The configuration now in force.
        """
        return self._faults.configure(config, **changes)

    def start_429_storm(self, duration: float) -> None:
        """Answer every chat request with 429 (and `retry-after`) for `duration` clock seconds."""
        self._faults.start_storm(duration)

    def stop_429_storm(self) -> None:
        """End a 429 storm early."""
        self._faults.stop_storm()

    def stats(self) -> ServerStats:
        """A snapshot of the counters (also served as JSON at `GET /_ymera/stats`)."""
        return self._stats.snapshot()

    def reset(self) -> None:
        """Zero the counters, refill every bucket and end any 429 storm (faults stay)."""
        self._stats.clear()
        self._limiter.clear()
        self._faults.stop_storm()

    def limits_for(self, model: str) -> ModelLimits:
        """The limits the server enforces for `model` (catalog plus overrides).

        Raises:
            KeyError: The catalog has no such model id.
        """
        return self._limits[model]

    def available(self, org: str, model: str) -> dict[str, float | None]:
        """Exact availability of each bucket of (org, model): `rpm`, `rpd`, `tpm`, `tpd`."""
        return self._limiter.available(org, model, self._limits[model], self._now())

    def count_prompt_tokens(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] = (),
    ) -> int:
        """The prompt tokens the server charges for these messages (and tool schemas)."""
        return count_prompt_tokens(self._count, messages, tools)

    @property
    def served_models(self) -> list[str]:
        """Ids of the models answering requests (not shut down)."""
        return sorted(self._served)

    def set_served(self, org: str, models: Iterable[str] | None) -> None:
        """Give `org` its own list of served models (`None`: the catalog's default again).

        Raises:
            ConfigurationError: An id is not in the server's catalog.
        """
        if models is None:
            self._org_served.pop(org, None)
            return
        ids = frozenset(models)
        unknown = sorted(ids - set(self._models))
        if unknown:
            raise ConfigurationError(
                f"served models {unknown} for {org!r} are not in the server's catalog"
            )
        self._org_served[org] = ids

    def served_to(self, org: str) -> frozenset[str]:
        """The model ids `org` is served."""
        return self._org_served.get(org, self._served)

    def configure_listing(self, *, status: int | None = None, delay: float = 0.0) -> None:
        """Make `GET /openai/v1/models` fail with `status` (a 5xx body) and/or answer after
        `delay` seconds; `status=None` answers normally."""
        self._listing_status = status
        self._listing_delay = float(delay)

    def not_served_answers(self) -> dict[tuple[str, str], int]:
        """(organisation, model) → how many chat calls answered 404 `model_not_found` or 400
        `model_decommissioned`."""
        return dict(self._not_served)

    def listings(self) -> dict[str, int]:
        """Organisation → how many `GET /openai/v1/models` calls it made."""
        return dict(self._listings)

    def __repr__(self) -> str:
        where = self.base_url if self._bound_port is not None else "not running"
        orgs = len({org for org, _ in self._keys.values()})
        keys = ", ".join(self._key_labels())
        return (
            f"<GroqTestServer {where} [{len(self._keys)} keys in {orgs} orgs: {keys}; "
            f"{len(self._served)} models; time_scale={self._scale:g}]>"
        )

    def _key_labels(self) -> list[str]:
        return [label for _, label in self._keys.values()]

    # -- ASGI app ------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/openai/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/openai/v1/models", self._list_models, methods=["GET"]),
                Route("/openai/v1/models/{model_id:path}", self._get_model, methods=["GET"]),
                Route("/_ymera/stats", self._stats_endpoint, methods=["GET"]),
                Route(
                    "/{path:path}",
                    self._unknown,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                ),
            ]
        )

    def _now(self) -> float:
        return self._clock() * self._scale

    def _json(
        self,
        status: int,
        body: Any,
        request_id: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        hdrs = dict(JSON_HEADERS)
        hdrs.update(headers)
        hdrs["x-groq-region"] = self._region
        hdrs["x-request-id"] = request_id
        return Response(
            dumps(body), status_code=status, headers=hdrs, media_type="application/json"
        )

    def _auth(self, request: Request) -> tuple[str, str]:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        found = self._keys.get(token.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            raise _Reply(401, invalid_key_body())
        return found

    def _rate_headers(self, snap: Snapshot) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if snap.requests_limit is not None:
            out += [
                ("x-ratelimit-limit-requests", str(snap.requests_limit)),
                ("x-ratelimit-remaining-requests", str(snap.requests_remaining)),
                ("x-ratelimit-reset-requests", go_duration(snap.requests_reset / self._scale)),
            ]
        if snap.tokens_limit is not None:
            out += [
                ("x-ratelimit-limit-tokens", str(snap.tokens_limit)),
                ("x-ratelimit-remaining-tokens", str(snap.tokens_remaining)),
                ("x-ratelimit-reset-tokens", go_duration(snap.tokens_reset / self._scale)),
            ]
        return sorted(out)

    async def _chat(self, request: Request) -> Response:
        request_id = new_request_id()
        label: str | None = None
        self._stats.arrival()
        try:
            org, label = self._auth(request)
            response = await self._serve_chat(request, org, request_id)
        except _Reply as reply:
            response = self._json(reply.status, reply.body, request_id, reply.headers)
        except Exception:
            # A bug in the server must look like a Groq 500, not kill the connection.
            logger.exception("local Groq server failed on request %s", request_id)
            response = self._json(500, SERVER_ERRORS[500], request_id)
        self._stats.answered(response.status_code, label)
        return response

    def _lookup(self, model_id: str, org: str) -> ModelInfo:
        info = self._models.get(model_id)
        if info is None:
            raise _Reply(404, model_not_found_body(model_id))
        if model_id not in self.served_to(org):
            self._not_served[(org, model_id)] += 1
            if model_id not in self._served:
                raise _Reply(400, decommissioned_body(model_id))
            raise _Reply(404, model_not_found_body(model_id))
        return info

    async def _serve_chat(self, request: Request, org: str, request_id: str) -> Response:
        try:
            body = parse_body(await request.body())
            info = self._lookup(require_model(body), org)
        except RequestError as exc:
            raise _Reply(exc.status, exc.body) from None
        limits = self._limits[info.id]
        decision = self._faults.decide(streaming=body.get("stream") is True)
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        if decision.spiked:
            self._stats.fault("spike")
        self._inject(decision, org, info, limits)
        try:
            params = validate_chat(body, info)
        except RequestError as exc:
            snap = self._limiter.snapshot(org, info.id, limits, self._now())
            raise _Reply(exc.status, exc.body, self._rate_headers(snap)) from None
        prompt_tokens = self.count_prompt_tokens(params.messages, params.tools_raw)
        if prompt_tokens + (params.max_tokens or 0) > info.context_window:
            snap = self._limiter.snapshot(org, info.id, limits, self._now())
            raise _Reply(400, context_length_body(), self._rate_headers(snap))
        if limits.tpm is not None and prompt_tokens > limits.tpm:
            snap = self._limiter.snapshot(org, info.id, limits, self._now())
            self._stats.refused(org, info.id, "413")
            message = too_large_message(
                model=info.id, org=org, limit=limits.tpm, requested=prompt_tokens
            )
            raise _Reply(
                413,
                error_body(message, kind="tokens", code="rate_limit_exceeded"),
                self._rate_headers(snap),
            )
        refusal, snap = self._limiter.admit(org, info.id, limits, prompt_tokens, self._now())
        if refusal is not None:
            self._stats.refused(org, info.id, refusal.spec.code)
            raise self._rate_limited(refusal, org, info.id, snap)
        self._stats.admitted(org, info.id, prompt_tokens)
        return self._answer(params, info, org, prompt_tokens, snap, decision, request_id)

    def _inject(
        self, decision: FaultDecision, org: str, info: ModelInfo, limits: ModelLimits
    ) -> None:
        if decision.storm_wait is None and decision.status is None:
            return
        snap = self._limiter.snapshot(org, info.id, limits, self._now())
        headers = self._rate_headers(snap)
        if decision.storm_wait is not None:
            self._stats.refused(org, info.id, "storm")
            spec = RPM if limits.rpm is not None else RPD
            limit = getattr(limits, spec.field) or 0
            message = rate_limit_message(
                model=info.id,
                org=org,
                phrase=spec.phrase,
                code=spec.code,
                unit=spec.unit,
                limit=limit,
                used=limit,
                requested=1,
                wait=go_duration(decision.storm_wait),
            )
            headers.append(("retry-after", str(retry_after_seconds(decision.storm_wait))))
            raise _Reply(
                429, error_body(message, kind=spec.unit, code="rate_limit_exceeded"), headers
            )
        assert decision.status is not None
        if decision.status == 498:
            self._stats.fault("498")
            raise _Reply(498, FLEX_CAPACITY_BODY, headers)
        self._stats.fault("5xx")
        body = SERVER_ERRORS.get(decision.status) or error_body(
            "Internal Server Error", kind="internal_server_error"
        )
        raise _Reply(decision.status, body, headers)

    def _rate_limited(self, refusal: Refusal, org: str, model: str, snap: Snapshot) -> _Reply:
        wait = refusal.wait / self._scale
        spec = refusal.spec
        message = rate_limit_message(
            model=model,
            org=org,
            phrase=spec.phrase,
            code=spec.code,
            unit=spec.unit,
            limit=refusal.limit,
            used=refusal.used,
            requested=refusal.requested,
            wait=go_duration(wait),
        )
        headers = self._rate_headers(snap)
        headers.append(("retry-after", str(retry_after_seconds(wait))))
        return _Reply(429, error_body(message, kind=spec.unit, code="rate_limit_exceeded"), headers)

    def _answer(
        self,
        params: ChatParams,
        info: ModelInfo,
        org: str,
        prompt_tokens: int,
        snap: Snapshot,
        decision: FaultDecision,
        request_id: str,
    ) -> Response:
        sampled = params.seed is None
        completion = generate(params, info, nonce=next(self._nonce) if sampled else None)
        seed = (
            params.seed
            if params.seed is not None
            else int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
        )
        usage_obj = usage(prompt_tokens, completion, info, completion.ref)
        common: dict[str, Any] = {
            "completion_id": new_completion_id(),
            "created": int(time.time()),
            "model_id": info.id,
            "request_id": request_id,
            "seed": seed,
            "usage_obj": usage_obj,
        }
        headers = self._rate_headers(snap)
        if not params.stream:
            self._settle(org, info, completion.completion_tokens)
            return self._json(200, render_completion(completion, **common), request_id, headers)
        events, sent_tokens = render_chunks(
            completion, params, error_after=decision.stream_error_after, **common
        )
        if events[-1].startswith(b"event: error"):
            self._stats.fault("stream_error")
        self._settle(org, info, sent_tokens)
        hdrs = {
            "cache-control": "no-cache",
            "content-type": "text/event-stream",
            "vary": "Origin",
            **dict(headers),
            "x-groq-region": self._region,
            "x-request-id": request_id,
        }
        return StreamingResponse(self._sse(events), headers=hdrs)

    def _settle(self, org: str, info: ModelInfo, completion_tokens: int) -> None:
        self._limiter.charge(org, info.id, self._limits[info.id], completion_tokens, self._now())
        self._stats.completed(org, info.id, completion_tokens)

    async def _sse(self, events: list[bytes]) -> AsyncIterator[bytes]:
        for i, event in enumerate(events):
            if i:
                delay = self._faults.chunk_delay()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield event

    def _model_object(self, info: ModelInfo) -> dict[str, Any]:
        owner = _OWNERS.get(info.id.split("/", 1)[0] if "/" in info.id else "llama", "Groq")
        return {
            "id": info.id,
            "object": "model",
            "created": 1_700_000_000 + int.from_bytes(info.id.encode()[:8], "big") % 60_000_000,
            "owned_by": owner,
            "active": True,
            "context_window": info.context_window,
            "public_apps": None,
            "max_completion_tokens": info.max_completion_tokens,
        }

    async def _list_models(self, request: Request) -> Response:
        # Counted apart from the chat calls (`listings()`): `stats()` is about chat traffic,
        # and an engine lists in the background at start.
        request_id = new_request_id()
        try:
            org, _ = self._auth(request)
        except _Reply as reply:
            return self._json(reply.status, reply.body, request_id)
        self._listings[org] += 1
        if self._listing_delay > 0:
            await asyncio.sleep(self._listing_delay)
        if self._listing_status is not None:
            status = self._listing_status
            return self._json(status, SERVER_ERRORS.get(status, SERVER_ERRORS[500]), request_id)
        data = [self._model_object(self._models[mid]) for mid in sorted(self.served_to(org))]
        return self._json(200, {"object": "list", "data": data}, request_id)

    async def _get_model(self, request: Request) -> Response:
        request_id = new_request_id()
        label: str | None = None
        try:
            org, label = self._auth(request)
            model_id = str(request.path_params["model_id"])
            if model_id not in self.served_to(org):
                raise _Reply(404, model_not_found_body(model_id))
            response = self._json(200, self._model_object(self._models[model_id]), request_id)
        except _Reply as reply:
            response = self._json(reply.status, reply.body, request_id)
        self._stats.answered(response.status_code, label)
        return response

    async def _stats_endpoint(self, request: Request) -> Response:
        return self._json(200, self.stats().as_dict(), new_request_id())

    async def _unknown(self, request: Request) -> Response:
        response = self._json(
            404, unknown_url_body(request.method, request.url.path), new_request_id()
        )
        self._stats.answered(404, None)
        return response


def _merge_limits(
    models: Mapping[str, ModelInfo], overrides: LimitsOverride
) -> dict[str, ModelLimits]:
    merged = {mid: m.limits for mid, m in models.items()}
    for mid, value in overrides.items():
        if mid not in merged:
            raise ConfigurationError(f"limits given for {mid!r}, which the catalog does not have")
        changes = value.as_dict() if isinstance(value, ModelLimits) else dict(value)
        try:
            merged[mid] = ModelLimits(**{**merged[mid].as_dict(), **changes})
        except (ValidationError, TypeError) as exc:
            raise ConfigurationError(f"invalid limits for {mid!r}: {exc}") from None
    return merged


# -- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a server in the foreground: `python -m ymera_groq_plugin.testing.server`.

    Args:
        argv: Arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description="Local Groq-compatible test server.")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY=ORG",
        help="an API key and its organisation (repeatable); default gsk_local_test_key=org_local",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    pairs = args.key or ["gsk_local_test_key=org_local"]
    keys = dict(p.split("=", 1) if "=" in p else (p, "org_local") for p in pairs)
    server = GroqTestServer(
        keys,
        time_scale=args.time_scale,
        faults=FaultConfig(error_rate=args.error_rate, latency=args.latency, seed=args.seed),
        host=args.host,
        port=args.port,
    )
    sys.stderr.write(
        f"{server!r}\nGroq base_url: http://{args.host}:{args.port}  "
        f"(OpenAI-style: http://{args.host}:{args.port}/openai/v1)\n"
    )
    uvicorn.run(
        server.app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="info",
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
