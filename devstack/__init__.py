"""The embedded local stack for the demo and the tests; never used in production."""

# How the stack hands each ClickHouse front its password: the environment, which only the
# process's owner can read (a command line is visible to every user of the machine).
PASSWORD_ENV = "CLICKHOUSE_HTTP_PASSWORD"  # noqa: S105 - the variable's name, not a password
