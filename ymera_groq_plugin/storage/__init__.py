"""Storage backends, picked by URL: `memory://`, `sqlite:///path/to/file.db`, `redis://host/0`
(also `redis+cluster://h1:p1,h2:p2` and `redis+sentinel://h1:p1,h2:p2/service`: see
`storage.redis_url`).

This is the one place that chooses a store: `store_from_url` builds the bare backend a URL names,
and `resilient_store_from_url` the one a component runs on (memory, a file, or Redis behind the
fallback of `storage.resilient`). The quota manager, the key pool and the learner get their
stores from here; nothing in `storage` imports them back.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Literal, overload
from urllib.parse import urlparse

from ..clock import Clock
from ..errors import ConfigurationError
from .base import KEY_PREFIX, astorage_errors, dumps, loads, redis_client, storage_errors
from .learning_base import LearningStore
from .quota_base import KeyStateStore, QuotaStore
from .redis_url import mask_redis_url

__all__ = [
    "KEY_PREFIX",
    "KeyStateStore",
    "LearningStore",
    "QuotaStore",
    "astorage_errors",
    "dumps",
    "loads",
    "redis_client",
    "resilient_store_from_url",
    "storage_errors",
    "store_from_url",
]

Concern = Literal["quota", "keys", "cache", "learning"]

# (concern, scheme) -> "module:Class". Imported lazily so a missing extra (redis) fails only
# when that backend is asked for, with an install hint.
_STORES: dict[tuple[str, str], str] = {
    ("quota", "memory"): "ymera_groq_plugin.storage.memory:MemoryQuotaStore",
    ("quota", "redis"): "ymera_groq_plugin.storage.redis_quota:RedisQuotaStore",
    ("keys", "memory"): "ymera_groq_plugin.storage.memory:MemoryKeyStateStore",
    ("keys", "redis"): "ymera_groq_plugin.storage.redis_quota:RedisKeyStateStore",
    ("cache", "sqlite"): "ymera_groq_plugin.storage.sqlite_cache:SqliteCacheStore",
    ("cache", "redis"): "ymera_groq_plugin.storage.redis_cache:RedisCacheStore",
    ("learning", "memory"): "ymera_groq_plugin.storage.sqlite_learning:SqliteLearningStore",
    ("learning", "sqlite"): "ymera_groq_plugin.storage.sqlite_learning:SqliteLearningStore",
    ("learning", "redis"): "ymera_groq_plugin.storage.redis_learning:RedisLearningStore",
}
_SCHEMES = {
    "memory": "memory",
    "sqlite": "sqlite",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
    "redis+sentinel": "redis",
    "rediss+sentinel": "redis",
}


def store_from_url(concern: Concern, url: str, **kwargs: Any) -> Any:
    """Build the store for a concern from a URL.

    Args:
        concern: `"quota"`, `"keys"`, `"cache"` or `"learning"`.
        url: `memory://`, `sqlite:///abs/path.db` (or `sqlite:///:memory:`), `redis://…`.
        **kwargs: Passed to the store's `from_url` constructor (clock, namespace, …).

    Raises:
        ConfigurationError: The scheme is unknown or the concern has no such backend.
    """
    scheme = urlparse(url).scheme.lower()
    backend = _SCHEMES.get(scheme)
    target = _STORES.get((concern, backend)) if backend else None
    if target is None:
        options = sorted(s for (c, s) in _STORES if c == concern)
        raise ConfigurationError(
            f"No {concern} store for URL scheme {scheme!r} in {mask_redis_url(url)!r}; use one of: "
            + ", ".join(f"{s}://" for s in options)
        )
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name).from_url(url, **kwargs)


@overload
def resilient_store_from_url(
    concern: Literal["quota"], url: str, *, namespace: str, clock: Clock = ..., **options: Any
) -> QuotaStore: ...
@overload
def resilient_store_from_url(
    concern: Literal["keys"], url: str, *, namespace: str, clock: Clock = ..., **options: Any
) -> KeyStateStore: ...
@overload
def resilient_store_from_url(
    concern: Literal["learning"], url: str, *, namespace: str, clock: Clock = ..., **options: Any
) -> LearningStore: ...
def resilient_store_from_url(
    concern: Literal["quota", "keys", "learning"],
    url: str,
    *,
    namespace: str,
    clock: Clock = time.time,
    **options: Any,
) -> QuotaStore | KeyStateStore | LearningStore:
    """The store a component runs on: memory, a file, or Redis behind its fallback.

    A `memory://` or `sqlite://` store is returned as `store_from_url` builds it: it lives in
    this process (or its file), so there is nothing to fall back from. A Redis store comes
    wrapped in its `storage.resilient` counterpart, which serves from a conservative local
    share (quota), a local mirror (keys) or an ordered buffer (learning) while Redis is
    unreachable, and catches Redis up once it answers again.

    Args:
        concern: `"quota"`, `"keys"` or `"learning"` (the cache tiers have breakers of their
            own and are built by `cache`).
        url: `memory://`, `sqlite:///abs/path.db` (learning only) or `redis://…`.
        namespace: The tenant namespace (prefix of the shared store's keys).
        clock: Wall-clock seconds, for the fallback's breaker and local share.
        **options: Passed to the resilient wrapper (e.g. `remember` for learning); unused when
            the store is not wrapped.

    Raises:
        ConfigurationError: The scheme is unknown or the concern has no such backend.
    """
    store = store_from_url(concern, url, namespace=namespace)
    if _SCHEMES.get(urlparse(url).scheme.lower()) != "redis":
        return store  # type: ignore[no-any-return]
    # Imported here like the backends above: `import ymera_groq_plugin.storage` (which the key
    # pool does) stays cheap when no Redis is configured.
    from .resilient import ResilientKeyStateStore, ResilientLearningStore, ResilientQuotaStore

    if concern == "quota":
        return ResilientQuotaStore(store, clock=clock, **options)
    if concern == "keys":
        return ResilientKeyStateStore(store, clock=clock, **options)
    return ResilientLearningStore(store, clock=clock, **options)
