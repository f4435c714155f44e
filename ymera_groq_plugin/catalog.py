"""The model catalog: Groq model ids, windows, free-plan limits, strengths and lifecycle.

The embedded data (`data/models.json`) is a snapshot; Groq's model list churns every few
months. Users extend or override it with a JSON file (`YMERA_CATALOG`) or keyword arguments,
refresh it from Groq's `GET /openai/v1/models`, and the quota ledger later corrects the limits in
force from response headers.

What the account serves outranks the catalog's dates: once the engine has a listing of the
account's models (`served.py`), `Catalog.apply_account` records it in place (every part that
holds the catalog sees it), and `Catalog.is_served` answers from it. The lifecycle dates decide
only while nothing is known of the account.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigurationError, ModelRetiredError, UnknownModelError

__all__ = [
    "Capabilities",
    "Catalog",
    "Lifecycle",
    "ModelInfo",
    "ModelLimits",
    "ResolvedModel",
    "Source",
    "default_catalog",
    "load_catalog",
]

logger = logging.getLogger(__name__)

Status = Literal["production", "preview", "deprecated", "shutdown"]


class ModelLimits(BaseModel):
    """Free-plan limits of one model for one organisation; `None` means "no such limit"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: int | None = Field(default=None, gt=0)
    """Requests per minute."""
    rpd: int | None = Field(default=None, gt=0)
    """Requests per day (rolling 24 h)."""
    tpm: int | None = Field(default=None, gt=0)
    """Tokens per minute."""
    tpd: int | None = Field(default=None, gt=0)
    """Tokens per day (rolling 24 h)."""

    def as_dict(self) -> dict[str, int | None]:
        """The limits as the original plan shows them: `rpm`, `rpd`, `tpm`, `tpd`."""
        return {"rpm": self.rpm, "rpd": self.rpd, "tpm": self.tpm, "tpd": self.tpd}


class Capabilities(BaseModel):
    """What a model can do beyond plain chat."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool_use: bool = False
    json_mode: bool = False
    reasoning: bool = False


class Lifecycle(BaseModel):
    """Where a model is in Groq's lifecycle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Status = "production"
    deprecated_on: dt.date | None = None
    shutdown_on: dt.date | None = None
    successor: str | None = None
    note: str | None = None

    def is_shut_down(self, today: dt.date | None = None) -> bool:
        """Whether the model no longer answers on `today` (default: the current UTC date)."""
        if self.status == "shutdown":
            return True
        today = today or dt.datetime.now(dt.UTC).date()
        return self.shutdown_on is not None and today >= self.shutdown_on


class Source(BaseModel):
    """Where a catalog entry's strengths and tiers come from, and what that source says."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    """Short name shown by `ymera-groq models` ("HF card", "Groq page")."""
    url: str = Field(min_length=1)
    """The public page (or a citation when there is no page)."""
    says: str = Field(min_length=1)
    """What the source says that the entry relies on."""


class ModelInfo(BaseModel):
    """One catalog entry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    """The id Groq's API takes, e.g. `openai/gpt-oss-120b`."""
    aliases: tuple[str, ...] = ()
    """Other names that resolve to this id (the original plan's short names, for instance)."""
    context_window: int = Field(gt=0)
    """Tokens of prompt plus completion the model accepts."""
    max_completion_tokens: int = Field(gt=0)
    """Largest completion the model produces."""
    limits: ModelLimits
    """Free-plan limits per organisation (corrected later from response headers)."""
    limits_note: str | None = None
    speed_tier: int = Field(default=3, ge=1, le=5)
    """1 (slowest) to 5 (fastest)."""
    quality_tier: int = Field(default=3, ge=1, le=5)
    """1 (weakest) to 5 (strongest)."""
    strengths: tuple[str, ...] = ()
    """Task types the model is preferred for."""
    only_for: tuple[str, ...] = ()
    """When set, the task types the model is for and the only ones the router proposes it
    for by itself (a special-purpose model, such as a safety classifier). A policy row that
    names the model still puts it in that row's plans: the policy is the user's word."""
    sources: tuple[Source, ...] = ()
    """The evidence for `strengths`, `only_for`, `speed_tier` and `quality_tier`."""
    rationale: str | None = None
    """One line: how the sources give the strengths and tiers."""
    capabilities: Capabilities = Capabilities()
    lifecycle: Lifecycle = Lifecycle()
    fallbacks: tuple[str, ...] = ()
    """Models to try next, in order, when this one cannot serve."""

    @field_validator("id", "aliases", mode="after")
    @classmethod
    def _no_blank_names(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else list(value)
        if any(not n.strip() for n in names):
            raise ValueError("model names must not be blank")
        return value

    def is_served(self, today: dt.date | None = None) -> bool:
        """Whether Groq still serves this model (not shut down)."""
        return not self.lifecycle.is_shut_down(today)

    def serves_task(self, task_type: str) -> bool:
        """Whether the router may propose this model for `task_type` by itself."""
        return not self.only_for or task_type in self.only_for


class ResolvedModel(BaseModel):
    """The result of resolving a requested name: the model that will serve, and why."""

    model_config = ConfigDict(frozen=True)

    requested: str
    model: ModelInfo
    warning: str | None = None
    """Set when a shut-down model is served by its successor."""


class Catalog:
    """An immutable-by-convention view over the catalog entries, with alias resolution.

    Args:
        models: The entries. Later entries with the same id replace earlier ones.
        serve_successor: Serve a shut-down model's successor (with a warning) instead of
            refusing the request.
        today: Fixed date for lifecycle checks (tests); default: the current UTC date.
    """

    def __init__(
        self,
        models: Iterable[ModelInfo],
        *,
        serve_successor: bool = True,
        today: dt.date | None = None,
    ) -> None:
        self._models: dict[str, ModelInfo] = {}
        for m in models:
            self._models[m.id] = m
        self.serve_successor = serve_successor
        self._today = today
        self._lock = threading.Lock()
        self._account: frozenset[str] | None = None
        self._unserved: frozenset[str] = frozenset()
        self.version = 0
        """Bumped whenever what the account serves changes (the router re-binds on it)."""
        self._reindex()

    def _reindex(self) -> None:
        names: dict[str, str] = {}
        for m in self._models.values():
            names[m.id.lower()] = m.id
        for m in self._models.values():
            for alias in m.aliases:
                # An alias never shadows a real id.
                names.setdefault(alias.lower(), m.id)
        self._names = names

    # -- lookup -----------------------------------------------------------------------------

    @property
    def today(self) -> dt.date:
        return self._today or dt.datetime.now(dt.UTC).date()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._names

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)

    def __repr__(self) -> str:
        served = sum(1 for m in self._models.values() if self.is_served(m))
        source = "" if self._account is None else ", from the account's listing"
        return f"<Catalog [{len(self._models)} models, {served} served{source}]>"

    @property
    def models(self) -> list[ModelInfo]:
        """Every entry, served or not."""
        return list(self._models.values())

    def served(self) -> list[ModelInfo]:
        """The entries the account serves (by its listing; by the dates while none is known)."""
        return [m for m in self._models.values() if self.is_served(m)]

    def is_served(self, model: ModelInfo | str) -> bool:
        """Whether the account serves `model` (an entry, id or alias).

        The account's listing decides when one is known (`apply_account`), whatever the
        catalog's dates say; a model that answered 404 or `model_decommissioned` on every
        organisation is not served until a listing says otherwise. Without a listing, the
        lifecycle dates decide.
        """
        info = model if isinstance(model, ModelInfo) else self.get(model)
        if info.id in self._unserved:
            return False
        account = self._account
        if account is not None:
            return info.id in account
        return info.is_served(self.today)

    @property
    def account_known(self) -> bool:
        """Whether a listing of the account's models has been applied."""
        return self._account is not None

    def get(self, name: str) -> ModelInfo:
        """The entry for an id or alias, whatever its lifecycle.

        Raises:
            UnknownModelError: No entry or alias has that name.
        """
        model_id = self._names.get(name.lower()) if isinstance(name, str) else None
        if model_id is None:
            known = ", ".join(sorted(m.id for m in self.served()))
            raise UnknownModelError(
                f"Unknown model {name!r}: it is neither a catalog id nor an alias. "
                f"Served models: {known}.",
                model=str(name),
            )
        return self._models[model_id]

    def resolve(self, name: str) -> ResolvedModel:
        """The model that serves a request for `name`, following successors of shut-down ones.

        Raises:
            UnknownModelError: No entry or alias has that name.
            ModelRetiredError: The model is shut down and `serve_successor` is off, or it has no
                served successor.
        """
        model = self.get(name)
        if self.is_served(model):
            return ResolvedModel(requested=name, model=model)
        seen = {model.id}
        current = model
        gone = self._gone(model)
        while not self.is_served(current):
            successor = current.lifecycle.successor
            if not self.serve_successor or successor is None or successor not in self:
                raise ModelRetiredError(
                    f"Model {model.id!r} {gone}"
                    + (
                        f"; its successor is {successor!r} (serving it in its place is turned"
                        " off: set serve_successor=True or YMERA_SERVE_SUCCESSOR=1)."
                        if successor and not self.serve_successor
                        else "; no served successor is known."
                    ),
                    model=model.id,
                    successor=successor,
                )
            current = self.get(successor)
            if current.id in seen:
                raise ConfigurationError(f"Successor cycle in the catalog at {current.id!r}")
            seen.add(current.id)
        warning = f"Model {model.id!r} {gone}; serving {current.id!r} instead."
        return ResolvedModel(requested=name, model=current, warning=warning)

    def _gone(self, model: ModelInfo) -> str:
        """Why `model` is not served, for messages."""
        if model.id in self._unserved:
            return "answered 404 or model_decommissioned on every organisation of the account"
        if self._account is not None:
            return "is not in the account's model listing (GET /openai/v1/models)"
        return f"was shut down on {model.lifecycle.shutdown_on}"

    def fallback_chain(self, name: str) -> list[ModelInfo]:
        """The served models to try after `name`, in order, without repeats."""
        start = self.resolve(name).model
        chain: list[ModelInfo] = []
        seen = {start.id}
        for fb in start.fallbacks:
            if fb not in self:
                continue
            try:
                m = self.resolve(fb).model
            except ModelRetiredError:
                continue
            if m.id not in seen:
                seen.add(m.id)
                chain.append(m)
        return chain

    # -- changes ----------------------------------------------------------------------------

    def with_overrides(self, entries: Iterable[Mapping[str, Any]]) -> Catalog:
        """A new catalog with entries added or merged over existing ones (by id).

        An entry for a known id may give only the fields to change; a new id must give every
        required field.

        Raises:
            ConfigurationError: An entry is invalid, naming the model and the field.
        """
        models = dict(self._models)
        for raw in entries:
            if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
                raise ConfigurationError(f"Catalog override entry without an 'id': {raw!r}")
            base = models.get(raw["id"])
            merged: dict[str, Any] = base.model_dump(mode="json") if base else {}
            for k, v in raw.items():
                if isinstance(v, Mapping) and isinstance(merged.get(k), dict):
                    merged[k] = {**merged[k], **v}
                else:
                    merged[k] = v
            models[raw["id"]] = _parse_entry(merged, origin="override")
        return Catalog(models.values(), serve_successor=self.serve_successor, today=self._today)

    def refresh_from_api(self, payload: Mapping[str, Any]) -> Catalog:
        """A new catalog updated from Groq's `GET /openai/v1/models` answer.

        Known models take `context_window` and `max_completion_tokens` from the answer; a known
        model missing from the answer, or marked `active: false`, is marked shut down; an unknown
        active model is added with conservative limits (`conservative_limits`) until headers
        correct them.

        Raises:
            ConfigurationError: The answer has no `data` list.
        """
        listed = {
            mid: e for mid, e in listed_models(payload).items() if e.get("active") is not False
        }
        fresh = Catalog(self, serve_successor=self.serve_successor, today=self._today)
        fresh._merge_listed(listed)
        models: dict[str, ModelInfo] = {}
        for mid, m in fresh._models.items():
            if mid not in listed and m.is_served(fresh.today):
                lc = m.lifecycle.model_copy(update={"status": "shutdown"})
                m = m.model_copy(update={"lifecycle": lc})
            models[mid] = m
        return Catalog(models.values(), serve_successor=self.serve_successor, today=self._today)

    def conservative_limits(self) -> ModelLimits:
        """The smallest published free-plan limit of each kind in the catalog: the limits of a
        served model the catalog does not know, until Groq's headers and 429 texts say more."""

        def smallest(kind: str) -> int | None:
            values = [v for m in self._models.values() if (v := getattr(m.limits, kind))]
            return min(values) if values else None

        return ModelLimits(
            rpm=smallest("rpm"), rpd=smallest("rpd"), tpm=smallest("tpm"), tpd=smallest("tpd")
        )

    def _merge_listed(self, listed: Mapping[str, Mapping[str, Any]]) -> bool:
        """Take windows from the listing and add the chat models the catalog lacks (in place).

        Returns:
            Whether any entry changed.
        """
        # A new dict, swapped in whole: readers in other threads iterate the old one.
        models = dict(self._models)
        changed = False
        limits: ModelLimits | None = None
        for mid, live in listed.items():
            ctx = live.get("context_window")
            mct = live.get("max_completion_tokens")
            known = models.get(mid)
            if known is None and mid.lower() in self._names:
                continue  # an alias of a known model: its entry answers for it
            if known is not None:
                update: dict[str, Any] = {}
                if isinstance(ctx, int) and ctx > 0 and ctx != known.context_window:
                    update["context_window"] = ctx
                if isinstance(mct, int) and mct > 0 and mct != known.max_completion_tokens:
                    update["max_completion_tokens"] = mct
                if update:
                    models[mid] = known.model_copy(update=update)
                    changed = True
                continue
            if not is_chat_model(mid):
                continue
            limits = limits or self.conservative_limits()
            models[mid] = ModelInfo(
                id=mid,
                context_window=ctx if isinstance(ctx, int) and ctx > 0 else 8192,
                max_completion_tokens=mct if isinstance(mct, int) and mct > 0 else 8192,
                limits=limits,
                limits_note=(
                    "Served by the account but not in the catalog: the smallest free-plan limits"
                    " of the catalog until Groq's headers and 429 texts correct them."
                ),
                lifecycle=Lifecycle(status="preview"),
            )
            changed = True
        if changed:
            self._models = models
            self._reindex()
        return changed

    def apply_account(
        self,
        listed: Mapping[str, Mapping[str, Any]] | None,
        unserved: Iterable[str] = (),
    ) -> bool:
        """Record, in place, what the account serves; it outranks the lifecycle dates.

        Args:
            listed: Model id → its `GET /openai/v1/models` entry, over every organisation of
                the account (`None`: no listing is known; the dates decide). Models the catalog
                lacks are added with `conservative_limits`; known ones take the listing's
                `context_window` and `max_completion_tokens`.
            unserved: Ids that answered 404 or `model_decommissioned` on every organisation
                since the listing.

        Returns:
            Whether what the catalog answers changed.
        """
        with self._lock:
            changed = False
            account: frozenset[str] | None = None
            if listed is not None:
                active = {mid: e for mid, e in listed.items() if e.get("active") is not False}
                changed = self._merge_listed(active)
                account = frozenset(mid for mid in active if mid in self._models)
            gone = frozenset(unserved)
            if account != self._account or gone != self._unserved:
                self._account = account
                self._unserved = gone
                changed = True
            if changed:
                self.version += 1
            return changed


def is_chat_model(model_id: str) -> bool:
    """Whether a listed id is a chat model worth routing to (speech and guard models are not)."""
    return not (
        model_id.startswith(("whisper", "playai", "canopylabs", "distil-whisper"))
        or "guard" in model_id
    )


def listed_models(payload: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Model id → entry of a `GET /openai/v1/models` answer.

    Raises:
        ConfigurationError: The answer has no `data` list.
    """
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if not isinstance(data, list):
        raise ConfigurationError("GET /openai/v1/models answer has no 'data' list")
    return {
        str(d["id"]): d
        for d in data
        if isinstance(d, Mapping) and isinstance(d.get("id"), str) and d["id"].strip()
    }


def _parse_entry(raw: Mapping[str, Any], *, origin: str) -> ModelInfo:
    try:
        return ModelInfo.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<entry>'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigurationError(
            f"Invalid catalog entry {raw.get('id', '<no id>')!r} in {origin}: {problems}",
            setting="YMERA_CATALOG",
        ) from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(
            f"Catalog file not found: {path}", setting="YMERA_CATALOG"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(
            f"Catalog file {path} is not readable JSON: {exc}", setting="YMERA_CATALOG"
        ) from None


def _entries_of(doc: Any, origin: str) -> list[Mapping[str, Any]]:
    entries = doc.get("models") if isinstance(doc, Mapping) else doc
    if not isinstance(entries, list):
        raise ConfigurationError(
            f"{origin}: expected a list of models or an object with a 'models' list",
            setting="YMERA_CATALOG",
        )
    return entries


_DEFAULT: Catalog | None = None
_DEFAULT_LOCK = threading.Lock()


def _embedded_entries() -> list[Mapping[str, Any]]:
    text = resources.files("ymera_groq_plugin").joinpath("data/models.json").read_text("utf-8")
    return _entries_of(json.loads(text), "embedded catalog")


def default_catalog() -> Catalog:
    """The embedded catalog (parsed once per process)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Catalog(
                _parse_entry(e, origin="embedded catalog") for e in _embedded_entries()
            )
        return _DEFAULT


def load_catalog(
    path: str | Path | None = None,
    *,
    overrides: Iterable[Mapping[str, Any]] = (),
    serve_successor: bool = True,
    today: dt.date | None = None,
) -> Catalog:
    """The embedded catalog, extended or overridden by a JSON file and by entries.

    Args:
        path: A JSON file: a list of entries, or `{"models": [...]}`; entries merge by id.
        overrides: More entries, applied after the file.
        serve_successor: Serve a shut-down model's successor instead of refusing.
        today: Fixed date for lifecycle checks.

    Raises:
        ConfigurationError: The file is missing or invalid, or an entry lacks a field.
    """
    base = default_catalog()
    catalog = Catalog(base, serve_successor=serve_successor, today=today)
    if path is not None:
        p = Path(path).expanduser()
        catalog = catalog.with_overrides(_entries_of(_read_json(p), str(p)))
    overrides = list(overrides)
    if overrides:
        catalog = catalog.with_overrides(overrides)
    return catalog
