"""The embedded local stack for the demo and the tests; never used in production."""
