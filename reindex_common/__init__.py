"""What the producer and the consumer share: settings, messages, errors, data access, routing."""
