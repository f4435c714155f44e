"""The routing policy as data: task matrix, agent classes, agent-name patterns, complexity routing.

The embedded `data/policy.json` carries the original plan's §4 tables. Its models are named
by current catalog ids picked for each row's stated reason (speed, quality, reasoning,
context); each row keeps the plan's own choice under `plan`, for the record. Any name the
catalog knows (an id or an alias, retired or not) is accepted: a `Router` resolves every name
through `Catalog.resolve` when it binds the policy, so a file written with the plan's
`llama-3.1-8b-instant` keeps working through that model's successor. `@longest_context`
stands for the served models with the largest context window, largest first.

A user file (`YMERA_POLICY`) and keyword overrides merge over the embedded policy:
`task_matrix` rows and `agent_classes` entries replace or add by name (a partial row keeps
the fields it does not give), `agents` patterns are put *before* the embedded ones (so they
win), `complexity_routing` and `task_aliases` merge by key, scalars replace.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ConfigurationError, InvalidRequestError
from ..types import TASK_TYPES, Complexity

__all__ = [
    "LONGEST_CONTEXT",
    "AgentClass",
    "AgentMatch",
    "AgentPattern",
    "ComplexityRoute",
    "Policy",
    "TaskRoute",
    "default_policy",
    "load_policy",
    "normalise_agent_name",
]

LONGEST_CONTEXT = "@longest_context"
"""Placeholder for the served models with the largest context window, largest first."""

_TASKS = frozenset(TASK_TYPES)


def _check_task(value: str) -> str:
    if value not in _TASKS:
        raise ValueError(f"unknown task type {value!r}; expected one of {', '.join(TASK_TYPES)}")
    return value


class TaskRoute(BaseModel):
    """One row of the task matrix: where a task type goes first, then next."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    primary: str = Field(min_length=1)
    """Model id, alias or `@longest_context`."""
    fallbacks: tuple[str, ...] = ()
    """Models to try next, in order."""
    reason: str | None = None
    """Why this row (the plan's "Reason" column)."""
    plan: tuple[str, ...] = ()
    """The original plan's choice for this row (documentation only)."""

    @property
    def models(self) -> tuple[str, ...]:
        return (self.primary, *self.fallbacks)


class AgentClass(BaseModel):
    """An agent class of the plan (§4.1): the task types it does and the models it prefers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str | None = None
    task_types: tuple[str, ...] = ()
    models: tuple[str, ...] = Field(min_length=1)
    complexity_bias: float = Field(default=0.0, ge=-3, le=3)
    """Added to the complexity score of this class's agents' requests."""
    plan: tuple[str, ...] = ()

    @field_validator("task_types")
    @classmethod
    def _tasks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for t in value:
            _check_task(t)
        return value


class AgentPattern(BaseModel):
    """Agent names matching `pattern` belong to `agent_class` (and hint at `task_type`).

    The pattern is a regular expression searched in the normalised agent name (lower case,
    words separated by single spaces, camelCase split), anchored at a word start.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    pattern: str = Field(min_length=1)
    agent_class: str = Field(alias="class")
    task_type: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @field_validator("task_type")
    @classmethod
    def _task(cls, value: str | None) -> str | None:
        return None if value is None else _check_task(value)


class ComplexityRoute(BaseModel):
    """Requests of a complexity go first to the named class's first model (plan §4.3)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    agent_class: str = Field(alias="class")
    except_task_types: tuple[str, ...] = Field(default=(), alias="except")
    """Task types left to the task matrix (context size or language decide there)."""


class AgentMatch(NamedTuple):
    """What the policy says about one agent name."""

    agent_class: str
    task_type: str | None
    pattern: str


class Policy(BaseModel):
    """The routing policy. Build it with `load_policy()`; it is immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    about: str | None = None
    default_completion_tokens: int = Field(default=1024, gt=0)
    """Completion budget assumed when a request gives no `max_tokens` (capped per model)."""
    long_context_tokens: int = Field(default=32000, gt=0)
    """Prompts at least this large are `long_context` work whatever their words say."""
    agent_prior_weight: float = Field(default=2.0, ge=0)
    """Weight of the task type an agent's name suggests, against the text's signals: the
    fitted weight of that agent prior (`data/task_type.json`) times `agent_prior_weight / 2`
    (so the default 2.0 is the fitted weight; 0 ignores agent names for the task type)."""
    task_matrix: dict[str, TaskRoute]
    agent_classes: dict[str, AgentClass]
    agents: tuple[AgentPattern, ...] = ()
    complexity_routing: dict[str, ComplexityRoute] = Field(default_factory=dict)
    task_aliases: dict[str, str] = Field(default_factory=dict)

    _compiled: list[tuple[re.Pattern[str], AgentPattern]] = PrivateAttr(default_factory=list)
    _agent_cache: dict[str, AgentMatch | None] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("task_matrix")
    @classmethod
    def _matrix_tasks(cls, value: dict[str, TaskRoute]) -> dict[str, TaskRoute]:
        for t in value:
            _check_task(t)
        missing = [t for t in TASK_TYPES if t not in value]
        if missing:
            raise ValueError(f"no row for task type(s) {', '.join(missing)}")
        return value

    @field_validator("complexity_routing")
    @classmethod
    def _complexities(cls, value: dict[str, ComplexityRoute]) -> dict[str, ComplexityRoute]:
        for c in value:
            if c not in ("simple", "moderate", "complex"):
                raise ValueError(f"unknown complexity {c!r}; expected simple, moderate, complex")
        return value

    @field_validator("task_aliases")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        for target in value.values():
            _check_task(target)
        return {k.lower(): v for k, v in value.items()}

    @model_validator(mode="after")
    def _references(self) -> Policy:
        for i, a in enumerate(self.agents):
            if a.agent_class not in self.agent_classes:
                raise ValueError(
                    f"agents.{i}.class: unknown agent class {a.agent_class!r}; "
                    f"defined: {', '.join(self.agent_classes)}"
                )
        for c, route in self.complexity_routing.items():
            if route.agent_class not in self.agent_classes:
                raise ValueError(
                    f"complexity_routing.{c}.class: unknown agent class {route.agent_class!r}"
                )
            for t in route.except_task_types:
                _check_task(t)
        return self

    def model_post_init(self, __context: Any) -> None:
        self._compiled = [(re.compile(r"\b(?:" + a.pattern + ")"), a) for a in self.agents]

    # -- lookups ---------------------------------------------------------------------------

    def agent(self, name: str | None) -> AgentMatch | None:
        """The class (and task hint) of an agent name, or `None` when no pattern matches."""
        if not name:
            return None
        cached = self._agent_cache.get(name, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        normal = normalise_agent_name(name)
        found: AgentMatch | None = None
        for rx, a in self._compiled:
            if rx.search(normal):
                found = AgentMatch(a.agent_class, a.task_type, a.pattern)
                break
        with self._lock:
            if len(self._agent_cache) > 4096:
                self._agent_cache.clear()
            self._agent_cache[name] = found
        return found

    def task_type_of(self, value: str, *, source: str) -> str:
        """A task type hint as given (`code_review`) or by alias (`review`).

        Raises:
            InvalidRequestError: Neither a task type nor an alias.
        """
        v = value.strip().lower().replace("-", "_").replace(" ", "_")
        if v in _TASKS:
            return v
        alias = self.task_aliases.get(v)
        if alias is not None:
            return alias
        raise InvalidRequestError(
            f"Unknown task type {value!r} in {source}; expected one of {', '.join(TASK_TYPES)}"
            + (
                f" or an alias ({', '.join(sorted(self.task_aliases))})"
                if self.task_aliases
                else ""
            )
            + "."
        )

    def complexity_route(self, complexity: Complexity, task_type: str) -> ComplexityRoute | None:
        route = self.complexity_routing.get(complexity)
        if route is None or task_type in route.except_task_types:
            return None
        return route

    def model_names(self) -> list[tuple[str, str]]:
        """Every model name the policy uses, with where (for validation against a catalog)."""
        out: list[tuple[str, str]] = []
        for t, row in self.task_matrix.items():
            out.append((row.primary, f"task_matrix.{t}.primary"))
            out.extend((m, f"task_matrix.{t}.fallbacks.{i}") for i, m in enumerate(row.fallbacks))
        for c, cls in self.agent_classes.items():
            out.extend((m, f"agent_classes.{c}.models.{i}") for i, m in enumerate(cls.models))
        return out

    def __repr__(self) -> str:
        return (
            f"<Policy v{self.version}: {len(self.task_matrix)} task types, "
            f"{len(self.agent_classes)} agent classes, {len(self.agents)} agent patterns>"
        )


_MISSING = object()

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise_agent_name(name: str) -> str:
    """`"SecurityAuditor-2"` → `"security auditor 2"`: words separated by single spaces."""
    return _NON_WORD.sub(" ", _CAMEL.sub(" ", name).lower()).strip()


# -- loading ------------------------------------------------------------------------------


def _embedded() -> dict[str, Any]:
    text = resources.files("ymera_groq_plugin").joinpath("data/policy.json").read_text("utf-8")
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def _merge(base: dict[str, Any], extra: Mapping[str, Any], origin: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if key in ("task_matrix", "agent_classes", "complexity_routing", "task_aliases"):
            if not isinstance(value, Mapping):
                raise ConfigurationError(
                    f"Invalid routing policy ({origin}): {key}: expected an object",
                    setting="YMERA_POLICY",
                )
            merged = dict(out.get(key) or {})
            for name, entry in value.items():
                current = merged.get(name)
                if isinstance(entry, Mapping) and isinstance(current, Mapping):
                    merged[name] = {**current, **entry}
                else:
                    merged[name] = entry
            out[key] = merged
        elif key == "agents":
            if not isinstance(value, list):
                raise ConfigurationError(
                    f"Invalid routing policy ({origin}): agents: expected a list",
                    setting="YMERA_POLICY",
                )
            # The user's patterns are searched first, so they override the embedded ones.
            out[key] = [*value, *(out.get(key) or [])]
        else:
            out[key] = value
    return out


def _validate(data: Mapping[str, Any], origin: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<policy>'}: "
            f"{str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigurationError(
            f"Invalid routing policy ({origin}): {problems}", setting="YMERA_POLICY"
        ) from None


@lru_cache(maxsize=1)
def default_policy() -> Policy:
    """The embedded policy (parsed once per process)."""
    return _validate(_embedded(), "embedded policy")


def load_policy(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Policy:
    """The embedded policy, with a JSON file and then `overrides` merged over it.

    Args:
        path: A JSON file with any subset of the policy's fields (see the module docstring
            for how each merges).
        overrides: More fields, merged after the file.

    Returns:
        The validated policy.

    Raises:
        ConfigurationError: The file is missing or not JSON, or a field is invalid; the
            message names the field (`task_matrix.security.primary: …`).
    """
    if path is None and not overrides:
        return default_policy()
    data = _embedded()
    origins = ["embedded policy"]
    if path is not None:
        p = Path(path).expanduser()
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(
                f"Routing policy file not found: {p}", setting="YMERA_POLICY"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigurationError(
                f"Routing policy file {p} is not readable JSON: {exc}", setting="YMERA_POLICY"
            ) from None
        if not isinstance(doc, Mapping):
            raise ConfigurationError(
                f"Routing policy file {p}: expected a JSON object", setting="YMERA_POLICY"
            )
        data = _merge(data, doc, str(p))
        origins.append(str(p))
    if overrides:
        data = _merge(data, overrides, "overrides")
        origins.append("overrides")
    return _validate(data, " + ".join(origins))
