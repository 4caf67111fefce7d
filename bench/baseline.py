"""The original design's algorithm, in Python, for comparison: no Kafka, one query per scorecard.

Sequential pages of scorecards (LIMIT/OFFSET in created_at order), one query for the scores of
each scorecard, an optional delete, and one write per page per shard — what the reindexer replaced.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import psycopg

from reindex_common.clickhouse import connect_shard
from reindex_common.routing import shard_for
from reindex_common.schema import SCORE_COLUMNS, SCORECARD_COLUMNS
from reindex_common.selection import SCORECARD_FIELDS, SELECTION
from reindex_common.settings import Settings

_PAGE = f"""
SELECT {SCORECARD_FIELDS} {SELECTION}
ORDER BY s.created_at
LIMIT %(limit)s OFFSET %(offset)s
"""

_SCORES = """
SELECT criterion_id, numeric_value, not_applicable, comment, created_at, updated_at
FROM historic.scorecard_scores
WHERE customer_id = %s AND profile_id = %s AND scorecard_id = %s
"""


def run_baseline(
    settings: Settings,
    start: datetime,
    end: datetime,
    types: list[str],
    *,
    page_size: int = 500,
    clean_up: bool = False,
) -> tuple[int, int]:
    """Copy the selection the old way; return (scorecards, scores) written."""
    clients = [connect_shard(s, database=settings.clickhouse_database) for s in settings.shards]
    now = datetime.now(UTC)
    cards_total = scores_total = 0
    try:
        with (
            psycopg.connect(settings.director_dsn) as director,
            psycopg.connect(settings.historic_dsn) as historic,
        ):
            director.execute("SET TimeZone = 'UTC'")
            historic.execute("SET TimeZone = 'UTC'")
            offset = 0
            while True:
                params = {"start": start, "end": end, "types": types}
                page = director.execute(
                    _PAGE, params | {"limit": page_size, "offset": offset}
                ).fetchall()
                if not page:
                    break
                offset += len(page)
                cards: dict[int, list[list[Any]]] = defaultdict(list)
                scores: dict[int, list[list[Any]]] = defaultdict(list)
                for row in page:
                    shard = shard_for(row[0], len(clients))
                    cards[shard].append([*row, "baseline", now])
                    for s in historic.execute(_SCORES, (row[0], row[1], row[2])).fetchall():
                        scores[shard].append(
                            [
                                row[0],
                                row[1],
                                row[2],
                                s[0],
                                row[5],
                                1 if row[5] == "PROCESS" else 0,
                                row[7],
                                row[8],
                                s[1],
                                int(s[2]),
                                s[3],
                                s[4],
                                s[5],
                                "baseline",
                                now,
                            ]
                        )
                for shard, client in enumerate(clients):
                    if clean_up and cards[shard]:
                        keys = [(r[0], r[1], r[2]) for r in cards[shard]]
                        for table in ("scorecard_scores", "scorecards"):
                            client.command(
                                f"DELETE FROM {table} WHERE (customer_id, profile_id, "
                                "scorecard_id) IN (SELECT arrayJoin(%(k)s))",
                                parameters={"k": keys},
                            )
                    if cards[shard]:
                        client.insert(
                            "scorecards", cards[shard], column_names=list(SCORECARD_COLUMNS)
                        )
                    if scores[shard]:
                        client.insert(
                            "scorecard_scores", scores[shard], column_names=list(SCORE_COLUMNS)
                        )
                cards_total += len(page)
                scores_total += sum(len(v) for v in scores.values())
    finally:
        for client in clients:
            client.close()
    return cards_total, scores_total
