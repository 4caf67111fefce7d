"""The ``reindex`` command line: the one entry point over the producer, the consumer and tools."""
