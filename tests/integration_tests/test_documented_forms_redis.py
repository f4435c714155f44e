"""`TieredCache(redis_url=..., data_dir=..., namespace=...)` as the README documents it, on a
real Redis (the unit tests run without sockets)."""

from __future__ import annotations

from pathlib import Path

from langchain_core.outputs import Generation

from ymera_groq_plugin import TieredCache
from ymera_groq_plugin.config import YmeraSettings


def test_tiered_cache_from_arguments(redis_url: str, tmp_path: Path) -> None:
    def make() -> TieredCache:
        return TieredCache(redis_url=redis_url, data_dir=tmp_path / "args", namespace="tenant")

    cache, other = make(), make()
    try:
        assert repr(cache) == "<TieredCache l1+l2:redis+l3:sqlite namespace=tenant>"
        cache.update("p", "llm", [Generation(text="x")])
        # Another cache on the same Redis and directory (an empty L1) finds it below.
        assert other.lookup("p", "llm") == [Generation(text="x")]
    finally:
        cache.close()
        other.close()
    assert (tmp_path / "args" / "cache.db").exists()
    built = TieredCache.from_settings(YmeraSettings(data_dir=tmp_path / "s", cache_enabled=False))
    assert not built.enabled
