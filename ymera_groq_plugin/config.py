"""Configuration: keyword arguments first, then environment variables, then defaults.

Keys come from `GROQ_API_KEY`, `GROQ_API_KEY_2` … `GROQ_API_KEY_N` (every numbered one, gaps
allowed, duplicates dropped), each optionally labelled with its Groq organisation by `GROQ_ORG`
/ `GROQ_ORG_N`. Keys are `SecretStr` and shown only masked (`gsk_…a1b2`). The other settings
are `YMERA_*` variables (see `YmeraSettings`); a bad value raises `ConfigurationError` naming the
variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigurationError

__all__ = ["ApiKey", "YmeraSettings", "coerce_api_keys", "discover_keys", "mask_key"]

_KEY_VAR = re.compile(r"^GROQ_API_KEY(?:_(\d+))?$")


def mask_key(secret: str | SecretStr) -> str:
    """Show a key as `gsk_…a1b2`: enough to tell keys apart, never enough to use one."""
    raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if len(raw) < 12:
        return "…" + raw[-2:] if len(raw) >= 6 else "…"
    prefix = raw[:4] if raw[:4].isascii() else ""
    return f"{prefix}…{raw[-4:]}"


class ApiKey(BaseModel):
    """One Groq API key with its label and organisation.

    Keys of one organisation share one budget per model. A key without an organisation is
    treated as its own organisation (named after its label) until evidence says otherwise.
    """

    model_config = ConfigDict(frozen=True)

    secret: SecretStr
    label: str = Field(min_length=1)
    """A name safe to show and store (`key1`, `key2`, … by default)."""
    org: str | None = None
    """The Groq organisation, if known (`GROQ_ORG_N`)."""

    @property
    def organisation(self) -> str:
        """The organisation whose budget this key spends."""
        return self.org or f"org:{self.label}"

    @property
    def masked(self) -> str:
        return mask_key(self.secret)

    @field_validator("secret")
    @classmethod
    def _non_empty(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if not raw.strip():
            raise ValueError("an API key must not be empty")
        if raw != raw.strip() or any(c.isspace() for c in raw):
            raise ValueError("an API key must not contain whitespace")
        return v

    def __repr__(self) -> str:
        org = f" org={self.org}" if self.org else ""
        return f"<ApiKey {self.label}{org} {self.masked}>"

    __str__ = __repr__


def discover_keys(environ: Mapping[str, str] | None = None) -> list[ApiKey]:
    """Every Groq key in the environment, in number order, duplicates dropped.

    `GROQ_API_KEY` is key 1 (so `GROQ_API_KEY_1` is the same slot); `GROQ_ORG` / `GROQ_ORG_N`
    label the organisation of the key with the same number; `GROQ_KEY_LABEL_N` renames it.
    """
    env = os.environ if environ is None else environ
    numbered: dict[int, str] = {}
    for name, value in env.items():
        m = _KEY_VAR.match(name)
        if m and value.strip():
            n = int(m.group(1) or 1)
            if n in numbered and m.group(1) is None:
                continue  # GROQ_API_KEY_1 wins over GROQ_API_KEY when both are set
            numbered[n] = value.strip()
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for n in sorted(numbered):
        raw = numbered[n]
        if raw in seen:
            continue
        seen.add(raw)
        org = env.get(f"GROQ_ORG_{n}") or (env.get("GROQ_ORG") if n == 1 else None)
        label = env.get(f"GROQ_KEY_LABEL_{n}") or f"key{n}"
        try:
            keys.append(ApiKey(secret=SecretStr(raw), label=label, org=org or None))
        except ValidationError:
            var = "GROQ_API_KEY" if n == 1 else f"GROQ_API_KEY_{n}"
            raise ConfigurationError(f"{var} is not a valid API key", setting=var) from None
    return keys


_KEY_FORMS = 'a key string, a SecretStr, an ApiKey or a {"secret", "org", "label"} dict'
_DICT_FIELDS = frozenset({"secret", "org", "label"})


def coerce_api_keys(value: Any, *, setting: str = "api_keys") -> tuple[ApiKey, ...]:
    """Every documented form of `api_keys` as `ApiKey`s, in order, duplicates dropped.

    Items may be strings, `SecretStr`, `ApiKey` or `{"secret", "org", "label"}` dicts, mixed
    in one list (a single string or `SecretStr` is a list of one). An item without a label is
    labelled `key<position>` (1-based).

    Raises:
        ConfigurationError: An item is of another type, a dict has unknown fields or no
            `secret`, a key is empty or contains whitespace, or two keys share a label. The
            message names the item's position (and field names), never a key.
    """
    if value is None:
        return ()
    if isinstance(value, (str, SecretStr, ApiKey, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(
            f"{setting} must be a list of keys ({_KEY_FORMS} each), got {type(value).__name__}",
            setting=setting,
        )
    out: list[ApiKey] = []
    seen: set[str] = set()
    for i, item in enumerate(value, start=1):
        where = f"{setting} item {i}"
        key = _coerce_key(item, i, where, setting)
        raw = key.secret.get_secret_value()
        if raw in seen:
            continue
        seen.add(raw)
        out.append(key)
    labels = [k.label for k in out]
    dup = sorted({label for label in labels if labels.count(label) > 1})
    if dup:
        raise ConfigurationError(
            f"{setting}: key labels must be unique ({', '.join(map(repr, dup))} repeated)",
            setting=setting,
        )
    return tuple(out)


def _coerce_key(item: Any, position: int, where: str, setting: str) -> ApiKey:
    if isinstance(item, ApiKey):
        return item
    fields: dict[str, Any]
    if isinstance(item, (str, SecretStr)):
        fields = {"secret": item}
    elif isinstance(item, Mapping):
        names = {str(k) for k in item}
        unknown = sorted(names - _DICT_FIELDS)
        if unknown or "secret" not in names:
            problem = f"unknown fields {unknown}" if unknown else "no 'secret'"
            raise ConfigurationError(
                f'{where}: a key dict takes "secret", "org" and "label"; it has {problem}',
                setting=setting,
            )
        fields = dict(item)
    else:
        raise ConfigurationError(
            f"{where}: expected {_KEY_FORMS}, got {type(item).__name__}", setting=setting
        )
    secret = fields["secret"]
    if not isinstance(secret, (str, SecretStr)):
        raise ConfigurationError(
            f"{where}: 'secret' must be a string or SecretStr, got {type(secret).__name__}",
            setting=setting,
        )
    for name in ("org", "label"):
        v = fields.get(name)
        if v is not None and not (isinstance(v, str) and v.strip()):
            raise ConfigurationError(
                f"{where}: {name!r} must be a non-empty string", setting=setting
            )
    try:
        return ApiKey(
            secret=secret if isinstance(secret, SecretStr) else SecretStr(secret),
            label=fields.get("label") or f"key{position}",
            org=fields.get("org") or None,
        )
    except ValidationError as exc:
        # The message only: pydantic's text would echo the input, which is a key.
        reason = "; ".join(
            str(e["msg"]).removeprefix("Value error, ") for e in exc.errors(include_input=False)
        )
        raise ConfigurationError(f"{where}: {reason}", setting=setting) from None


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ymera-groq"


_ENV_NAMES: dict[str, str] = {
    "api_keys": "GROQ_API_KEY[_N]",
    "base_url": "GROQ_BASE_URL",
}


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return value


class YmeraSettings(BaseSettings):
    """Every setting of the package; keyword arguments win over environment variables.

    Environment variables are `YMERA_<FIELD>` (upper case), except `GROQ_API_KEY[_N]`,
    `GROQ_ORG[_N]` and `GROQ_BASE_URL`, which are Groq's own conventions.
    """

    model_config = SettingsConfigDict(
        env_prefix="YMERA_",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        validate_default=True,
    )

    api_keys: tuple[ApiKey, ...] = ()
    """Groq keys; default: discovered from `GROQ_API_KEY`, `GROQ_API_KEY_2`, …"""
    base_url: str = Field(
        default="https://api.groq.com",
        validation_alias="GROQ_BASE_URL",
    )
    """Groq's base URL (the SDK appends `/openai/v1/...`)."""
    redis_url: str | None = None
    """`redis://…`, `rediss://…`, `unix://…`, `redis+cluster://h:p[,h:p…]` or
    `redis+sentinel://h:p[,h:p…]/service[/db]`; absent: embedded mode (no server needed)."""
    data_dir: Path = Field(default_factory=_default_data_dir)
    """Where the persistent cache tier and the learning store live."""
    namespace: str = Field(default="default", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    """Tenant namespace: separates cache entries and Redis keys of different tenants."""

    cache_enabled: bool = True
    cache_l1_max_entries: int = Field(default=10_000, gt=0)
    cache_l1_ttl: float = Field(default=300.0, gt=0)
    cache_l2_max_entries: int = Field(default=100_000, gt=0)
    cache_l2_ttl: float = Field(default=3600.0, gt=0)
    cache_l3_max_entries: int = Field(default=1_000_000, gt=0)
    cache_l3_ttl: float = Field(default=7 * 86400.0, gt=0)
    cache_sampled: bool = False
    """Also cache requests that sample (temperature > 0 without a seed)."""

    alert_thresholds: Annotated[tuple[float, ...], NoDecode] = (0.8, 0.9, 0.95)
    """Fractions of a limit at which warning, critical and emergency alerts fire."""
    catalog_path: Path | None = Field(default=None, validation_alias="YMERA_CATALOG")
    """A JSON file of catalog entries that extend or override the embedded catalog."""
    policy_path: Path | None = Field(default=None, validation_alias="YMERA_POLICY")
    """A JSON file that overrides the routing policy (task matrix, agent classes)."""
    serve_successor: bool = True
    """Serve the successor (with a warning) of a model the account no longer serves (not in
    its listing, or 404 / `model_decommissioned` on every organisation) instead of refusing."""
    allow_model_fallback: bool = False
    """Let `model="X"` be answered by X's catalog fallbacks when X has no room or fails; off:
    pinned means pinned (X, waiting up to `max_wait`, else `QuotaExhaustedError`)."""
    models_refresh_interval: float = Field(default=3600.0, ge=0)
    """Seconds between listings of the account's models (`GET /openai/v1/models`, one key per
    organisation, in the background); also re-listed right after a 404 or
    `model_decommissioned`. 0 turns discovery off (the catalog's dates decide)."""
    context_margin: float = Field(default=0.9, gt=0, le=1)
    """Share of a context window a request may fill."""
    max_wait: float = Field(default=10.0, ge=0)
    """Seconds a request may wait for quota before trying the next model."""
    request_timeout: float = Field(default=60.0, gt=0)
    """Seconds for one upstream call."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries of one model on 5xx, 498 and timeouts (429 moves to another key or model)."""
    fallback_models: Annotated[tuple[str, ...], NoDecode] = ()
    """LiteLLM model strings to use when every Groq model is out (e.g. `mistral/mistral-small`)."""
    exploration_rate: float = Field(default=0.1, ge=0, le=1)
    """How often the learner tries a model other than its current best."""
    quality_floor: float = Field(default=0.5, ge=0, le=1)
    """Mean answer quality (0..1) under which a model's speed stops counting for the learner,
    when another candidate of the same (agent, task) scores at or above it."""
    learning_recent_max: int = Field(default=10_000, gt=0)
    """Recent executions kept in memory (with Redis), so feedback works while Redis is away."""

    @model_validator(mode="before")
    @classmethod
    def _discover(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("api_keys"):
            data = {**data, "api_keys": tuple(discover_keys())}
        return data

    @field_validator("api_keys", mode="before")
    @classmethod
    def _coerce_keys(cls, value: Any) -> Any:
        return coerce_api_keys(value)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("expected an http(s) URL such as https://api.groq.com")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from .storage.redis_url import parse_redis_url

        try:
            parse_redis_url(value)
        except ConfigurationError as exc:
            # Settings errors never echo a value (it may hold a password the mask misses).
            raise ValueError(f"invalid Redis URL: {exc.detail or 'malformed'}") from None
        return value

    @field_validator("alert_thresholds", "fallback_models", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("alert_thresholds")
    @classmethod
    def _thresholds(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0 < v <= 1 for v in value) or list(value) != sorted(set(value)):
            raise ValueError("expected increasing fractions in (0, 1], e.g. 0.8,0.9,0.95")
        return value

    @field_validator("data_dir", "catalog_path", "policy_path")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _configuration_error(exc, set(values)) from None

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: everything runs in-process and on local files."""
        return self.redis_url is None

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "api_keys":
                yield name, [k.masked for k in self.api_keys]
            elif name == "redis_url" and value:
                yield name, _hide_password(str(value))
            else:
                yield name, value


def _hide_password(url: str) -> str:
    from .storage.redis_url import mask_redis_url

    return mask_redis_url(url)


def _configuration_error(exc: ValidationError, given: set[str]) -> ConfigurationError:
    parts: list[str] = []
    first: str | None = None
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "settings"
        if field in given:
            where = f"argument {field!r}"
        elif field not in YmeraSettings.model_fields:
            where = f"environment variable {field}"  # the loc is the variable's alias
        else:
            alias = YmeraSettings.model_fields.get(field)
            env = _ENV_NAMES.get(field) or (
                alias.validation_alias
                if alias is not None and isinstance(alias.validation_alias, str)
                else f"YMERA_{field.upper()}"
            )
            where = f"environment variable {env}"
        first = first or where
        msg = str(err["msg"]).removeprefix("Value error, ")
        # Never echo the offending value: it may be a key.
        parts.append(f"{where}: {msg}")
    return ConfigurationError("Invalid configuration: " + "; ".join(parts), setting=first)
