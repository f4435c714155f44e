"""Storage backends, picked by URL: `memory://`, `sqlite:///path/to/file.db`, `redis://host/0`
(also `redis+cluster://h1:p1,h2:p2` and `redis+sentinel://h1:p1,h2:p2/service`: see
`storage.redis_url`)."""

from __future__ import annotations

import importlib
from typing import Any, Literal
from urllib.parse import urlparse

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
