"""The consumer: a Faust worker group writing scorecards to their ClickHouse shards."""
