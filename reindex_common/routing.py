"""Shard placement (SPEC §3): a customer's rows live on ``cityHash64(customer_id) % shards``.

This is the placement a ClickHouse ``Distributed`` table with sharding key
``cityHash64(customer_id)`` and equal weights gives. ``clickhouse-cityhash`` implements the same
CityHash64 (v1.0.2) as the engine; ``tests/integration/test_routing.py`` proves them equal.
"""

from __future__ import annotations

from functools import lru_cache

from clickhouse_cityhash.cityhash import CityHash64


def city_hash64(customer_id: str) -> int:
    """ClickHouse's ``cityHash64`` of a String: CityHash64 of its UTF-8 bytes."""
    return int(CityHash64(customer_id.encode("utf-8")))


@lru_cache(maxsize=65_536)
def shard_for(customer_id: str, shard_count: int) -> int:
    """The index of the shard holding ``customer_id``'s scorecards and scores."""
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    return city_hash64(customer_id) % shard_count
