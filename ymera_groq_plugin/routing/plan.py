"""The plan: an ordered list of served models for one request, with its reasons.

`Router.plan` is pure and synchronous (no I/O): the engine calls it on every request, the CLI
calls it through `explain_route`, and tests call it with made-up headroom.

How the order is made (each step leaves a reason in `Plan.reasons`):

1. An explicit `request.model` is resolved through the catalog (a model the account no longer
   serves becomes its successor, with a warning; an unknown or retired one raises) and is the
   whole plan: pinned means pinned. Only with `allow_model_fallback` does its catalog fallback
   chain follow it. Steps 2-4 are skipped.
2. Otherwise the policy proposes candidates, in this order, without repeats:
   the complexity route's model (`simple` → the fast class's first model, `complex` → the
   complex class's, except for the task types the route leaves alone), the task matrix row
   (primary, fallbacks), the agent class's preferred models, and served catalog models whose
   `strengths` list the task type (strongest first). Every name is resolved through the
   catalog when the router binds the policy (retired names → successors). A special-purpose
   model (catalog `only_for`, such as the safety classifier) is proposed for other task types
   only by a task matrix row that names it: the class, strength, `@longest_context` and
   context-fit steps skip it.
3. Models that cannot take the request are dropped, each with why: tools without tool use,
   JSON mode without JSON support, `max_tokens` above the model's completion limit, or a
   context window that does not fit the prompt plus the completion budget within the margin.
   The completion budget is `request.max_tokens` when given, else
   `min(model.max_completion_tokens, policy.default_completion_tokens)` (1024 by default: a
   typical answer, not the model's maximum, so a large prompt is not refused for a budget it
   would never use). If no candidate fits, the served models that do fit are added, largest
   window first; if none does, `ContextWindowError` is raised before any call.
4. The learner's recommendation among the remaining candidates (when it has enough evidence)
   moves to the front.
5. Quota: models with no headroom (`headroom[m] <= 0`) or no room yet (`time_until_room[m] >
   0`) move to the back, the soonest-open first; they are kept, because the engine may wait
   for them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from ..catalog import Catalog, ModelInfo, load_catalog
from ..errors import (
    ConfigurationError,
    ContextWindowError,
    InvalidRequestError,
    ModelRetiredError,
    UnknownModelError,
)
from ..types import ChatRequest, Message, Plan, Profile
from .classify import classify
from .policy import LONGEST_CONTEXT, Policy, default_policy, load_policy

if TYPE_CHECKING:
    from ..config import YmeraSettings
    from ..learning import Learner

__all__ = ["Router", "explain_route"]


class _Resolved(NamedTuple):
    model: str
    note: str | None  # set when the policy's name is not the served id


class _Bound:
    """The policy's model names resolved against one catalog on one day."""

    def __init__(self, policy: Policy, catalog: Catalog) -> None:
        self.longest = _longest(catalog)
        self.rows: dict[str, list[_Resolved]] = {}
        self.classes: dict[str, list[_Resolved]] = {}
        self.skipped: dict[str, str] = {}
        for task, row in policy.task_matrix.items():
            self.rows[task] = self._resolve_all(
                catalog, [(m, f"task_matrix.{task}") for m in row.models]
            )
        for name, cls in policy.agent_classes.items():
            self.classes[name] = self._resolve_all(
                catalog, [(m, f"agent_classes.{name}.models") for m in cls.models]
            )

    def _resolve_all(self, catalog: Catalog, names: list[tuple[str, str]]) -> list[_Resolved]:
        out: list[_Resolved] = []
        for name, where in names:
            if name == LONGEST_CONTEXT:
                out.extend(_Resolved(m, None) for m in self.longest)
                continue
            try:
                resolved = catalog.resolve(name)
            except UnknownModelError:
                raise ConfigurationError(
                    f"Routing policy {where} names {name!r}, which the catalog does not know "
                    "(neither an id nor an alias).",
                    setting="YMERA_POLICY",
                ) from None
            except ModelRetiredError as exc:
                # Shut down with no successor to serve: the policy still loads, the row
                # just loses that entry.
                self.skipped[name] = exc.message
                continue
            mid = resolved.model.id
            note = None
            if mid != name:
                note = f"policy name {name!r} → {mid}" + (
                    " (shut down; successor)" if resolved.warning else " (alias)"
                )
            out.append(_Resolved(mid, note))
        return out


def _longest(catalog: Catalog) -> list[str]:
    # A special-purpose model is no stand-in for general long-context work.
    served = [m for m in catalog.served() if not m.only_for]
    if not served:
        return []
    top = max(m.context_window for m in served)
    best = [m for m in served if m.context_window == top]
    best.sort(key=lambda m: (-m.quality_tier, -m.speed_tier, m.id))
    return [m.id for m in best]


class _Candidate(NamedTuple):
    model: ModelInfo
    source: str


class Router:
    """Profiles requests and plans the models to try, in order.

    Args:
        catalog: The model catalog (lifecycle, windows, fallbacks).
        policy: The routing policy; default: the embedded one.
        learner: A learner whose recommendations join the plan; the engine may set
            `router.learner` later.
        context_margin: Share of a context window a request may fill (0.9 keeps 10 % for the
            estimate's error).
        allow_model_fallback: Let an explicit model's plan continue with its catalog fallbacks
            (off: `model="X"` is answered by X or not at all).

    Raises:
        ConfigurationError: The margin is out of (0, 1], or the policy names a model the
            catalog does not know (naming the policy field).
    """

    def __init__(
        self,
        catalog: Catalog,
        policy: Policy | None = None,
        learner: Learner | None = None,
        *,
        context_margin: float = 0.9,
        allow_model_fallback: bool = False,
    ) -> None:
        if not 0 < context_margin <= 1:
            raise ConfigurationError(
                f"context_margin must be in (0, 1], got {context_margin!r}",
                setting="YMERA_CONTEXT_MARGIN",
            )
        self.catalog = catalog
        self.policy = policy or default_policy()
        self.learner = learner
        self.context_margin = context_margin
        self.allow_model_fallback = allow_model_fallback
        self._lock = threading.Lock()
        self._bound_on: tuple[dt.date, int] | None = None
        self._bound: _Bound = self._bind()

    def __repr__(self) -> str:
        return (
            f"<Router {len(self.catalog.served())} served models, margin "
            f"{self.context_margin:.0%}, learner {'on' if self.learner else 'off'}>"
        )

    def _bind(self) -> _Bound:
        # A model can shut down while the process runs: re-resolve once per catalog day, and
        # whenever what the account serves changes (`Catalog.version`).
        on = (self.catalog.today, self.catalog.version)
        if self._bound_on != on:
            with self._lock:
                if self._bound_on != on:
                    self._bound = _Bound(self.policy, self.catalog)
                    self._bound_on = on
        return self._bound

    # -- profile ---------------------------------------------------------------------------

    def profile(self, request: ChatRequest) -> Profile:
        """The request's profile (task type, complexity, tokens, reasons); see `classify`."""
        return classify(request, self.policy)

    # -- plan ------------------------------------------------------------------------------

    def completion_budget(self, request: ChatRequest, model: ModelInfo) -> int:
        """Completion tokens planned for `request` on `model` (see the module docstring)."""
        asked = request.max_tokens
        if asked is not None:
            return asked
        return min(model.max_completion_tokens, self.policy.default_completion_tokens)

    def plan(
        self,
        request: ChatRequest,
        profile: Profile | None = None,
        *,
        headroom: Mapping[str, float] | None = None,
        time_until_room: Mapping[str, float] | None = None,
    ) -> Plan:
        """The ordered models to try for `request`, with reasons and drops.

        Args:
            request: The request.
            profile: Its profile, if already computed (`Router.profile`).
            headroom: Model id → share of quota left (0 = none); absent models count as room.
            time_until_room: Model id → seconds until the model has room again.

        Returns:
            The plan: `models` in order (never empty), `reasons`, `dropped` (model → why).

        Raises:
            UnknownModelError: `request.model` is not in the catalog.
            ModelRetiredError: `request.model` is shut down and may not be replaced.
            ContextWindowError: No served model fits the prompt plus the completion budget.
        """
        profile = profile or self.profile(request)
        bound = self._bind()
        reasons: list[str] = []
        dropped: dict[str, str] = {}

        explicit = request.model is not None
        if request.model is not None:
            resolved = self.catalog.resolve(request.model)
            first = resolved.model
            if resolved.warning:
                reasons.append(f"request.model: {resolved.warning}")
            elif first.id != request.model:
                reasons.append(f"request.model {request.model!r} is an alias of {first.id}")
            elif self.allow_model_fallback:
                reasons.append(f"request.model {first.id}: first, then its catalog fallbacks")
            else:
                reasons.append(f"request.model {first.id}: pinned (allow_model_fallback is off)")
            candidates = [_Candidate(first, "request.model")]
            if self.allow_model_fallback:
                chain = self.catalog.fallback_chain(request.model)
                candidates += [_Candidate(m, f"fallback of {first.id}") for m in chain]
                if chain:
                    reasons.append("catalog fallbacks: " + ", ".join(m.id for m in chain))
        else:
            candidates = self._policy_candidates(profile, bound, reasons)

        pinned = explicit and not self.allow_model_fallback
        fitting = self._fit(request, profile, candidates, dropped, reasons, pinned=pinned)

        if not explicit and self.learner is not None and len(fitting) > 1:
            fitting = self._learn(profile, fitting, reasons)

        models = [c.model.id for c in fitting]
        models = _quota_order(
            models, headroom or {}, time_until_room or {}, reasons, keep_first=explicit
        )
        return Plan(models=tuple(models), profile=profile, reasons=tuple(reasons), dropped=dropped)

    def _policy_candidates(
        self, profile: Profile, bound: _Bound, reasons: list[str]
    ) -> list[_Candidate]:
        policy = self.policy
        task = profile.task_type
        ordered: list[tuple[_Resolved, str]] = []
        catalog = self.catalog

        def for_task(models: list[_Resolved]) -> list[_Resolved]:
            # A class spans task types; only a task matrix row may send this task type to a
            # special-purpose model.
            return [r for r in models if catalog.get(r.model).serves_task(task)]

        route = policy.complexity_route(profile.complexity, task)
        route_models = for_task(bound.classes.get(route.agent_class, [])) if route else []
        if route is not None and route_models:
            ordered.append(
                (route_models[0], f"complexity {profile.complexity} → {route.agent_class} class")
            )
        row = bound.rows.get(task, [])
        for i, r in enumerate(row):
            ordered.append((r, f"task matrix {task} " + ("primary" if i == 0 else "fallback")))
        match = policy.agent(profile.agent_name)
        if match is not None:
            for r in for_task(bound.classes.get(match.agent_class, [])):
                ordered.append((r, f"agent class {match.agent_class}"))
        strong = sorted(
            (m for m in self.catalog.served() if task in m.strengths and m.serves_task(task)),
            key=lambda m: (-m.quality_tier, -m.speed_tier, m.id),
        )
        for m in strong:
            ordered.append((_Resolved(m.id, None), f"catalog strength {task}"))

        out: list[_Candidate] = []
        seen: set[str] = set()
        notes: list[str] = []
        for r, source in ordered:
            if r.model in seen:
                continue
            seen.add(r.model)
            if r.note:
                notes.append(r.note)
            out.append(_Candidate(self.catalog.get(r.model), source))
        if out:
            reasons.append(
                "policy: " + "; ".join(f"{c.model.id} ({c.source})" for c in out[:4])
                + (f"; +{len(out) - 4} more" if len(out) > 4 else "")
            )
        reasons.extend(notes)
        return out

    def _fit(
        self,
        request: ChatRequest,
        profile: Profile,
        candidates: list[_Candidate],
        dropped: dict[str, str],
        reasons: list[str],
        *,
        pinned: bool = False,
    ) -> list[_Candidate]:
        prompt = profile.estimated_tokens
        margin = self.context_margin
        needs_tools = bool(request.params.get("tools"))
        rf = request.params.get("response_format")
        needs_json = isinstance(rf, Mapping) and rf.get("type") in ("json_object", "json_schema")

        def why_not(m: ModelInfo) -> str | None:
            if not self.catalog.is_served(m):
                return "not served by the account" if self.catalog.account_known else "shut down"
            if needs_tools and not m.capabilities.tool_use:
                return "no tool use"
            if needs_json and not m.capabilities.json_mode:
                return "no JSON mode"
            asked = request.max_tokens
            if asked is not None and asked > m.max_completion_tokens:
                return f"max_tokens {asked} > its completion limit {m.max_completion_tokens}"
            budget = self.completion_budget(request, m)
            usable = int(m.context_window * margin)
            if prompt + budget > usable:
                return (
                    f"context: needs {prompt + budget} tokens (prompt ~{prompt} + completion "
                    f"{budget}) > {usable} ({margin:.0%} of {m.context_window})"
                )
            return None

        fitting: list[_Candidate] = []
        for c in candidates:
            problem = why_not(c.model)
            if problem is None:
                fitting.append(c)
            else:
                dropped[c.model.id] = problem
        if fitting:
            return fitting
        if pinned:
            # Another model would not be the model asked for: say why this one cannot serve.
            m = candidates[0].model
            why = dropped[m.id]
            if why.startswith("context"):
                budget = self.completion_budget(request, m)
                raise ContextWindowError(
                    f"The request does not fit {m.id}: {why}. Shorten the prompt, lower "
                    "max_tokens, or let other models answer (allow_model_fallback=True).",
                    required_tokens=prompt + budget,
                    largest_window=m.context_window,
                )
            raise InvalidRequestError(
                f"{m.id} cannot serve this request: {why}. Pick another model, or let other "
                "models answer (allow_model_fallback=True)."
            )

        # Nothing the policy proposed fits: any served model that does, largest window first.
        considered = {c.model.id for c in candidates}
        rest = sorted(
            (
                m
                for m in self.catalog.served()
                if m.id not in considered and m.serves_task(profile.task_type)
            ),
            key=lambda m: (-m.context_window, -m.quality_tier, m.id),
        )
        for m in rest:
            problem = why_not(m)
            if problem is None:
                fitting.append(_Candidate(m, "context fit"))
            else:
                dropped[m.id] = problem
        if fitting:
            reasons.append(
                "context: no proposed model fits; only "
                + ", ".join(f"{c.model.id} ({c.model.context_window})" for c in fitting)
                + " does"
            )
            return fitting

        served = self.catalog.served()
        largest = max(served, key=lambda m: m.context_window) if served else None
        window = largest.context_window if largest else 0
        budget = self.completion_budget(request, largest) if largest else 0
        raise ContextWindowError(
            f"No served model fits this request: ~{prompt} prompt tokens + {budget} completion "
            f"tokens = {prompt + budget} tokens, and the largest context window is {window} "
            f"tokens, of which {margin:.0%} ({int(window * margin)}) may be used. Shorten the "
            "prompt, lower max_tokens, or split the documents (routing.fit_documents).",
            required_tokens=prompt + budget,
            largest_window=window,
        )

    def _learn(
        self, profile: Profile, fitting: list[_Candidate], reasons: list[str]
    ) -> list[_Candidate]:
        assert self.learner is not None
        ids = [c.model.id for c in fitting]
        rec = self.learner.recommend(profile.agent_name, profile.task_type, ids)
        if rec is None:
            reasons.append(
                f"learner: not enough evidence for ({profile.agent_name or '*'}, "
                f"{profile.task_type}) yet"
            )
            return fitting
        reasons.append(rec.reason)
        if rec.model not in ids or ids[0] == rec.model:
            return fitting
        chosen = next(c for c in fitting if c.model.id == rec.model)
        return [chosen, *(c for c in fitting if c.model.id != rec.model)]


def _quota_order(
    models: list[str],
    headroom: Mapping[str, float],
    time_until_room: Mapping[str, float],
    reasons: list[str],
    *,
    keep_first: bool,
) -> list[str]:
    if not headroom and not time_until_room:
        return models
    head = models[:1] if keep_first else []
    body = models[1:] if keep_first else models

    def blocked(m: str) -> bool:
        return headroom.get(m, 1.0) <= 0 or time_until_room.get(m, 0.0) > 0

    ready = [m for m in body if not blocked(m)]
    waiting = [m for m in body if blocked(m)]
    if not waiting:
        return models
    # Stable: among models without room, the one that opens soonest comes first.
    waiting.sort(key=lambda m: time_until_room.get(m, 0.0))
    for m in waiting:
        wait = time_until_room.get(m)
        reasons.append(
            f"quota: {m} has no room"
            + (f" (room in {wait:.1f}s)" if wait else "")
            + " → moved back"
        )
    if keep_first and head and blocked(head[0]):
        reasons.append(f"quota: {head[0]} has no room but was asked for explicitly; kept first")
    return head + ready + waiting


def explain_route(
    text: str,
    *,
    agent: str | None = None,
    task: str | None = None,
    settings: YmeraSettings | None = None,
    catalog: Catalog | None = None,
    learner: Learner | None = None,
) -> Plan:
    """The plan the engine would make for `text` (what `ymera-groq route` prints).

    Args:
        text: The task text, sent as one user message.
        agent: An agent name hint.
        task: A task type hint (a task type or a policy alias).
        settings: Where the catalog and policy files and the context margin come from;
            default: `YmeraSettings()` (the environment).
        catalog: A catalog to use instead of the settings' one.
        learner: A learner to consult (refreshed by the caller); default: none, so the plan
            shows the policy's own order.

    Returns:
        The plan; `plan.as_dict()` is the `--json` shape.

    Raises:
        ConfigurationError: Bad settings, catalog or policy.
        InvalidRequestError: `task` is not a task type or alias.
        ContextWindowError: The text fits no served model.
    """
    if settings is None:
        from ..config import YmeraSettings

        settings = YmeraSettings()
    catalog = catalog or load_catalog(
        settings.catalog_path, serve_successor=settings.serve_successor
    )
    policy = load_policy(settings.policy_path)
    router = Router(
        catalog,
        policy,
        learner,
        context_margin=settings.context_margin,
        allow_model_fallback=settings.allow_model_fallback,
    )
    message: Message = {"role": "user", "content": text}
    request = ChatRequest(messages=(message,), agent_name=agent, task_type=task)
    return router.plan(request)
