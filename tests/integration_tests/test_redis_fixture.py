from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aredis

from ymera_groq_plugin.errors import StorageError
from ymera_groq_plugin.storage import astorage_errors, redis_client

pytestmark = pytest.mark.redis


async def test_round_trip_stop_and_restart(redis_server: Any, redis_url: str) -> None:
    client = redis_client(redis_url)
    try:
        await client.set("ymera:probe", "1")
        assert await client.get("ymera:probe") == b"1"

        redis_server.stop()
        with pytest.raises(StorageError) as info:
            async with astorage_errors("redis", "get"):
                await client.get("ymera:probe")
        assert isinstance(info.value.storage_error, aredis.RedisError | OSError)

        redis_server.start()
        # The restarted server kept nothing (no persistence) and the same client reconnects.
        assert await client.get("ymera:probe") is None
        await client.set("ymera:probe", "2")
        assert await client.get("ymera:probe") == b"2"
    finally:
        await client.aclose()
