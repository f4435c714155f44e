"""One request's walk along its plan: which model and key next, and what a failure means.

The engine (`engine.py`) runs the calls; `Route` decides, in one place, the failure rules of
the engine's table (DESIGN.md, issue 6): which failures move to another organisation, the next
model, a retry after a backoff, or end the request. Finding room is the quota manager's
(`QuotaManager.acquire_first`: the first model with room now, else the one that opens first);
the route keeps what the walk has learned across calls (models that had no room and when they
open, 429s per organisation, retries) and the notes that explain the walk in the answer's
route reasons.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import (
    InvalidRequestError,
    ModelRetiredError,
    NoUsableKeyError,
    QuotaExhaustedError,
    RequestTooLargeError,
    StreamError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitError,
    UpstreamTimeoutError,
    YmeraError,
)
from .served import NOT_SERVED_CODES

if TYPE_CHECKING:
    from .catalog import Catalog
    from .config import YmeraSettings
    from .quota import Grant, QuotaManager
    from .types import ChatRequest, Plan

__all__ = ["MIN_CALL_TIMEOUT", "Route"]

logger = logging.getLogger(__name__)

MIN_CALL_TIMEOUT = 0.05
"""Shortest upstream call worth starting; with less budget left the request gives up."""
_BACKOFF_MAX = 8.0


class Route:
    """One request's walk along its plan: the next model and key, and what a failure means.

    First every model of the plan is tried at once (`wait=0`); a model without room is
    remembered with the time until it has room. Then, if nothing answered, the remembered
    models are tried again in order of opening, waiting for quota up to `max_wait` in all.

    Args:
        request: The request.
        plan: Its plan (models in order).
        quota: Where grants come from (and whose clock times openings).
        catalog: Resolves a pinned model's successor when the account no longer serves it.
        settings: `max_wait`, `request_timeout`, `max_retries`, `api_keys`, `fallback_models`.
        deadline: When (`time.monotonic`) the request's budget ends.
        budget: The budget in seconds (for the timeout message).
        organisations: How many organisations the keys belong to (429s on that many move on).
        retry_backoff: Seconds before the first retry of a model (doubled each time, ±50 %).
        rng: Randomness for the backoff's jitter.
        on_wait: Called when the walk starts waiting for the first opening.
    """

    def __init__(
        self,
        request: ChatRequest,
        plan: Plan,
        *,
        quota: QuotaManager,
        catalog: Catalog,
        settings: YmeraSettings,
        deadline: float,
        budget: float,
        organisations: int,
        retry_backoff: float,
        rng: random.Random,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.request = request
        self.plan = plan
        self.quota = quota
        self.catalog = catalog
        self.settings = settings
        self.deadline = deadline
        self.budget = budget
        self.organisations = organisations
        self.retry_backoff = retry_backoff
        self.rng = rng
        self.on_wait = on_wait
        self.queue: list[str] = list(plan.models)
        self.opens: dict[str, float] = {}
        """Model → when (the quota's clock) it is expected to have room again."""
        self.waiting = False
        self.wait_until = 0.0
        self.model: str | None = None
        self.retries = 0
        self.auth_failures = 0
        self.limited_orgs: set[str] = set()
        self.last_error: BaseException | None = None
        self.limited = False
        """Some model was out of quota or rate limited (the final error is a quota error)."""
        self.not_served: UpstreamError | None = None
        """The last 404 / `model_decommissioned` answer of the walk."""
        self.notes: list[str] = []
        """What the walk did off the plan's order (models without room, 429s), for the
        answer's route reasons."""

    def plan_so_far(self) -> Plan:
        """The plan with the walk's notes added to its reasons."""
        if not self.notes:
            return self.plan
        return dataclasses.replace(self.plan, reasons=(*self.plan.reasons, *self.notes))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def call_timeout(self) -> float:
        return max(MIN_CALL_TIMEOUT, min(self.settings.request_timeout, self.left()))

    def _drop_model(self) -> None:
        self.model = None
        self.retries = 0
        self.auth_failures = 0
        self.limited_orgs = set()

    def _wait_for(self, model: str, retry_after: float | None) -> None:
        if retry_after is not None:
            self.opens[model] = self.quota.clock() + max(0.0, retry_after)

    async def next(self) -> Grant | None:
        """A grant on the next key and model to try, or `None` when every option is spent.

        Raises:
            NoUsableKeyError: Every key is disabled (and no fallback provider is configured).
        """
        quota = self.quota
        while True:
            if self.left() < MIN_CALL_TIMEOUT:
                return None
            if self.model is None and not self.queue and not self.waiting and self.opens:
                # Nothing had room right away: wait for the earliest opening.
                self.waiting = True
                self.wait_until = quota.clock() + min(self.settings.max_wait, self.left())
                order = sorted(self.opens.items(), key=lambda kv: kv[1])
                self.queue = [m for m, at in order if at <= self.wait_until]
                if self.queue and self.on_wait is not None:
                    self.on_wait()
            if self.model is None and not self.queue:
                return None
            retrying = self.model is not None
            models: list[str] = []
            opens: dict[str, float] | None = None
            wait = 0.0
            if not self.waiting:
                # At once: the same model again (a retry, another organisation), or the first
                # model of the rest of the plan with room.
                models = [self.model] if self.model is not None else list(self.queue)
            else:
                now = quota.clock()
                wait = min(self.wait_until - now, self.left())
                if wait <= 0:
                    return None
                if self.model is not None:
                    opens = {self.model: now}
                else:
                    opens = {m: self.opens.get(m, now) for m in self.queue}
            try:
                grant = await quota.acquire_first(
                    models,
                    self.plan.profile.estimated_tokens,
                    max_tokens=self.request.max_tokens,
                    wait=wait,
                    opens=opens,
                    passed=self._passed,
                )
            except QuotaExhaustedError:
                # Every model tried was passed over (`_passed` noted why). A wait that ran
                # out, or reached models opening too late, ends the waiting walk.
                if self.waiting and not retrying:
                    self.queue.clear()
                self._drop_model()
                continue
            except NoUsableKeyError as exc:
                self.last_error = exc
                if not self.settings.fallback_models:
                    raise
                return None
            self.model = grant.model
            if grant.model in self.queue:
                self.queue.remove(grant.model)
            return grant

    def _passed(self, model: str, exc: YmeraError) -> str | None:
        """`acquire_first` passed `model` over: note why, drop it, maybe name its successor."""
        self.last_error = exc
        if isinstance(exc, RequestTooLargeError):
            self.limited = True
            self.notes.append(f"quota: {model} skipped: the request exceeds its TPM")
        elif isinstance(exc, QuotaExhaustedError):
            self.limited = True
            room = f" (room in {exc.retry_after:.1f}s)" if exc.retry_after else ""
            self.notes.append(f"quota: {model} had no room{room} → next model")
            self._wait_for(model, exc.retry_after)
        else:
            # No organisation of the account is served this model (listing or 404s).
            self.notes.append(f"served: {model} is served on no organisation")
        if model in self.queue:
            self.queue.remove(model)
        self._drop_model()
        if isinstance(exc, ModelRetiredError):
            return self._successor(model)
        return None

    def _successor(self, model: str) -> str | None:
        """For the model the request pinned: what serves in its place now that the account
        does not serve it (with a warning), or the typed error when nothing may.

        Raises:
            ModelRetiredError: `serve_successor` is off, or no successor is served.
        """
        if self.request.model is None or self.plan.models[0] != model:
            return None  # a routed request just moves on along its plan
        try:
            resolved = self.catalog.resolve(model)
        except ModelRetiredError as exc:
            raise exc from self.not_served  # Groq's own 404 stays visible as the cause
        if resolved.model.id == model:
            return None
        logger.warning("%s", resolved.warning)
        self.notes.append(f"request.model: {resolved.warning}")
        return resolved.model.id

    async def failed(self, grant: Grant, exc: UpstreamError) -> None:
        """Decide what a failed call means for the rest of the walk (already reported).

        Raises:
            UpstreamError: `exc` itself, when trying elsewhere cannot help (a bad request).
        """
        self.last_error = exc
        if exc.code in NOT_SERVED_CODES:
            # Marked unserved for that organisation (`Engine._report`): the quota hands out
            # another organisation's key for the same model, or says none is served.
            self.not_served = exc
            self.notes.append(f"groq: {exc.code} for {grant.model} on key {grant.key.label}")
            return
        if isinstance(exc, UpstreamRateLimitError):
            self.limited = True
            self.notes.append(
                f"groq: {exc.status_code} on {grant.model} for key {grant.key.label}"
                + (" (request too large)" if exc.too_large else "")
            )
            if exc.too_large:
                self._drop_model()  # never this model again for this request
                return
            # The organisation now cools down for this model; another may still have room.
            self.limited_orgs.add(grant.org)
            if len(self.limited_orgs) >= self.organisations:
                rl = exc.rate_limits
                self._wait_for(grant.model, rl.retry_after if rl is not None else None)
                self._drop_model()
            return
        if isinstance(exc, UpstreamAuthError):
            # The key is disabled now; the pool hands out another one.
            self.auth_failures += 1
            if self.auth_failures >= len(self.settings.api_keys):
                self._drop_model()
            return
        if isinstance(exc, StreamError) and not exc.retryable:
            # The model broke off before its first token (`tool_use_failed`, "generation
            # failed"): another model may well succeed; this one, asked again, likely not.
            self._drop_model()
            return
        if exc.retryable:
            self.retries += 1
            left = self.left()
            if self.retries > self.settings.max_retries or left <= MIN_CALL_TIMEOUT:
                self._drop_model()
                return
            backoff = min(_BACKOFF_MAX, self.retry_backoff * 2 ** (self.retries - 1))
            backoff *= 0.5 + self.rng.random()
            await asyncio.sleep(min(backoff, max(0.0, left - MIN_CALL_TIMEOUT)))
            return
        if _moves_on(exc):
            self._drop_model()
            return
        raise exc

    def may_fall_back(self) -> bool:
        """Whether the failures so far are ones another provider could fix."""
        return not isinstance(self.last_error, InvalidRequestError)

    def error(self) -> YmeraError:
        """The one typed error that sums the walk up."""
        last = self.last_error
        plan = ", ".join(self.plan.models)
        if isinstance(last, NoUsableKeyError):
            return last
        if self.limited and (
            last is None or isinstance(last, QuotaExhaustedError | UpstreamRateLimitError)
        ):
            now = self.quota.clock()
            retry = min((max(0.0, at - now) for at in self.opens.values()), default=None)
            if retry is None and isinstance(last, QuotaExhaustedError):
                retry = last.retry_after
            when = f"; the earliest opens in {retry:.1f}s" if retry is not None else ""
            err = QuotaExhaustedError(
                f"No Groq model in the plan ({plan}) has room for this request{when}.",
                retry_after=retry,
            )
            err.__cause__ = last
            return err
        if isinstance(last, YmeraError):
            return last
        err2 = UpstreamTimeoutError(
            f"No Groq model in the plan ({plan}) answered within the {self.budget:g} s budget."
        )
        err2.__cause__ = last
        return err2


def _moves_on(exc: UpstreamError) -> bool:
    """Whether a failure on one model lets the request move to the next one."""
    return (
        exc.retryable
        or isinstance(exc, UpstreamRateLimitError | UpstreamAuthError)
        or exc.status_code == 404
        or exc.code == "model_decommissioned"
    )
