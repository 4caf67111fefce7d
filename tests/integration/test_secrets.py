"""No password leaves the process (issue 11): a real job run with a password in every DSN form
libpq accepts, in the shard URLs and in the SASL settings, then every output, every log (at
debug level) and every reindexer topic searched for them.

Postgres here uses trust authentication, so the passwords are carried everywhere but never
checked: what matters is where the text goes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

from fix_services import settings_env
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from devstack.stack import Process, StackState
from reindex_common.kafka import existing_topics, read_topic
from reindex_common.seed import SeedPlan, seed
from reindex_common.settings import Settings

SECRETS = {
    "key=value DSN": "kv-Pw-7f3a'x",
    "?password= URL": "q-Pw-91bc",
    "multi-host URL": "mh-Pw-c0d2",
    "user part URL": "u-Pw-55e1",
    "shard URL": "sh-Pw-8d4e",
    "SASL": "sasl-Pw-e6a9",
}


def _forms(secret: str) -> set[str]:
    """The secret as it could appear in text: raw, and as written in URLs and libpq strings."""
    return {secret, quote(secret, safe=""), secret.replace("'", "\\'")}


def _dsn_forms(dsn: str) -> dict[str, str]:
    params = conninfo_to_dict(dsn)
    host, port, db = params.get("host", "127.0.0.1"), params.get("port", "5432"), params["dbname"]
    user = params.get("user", "postgres")
    return {
        "kv": make_conninfo("", **params, password=SECRETS["key=value DSN"]),
        "query": f"postgresql://{user}@{host}:{port}/{db}?password={SECRETS['?password= URL']}",
        "multi": (
            f"postgresql://{user}:{SECRETS['multi-host URL']}@{host}:{port},{host}:{port}"
            "/no_such_database_for_secrets"
        ),
        "user": f"postgresql://{user}:{SECRETS['user part URL']}@{host}:{port}/no_such_db_2",
    }


def _with_credentials(urls: tuple[str, ...]) -> tuple[str, list[str]]:
    """Shard URLs carrying a password: the stack's own when it has one, else ours (the front
    ignores credentials it does not check)."""
    out, found = [], []
    for url in urls:
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
            out.append(url)
        else:
            out.append(url.replace("://", f"://reindex:{SECRETS['shard URL']}@", 1))
            found.append(SECRETS["shard URL"])
    return ",".join(out), found


def _run(settings: Settings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reindex", "--debug", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_no_password_in_any_output_log_or_topic(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    dsns = _dsn_forms(pipeline_settings.director_dsn)
    plan = SeedPlan(300, seed=5)
    seed(pipeline_settings.director_dsn, pipeline_settings.director_dsn, plan)
    shards, shard_secrets = _with_credentials(
        tuple(pipeline_settings.clickhouse_shards.get_secret_value().split(","))
    )
    settings = pipeline_settings.replace(
        pg_dsn=dsns["kv"],
        historic_pg_dsn=dsns["query"],
        clickhouse_shards=shards,
        kafka_sasl_username="reindex",
        kafka_sasl_password=SECRETS["SASL"],
    )
    secrets = {*SECRETS.values(), *shard_secrets}
    rng = ["--start", plan.start.isoformat(), "--end", plan.end.isoformat()]
    texts: dict[str, str] = {}

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "reindex", "--debug", "consume", "--worker-id", "secrets-1"],
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        produced = _run(settings, "produce", *rng, "--types", "PROCESS,CONVERSATION",
                        "--job-id", "secrets-ok")  # fmt: skip
        assert produced.returncode == 0, produced.stderr
        assert "settings: pg_dsn=" in produced.stderr  # the line that leaked before
        texts["produce"] = produced.stdout + produced.stderr
        status = _run(settings, "status", "secrets-ok", "--wait", "--timeout", "600", "--verify")
        assert status.returncode == 0, status.stdout + status.stderr
        texts["status --wait --verify"] = status.stdout + status.stderr
        verified = _run(settings, "verify", *rng, "--types", "PROCESS,CONVERSATION")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        texts["verify"] = verified.stdout + verified.stderr

        # A job that fails on its historic connection (multi-host URL): the reason reaches the
        # jobs topic and `status`.
        failing = settings.replace(historic_pg_dsn=dsns["multi"])
        failed = _run(failing, "produce", *rng, "--job-id", "secrets-failed")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "***" in failed.stderr
        texts["failing produce"] = failed.stdout + failed.stderr
        shown = _run(settings, "status", "secrets-failed")
        texts["status of the failed job"] = shown.stdout + shown.stderr
        # A failing command with the password in the user part of the URL.
        bad_verify = _run(settings.replace(pg_dsn=dsns["user"]), "verify", *rng)
        assert bad_verify.returncode == 1, bad_verify.stdout + bad_verify.stderr
        assert "***" in bad_verify.stderr
        texts["failing verify"] = bad_verify.stdout + bad_verify.stderr
        # Masking used to raise on a multi-host URL: the start-up line of `serve` shows it.
        texts["settings line of a multi-host DSN"] = _run(
            settings.replace(pg_dsn=dsns["multi"]), "produce", *rng, "--job-id", "secrets-mh"
        ).stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    texts["worker log (debug)"] = log.read_text(errors="replace")
    assert "DEBUG" in texts["worker log (debug)"]

    topics = sorted(t for t in existing_topics(settings) if t.startswith(settings.topic_prefix))
    assert settings.jobs_topic in topics
    assert settings.written_topic in topics
    for topic in topics:
        texts[f"topic {topic}"] = "\n".join(
            v.decode(errors="replace") for v in read_topic(pipeline_settings, topic)
        )
    assert any("secrets-failed" in t and "failed" in t for t in texts.values())

    leaks = [
        f"{form!r} ({name}) in {where}"
        for where, text in texts.items()
        for secret in secrets
        for form in _forms(secret)
        for name in [next((n for n, s in SECRETS.items() if s == secret), "stack shard")]
        if form in text
    ]
    assert leaks == []


def test_the_dev_stack_state_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    state = StackState(
        str(tmp_path), "127.0.0.1", "postgresql://u:pw@h/d", False, Process("k", 1, 1, [], "l")
    )
    previous = os.umask(0o022)
    try:
        state.save()
    finally:
        os.umask(previous)
    path = tmp_path / "stack.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["pg_dsn"] == "postgresql://u:pw@h/d"
