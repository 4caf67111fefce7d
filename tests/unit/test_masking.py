"""Every DSN form libpq accepts is masked, masking never raises, and log records at every level
lose the secrets the settings hold (issue 11)."""

from __future__ import annotations

import logging

import pytest

from reindex_common.masking import HIDDEN, mask_dsn, mask_url, redact
from reindex_common.settings import Settings

FORMS = [
    ("postgresql://app:s3cret-url@db:5432/prod", "s3cret-url"),
    ("postgresql://app:s3cret-multi@h1:5432,h2:5433/prod", "s3cret-multi"),
    ("postgresql://app:s3cret-multi2@h1,h2/prod", "s3cret-multi2"),
    ("postgresql://app@db/prod?password=s3cret-query&sslmode=disable", "s3cret-query"),
    ("postgres://app:p%40ss-encoded@db/prod", "p%40ss-encoded"),
    ("host=db user=app password=s3cret-kv dbname=prod", "s3cret-kv"),
    ("host=db user=app password='s3cret kv quoted' dbname=prod", "s3cret kv quoted"),
    ("host=db user=app password='it\\'s-s3cret' dbname=prod", "s3cret"),
    ("postgresql://app@db/prod?sslpassword=s3cret-ssl", "s3cret-ssl"),
]


@pytest.mark.parametrize(("dsn", "secret"), FORMS)
def test_every_libpq_form_is_masked(dsn: str, secret: str) -> None:
    for masked in (mask_dsn(dsn), mask_url(dsn)):
        assert secret not in masked
        assert "***" in masked
        assert "db" in masked or "h1" in masked  # still says where


@pytest.mark.parametrize("text", ["host=h password=sec ret", "", "::::", "postgresql://[", "\0"])
def test_masking_never_raises(text: str) -> None:
    assert "sec ret" not in mask_dsn(text)
    assert isinstance(mask_url(text), str)
    assert mask_dsn("host=h password=sec ret") == HIDDEN


def test_urls_without_password_are_left_alone() -> None:
    assert mask_dsn("postgresql://postgres@h:5432/db") == "postgresql://postgres@h:5432/db"
    assert mask_url("http://u:pw-x@h:8123") == "http://u:***@h:8123"
    assert mask_url("https://h:8443") == "https://h:8443"


def test_settings_describe_masks_every_form() -> None:
    for dsn, secret in FORMS:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            pg_dsn=dsn,
            historic_pg_dsn=dsn,
            clickhouse_shards="http://u:shard-s3cret@a:8123",
            kafka_sasl_password="sasl-s3cret",  # noqa: S106
        )
        text = " ".join(f"{k}={v}" for k, v in settings.describe().items())
        for hidden in (secret, "shard-s3cret", "sasl-s3cret"):
            assert hidden not in text


def test_log_records_at_every_level_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    Settings(  # type: ignore[call-arg]
        _env_file=None,
        pg_dsn="host=db password=log-s3cret-pg",
        clickhouse_shards="http://u:log-s3cret-ch@a:8123",
        kafka_sasl_password="log-s3cret-sasl",  # noqa: S106
    )
    log = logging.getLogger("reindex.test_masking")
    with caplog.at_level(logging.DEBUG):
        log.debug("dsn %s", "host=db password=log-s3cret-pg")
        log.info("url http://u:log-s3cret-ch@a:8123")
        log.warning("sasl %r", {"sasl.password": "log-s3cret-sasl"})
        try:
            raise RuntimeError("boom with log-s3cret-pg inside")
        except RuntimeError:
            log.exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "log-s3cret" not in text
    assert text.count("***") >= 4
    assert redact("x log-s3cret-sasl y") == "x *** y"


def test_redacted_records_format_under_faust_s_formatter() -> None:
    """Faust's workers log through mode's formatter, which turns a record's args into a tuple:
    a redacted record must still format (args ``()``, not ``None``), or every line of a worker
    becomes a 'Logging error' with its stack."""
    from mode.utils.logging import ExtensionFormatter  # noqa: PLC0415

    Settings(_env_file=None, pg_dsn="host=db password=fmt-s3cret")  # type: ignore[call-arg]
    log = logging.getLogger("reindex.test_masking.mode")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        log.warning("Starting...")
        log.warning("batch %d: %s", 1, "host=db password=fmt-s3cret")
    finally:
        log.removeHandler(handler)
    formatter = ExtensionFormatter(fmt="%(message)s")
    lines = [formatter.format(record) for record in records]
    assert lines == ["Starting...", "batch 1: host=db password=***"]


def test_failure_reasons_and_tracebacks_are_redacted() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from pydantic import TypeAdapter  # noqa: PLC0415

    from reindex_common.jobs import JobCheckpoint  # noqa: PLC0415
    from reindex_common.messages import dlq_message  # noqa: PLC0415

    Settings(_env_file=None, pg_dsn="host=db password=reason-s3cret")  # type: ignore[call-arg]
    dlq = dlq_message(
        reason="shard said reason-s3cret",
        service="t",
        topic="t",
        partition=0,
        offset=0,
        key=None,
        value=b"",
    )
    assert "reason-s3cret" not in dlq.model_dump_json()
    error = TypeAdapter(JobCheckpoint.model_fields["error"].annotation)
    assert error.validate_python("cannot connect: reason-s3cret") == "cannot connect: ***"

    crash = (
        "from reindex_common.masking import install_excepthooks\n"
        "from reindex_common.settings import Settings\n"
        "install_excepthooks()\n"
        "Settings(_env_file=None, pg_dsn='host=db password=crash-s3cret')\n"
        "raise RuntimeError('bug with crash-s3cret')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", crash], capture_output=True, text=True, check=False, timeout=60
    )
    assert "RuntimeError: bug with ***" in result.stderr
    assert "crash-s3cret" not in result.stderr
