"""Our shard routing equals ClickHouse's own cityHash64 placement."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client
from fix_services import Services

from reindex_common.clickhouse import connect_shard
from reindex_common.routing import city_hash64, shard_for
from reindex_common.settings import Settings

CUSTOMERS = [
    "",
    "a",
    "acme-corp",
    "kunde-müller-gmbh",
    "東京-support",
    "o'brien & sons",
    'quote"back\\slash',
    "x" * 1000,
    *[f"customer-{i}" for i in range(200)],
]


def _engine_hashes(client: Client) -> dict[str, int]:
    result = client.query(
        "SELECT c, cityHash64(c) FROM (SELECT arrayJoin({cs:Array(String)}) AS c)",
        parameters={"cs": CUSTOMERS},
    )
    return {row[0]: int(row[1]) for row in result.result_rows}


def test_city_hash_equals_the_engine(services: Services) -> None:
    settings = Settings(clickhouse_shards=",".join(services.shard_urls))
    client = connect_shard(settings.shards[0])
    try:
        engine = _engine_hashes(client)
    finally:
        client.close()
    assert len(engine) == len(set(CUSTOMERS))
    for customer, expected in engine.items():
        assert city_hash64(customer) == expected, customer
        for shards in (1, 2, 3, 7):
            assert shard_for(customer, shards) == expected % shards
    assert {shard_for(c, 2) for c in CUSTOMERS} == {0, 1}
