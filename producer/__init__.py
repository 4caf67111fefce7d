"""The producer: pages scorecards out of Postgres onto Kafka; the request service."""
