"""``reindex``: one console command with subcommands (SPEC §5).

Only :class:`ReindexError` is caught here: it becomes one line on stderr and its exit code (2 for
bad input). Usage errors become one line and exit 2. Anything else is a bug and keeps its traceback;
``--debug`` shows the traceback of our own errors too.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from producer.cli_options import build_request, job_options, max_lag_option, selection_options
from reindex import cli_types
from reindex.dlq_commands import dlq
from reindex.jobs_cancel import cancel as jobs_cancel
from reindex.output import emit_json, output_option, say
from reindex_common.errors import BadInputError, NotCleanError, ReindexError
from reindex_common.masking import install_excepthooks, redact
from reindex_common.messages import ReindexRequest
from reindex_common.settings import Settings, load_settings

log = logging.getLogger("reindex")


class _Context:
    debug = False


def _settings() -> Settings:
    return load_settings()


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Client libraries are chatty at INFO; their warnings still show.
    for noisy in ("aiokafka", "kafka", "faust", "mode", "urllib3", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(
    package_name="scorecard-reindexer", prog_name="reindex", message="%(prog)s %(version)s"
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option(
    "--log-level",
    default="INFO",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level of the reindexer's own messages (stderr).",
)
def cli(debug: bool, log_level: str) -> None:
    """Reindex scorecards from Postgres into a sharded ClickHouse through Kafka."""
    _Context.debug = debug
    _configure_logging("DEBUG" if debug else log_level)


# --- schema ------------------------------------------------------------------------------------


@cli.group()
def schema() -> None:
    """Create the target (and source) tables."""


@schema.command("init")
@click.option("--source", is_flag=True, help="Also create the Postgres source tables of SPEC §2.")
def schema_init(source: bool) -> None:
    """Create the ClickHouse database and tables on every shard (idempotent)."""
    from reindex_common.clickhouse import init_target_schema  # noqa: PLC0415
    from reindex_common.pg import init_source_schema  # noqa: PLC0415

    settings = _settings()
    if source:
        init_source_schema(settings.director_dsn, settings.historic_dsn)
        click.echo(
            "source tables ready: director.scorecard_template_revisions, "
            "director.scorecards, historic.scorecard_scores"
        )
    init_target_schema(settings.shards, settings.clickhouse_database)
    click.echo(
        f"target tables ready on {len(settings.shards)} shard(s) in database "
        f"{settings.clickhouse_database}: scorecards, scorecard_scores"
    )


# --- seed --------------------------------------------------------------------------------------


def _positive(_ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value < 1:
        raise click.BadParameter("must be at least 1", param=param)
    return value


@cli.command()
@click.option(
    "--scorecards",
    default=20_000,
    show_default=True,
    type=cli_types.SCORECARDS,
    callback=_positive,
    help="How many scorecards to generate.",
)
@click.option(
    "--seed",
    "seed_value",
    default=42,
    show_default=True,
    help="Random seed: the same seed gives the same rows.",
)
@click.option(
    "--start",
    default="2026-01-01T00:00:00Z",
    show_default=True,
    help="Earliest created_at (ISO 8601).",
)
@click.option(
    "--days",
    default=180,
    show_default=True,
    type=cli_types.DAYS,
    callback=_positive,
    help="Spread created_at over this many days.",
)
@click.option(
    "--mean-scores",
    default=10,
    show_default=True,
    type=cli_types.MEAN_SCORES,
    callback=_positive,
    help="Average number of scores per scorecard.",
)
@click.option("--yes", is_flag=True, help="Write even to a database `seed` did not create.")
def seed(
    scorecards: int, seed_value: int, start: str, days: int, mean_scores: int, yes: bool
) -> None:
    """Write deterministic synthetic scorecards and scores to Postgres (creates the tables).

    Only into source schemas that reindex created (``schema init --source``, ``seed``, ``demo``),
    unless ``--yes``: fake rows must never land in real ``director``/``historic`` tables.
    """
    from reindex_common.pg import check_writable_source, init_source_schema  # noqa: PLC0415
    from reindex_common.seed import SeedPlan  # noqa: PLC0415
    from reindex_common.seed import seed as run_seed  # noqa: PLC0415

    plan = SeedPlan(
        scorecards, seed_value, cli_types.parse_time_option(start, "--start"), days, mean_scores
    )
    settings = _settings()
    check_writable_source(settings.director_dsn, settings.historic_dsn, yes=yes)
    init_source_schema(settings.director_dsn, settings.historic_dsn)
    result = run_seed(settings.director_dsn, settings.historic_dsn, plan)
    click.echo(
        f"seeded {result.scorecards} new scorecards and {result.scores} new scores "
        f"(seed {seed_value}), created_at in [{plan.start.isoformat()}, {plan.end.isoformat()})"
    )


# --- devstack ----------------------------------------------------------------------------------


def _devstack_dir() -> Path:
    return Path(os.environ.get("REINDEX_DEVSTACK_DIR", ".devstack"))


@cli.group()
def devstack() -> None:
    """The embedded local stack (Kafka-protocol broker, ClickHouse shards) — never production."""


@devstack.command("up")
@click.option(
    "--shards",
    default=2,
    show_default=True,
    type=cli_types.SHARDS,
    callback=_positive,
    help="Number of ClickHouse shards.",
)
@click.option(
    "--kafka-port", default=9092, show_default=True, type=cli_types.PORT, help="Broker port."
)
@click.option(
    "--clickhouse-port",
    default=8123,
    show_default=True,
    type=cli_types.PORT,
    help="HTTP port of shard 0; shard i listens on this port + i.",
)
def devstack_up(shards: int, kafka_port: int, clickhouse_port: int) -> None:
    """Start the stack, or reuse the one already running (state and logs in .devstack/)."""
    from devstack.stack import StackConfig, up  # noqa: PLC0415
    from reindex_common.settings import mask_url  # noqa: PLC0415

    settings = _settings()
    config = StackConfig(
        _devstack_dir(), shards, kafka_port, clickhouse_port, pg_dsn=settings.director_dsn
    )
    state = up(config, say=lambda line: click.echo(line, err=True))
    pg_kind = "embedded-postgres" if state.pg_embedded else "existing server"
    click.echo(f"Postgres     {mask_url(state.pg_dsn)} ({pg_kind})")
    click.echo(f"Kafka        {state.kafka_bootstrap} (Tansu, in-memory, pid {state.kafka.pid})")
    for i, (url, proc) in enumerate(zip(state.shard_addresses, state.shards, strict=True)):
        label = "ClickHouse" if i == 0 else ""
        click.echo(f"{label:<12} shard {i} {mask_url(url)} (chdb, pid {proc.pid})")
    click.echo(f"State, logs  {state.root}")
    click.echo('Point the other commands at it:  eval "$(reindex devstack env)"')


@devstack.command("down")
@click.option("--purge", is_flag=True, help="Also delete the stack's data and logs.")
def devstack_down(purge: bool) -> None:
    """Stop every process the stack started, and nothing else."""
    from devstack.stack import down  # noqa: PLC0415

    stopped = down(_devstack_dir(), purge=purge)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@devstack.command("env")
def devstack_env() -> None:
    """Print `export REINDEX_...` lines that point the other commands at the running stack."""
    from devstack.stack import StackState  # noqa: PLC0415

    state = StackState.load(_devstack_dir().resolve())
    if state is None:
        raise ReindexError("no dev stack runs here; start one with 'reindex devstack up'")
    for name, value in state.env().items():
        click.echo(f"export {name}={value}")


# --- producer ----------------------------------------------------------------------------------


@cli.command()
@job_options
@click.option("--restart", is_flag=True, help="Run the job again from the start, even if done.")
@click.option("--dry-run", is_flag=True, help="Count what would be published; publish nothing.")
@click.option("--max-rate", type=cli_types.RATE, help="At most this many scorecards per second.")
@click.option(
    "--verify",
    "verify_after",
    is_flag=True,
    help="Then wait until the consumers wrote the job, and verify its range against Postgres.",
)
@click.option(
    "--timeout",
    type=cli_types.TIMEOUT,
    default=3600.0,
    show_default=True,
    help="With --verify: how long to wait for the consumers.",
)
@max_lag_option
@output_option
def produce(
    restart: bool,
    dry_run: bool,
    max_rate: float | None,
    verify_after: bool,
    timeout: float,
    max_lag: int | None,
    output: str,
    **job: Any,
) -> None:
    """Run one job now: page Postgres and publish; rerun with the same --job-id to resume.

    \b
    Examples:
      reindex produce --start 2026-01-01 --end 2026-02-01 --mode all --clean-up
      reindex produce --last 24h --max-lag 50000 -o json
    """
    from producer.job import JobOptions, run_and_report, run_and_summarize  # noqa: PLC0415

    settings = _with_max_lag(_settings(), max_lag)
    request = build_request(settings, **job)
    _check_max_rate(max_rate)
    log.info("settings: %s", " ".join(f"{k}={v}" for k, v in settings.describe().items()))
    options = JobOptions(restart, dry_run, max_rate)
    check = verify_after and not dry_run
    if output == "json":
        document = run_and_summarize(settings, request, options)
        verified = _wait_and_verify(settings, request.job_id, timeout, output) if check else None
        emit_json(document if verified is None else {**document, "verify": verified})
    else:
        click.echo(run_and_report(settings, request, options))
        verified = _wait_and_verify(settings, request.job_id, timeout) if check else None
    if verified is not None and not verified["ok"]:
        raise NotCleanError("verification failed: reindex the buckets it lists")


def _wait_and_verify(
    settings: Settings, job_id: str, timeout: float, output: str = "text"
) -> dict[str, Any]:
    from reindex.status import raise_for_outcome, wait_for_job  # noqa: PLC0415
    from reindex.verify import verify as run_verify  # noqa: PLC0415

    report = wait_for_job(settings, job_id, timeout, say=say(output))
    if report is not None:
        say(output)(report.describe())
    raise_for_outcome(report, job_id, waited_s=timeout)  # failed 1, dead letters 3, timeout 4
    assert report is not None
    req = report.checkpoint.request
    result = run_verify(settings, req.start, req.end, req.scorecard_types, "day")
    if output != "json":
        click.echo(result.describe())
    return result.as_document()


def _with_max_lag(settings: Settings, max_lag: int | None) -> Settings:
    return settings if max_lag is None else settings.replace(max_lag=max_lag)


def _check_max_rate(max_rate: float | None) -> None:
    if max_rate is not None and max_rate <= 0:
        raise BadInputError(f"--max-rate must be positive (got {max_rate})")


@cli.command()
@job_options
def request(**job: Any) -> None:
    """Publish a reindex request message for `reindex serve` and exit."""
    from producer.requests import publish_request  # noqa: PLC0415

    settings = _settings()
    req = build_request(settings, **job)
    publish_request(settings, req)
    click.echo(f"requested job {req.job_id} on {settings.requests_topic}")


@cli.command()
@click.option(
    "--max-rate", type=cli_types.RATE, help="At most this many scorecards per second, per job."
)
@max_lag_option
@click.option(
    "--max-attempts",
    type=cli_types.ATTEMPTS,
    default=8,
    show_default=True,
    help="Runs of a failing job before it is recorded failed and its request dead-lettered.",
)
def serve(max_rate: float | None, max_lag: int | None, max_attempts: int) -> None:
    """Long-running producer service: take request messages and run each job.

    Commits a request only once its job is fully published; SIGTERM or Ctrl-C stops at the next
    page boundary, and a restart resumes the job. A request that cannot be parsed goes to the DLQ
    with the reason; a job that keeps failing is retried with backoff, then recorded failed.
    """
    from producer.service import ServeOptions, serve_forever  # noqa: PLC0415

    settings = _with_max_lag(_settings(), max_lag)
    _check_max_rate(max_rate)
    log.info("settings: %s", " ".join(f"{k}={v}" for k, v in settings.describe().items()))
    serve_forever(settings, ServeOptions(max_rate=max_rate, max_attempts=max_attempts))


# --- consumer ----------------------------------------------------------------------------------


@cli.command()
@click.option("--worker-id", help="Name of this worker in logs and metrics (default: host-pid).")
@click.option(
    "--batch-size",
    type=cli_types.BATCH_SIZE,
    help="Messages per batch (default: REINDEX_CONSUMER_BATCH_SIZE).",
)
@click.option("--metrics-port", type=cli_types.PORT, help="Serve Prometheus metrics on this port.")
def consume(worker_id: str | None, batch_size: int | None, metrics_port: int | None) -> None:
    """Start one worker of the consumer group (start it N times for N workers)."""
    from consumer.worker import default_worker_id, run_worker  # noqa: PLC0415

    settings = _settings()
    changes: dict[str, Any] = {}
    if batch_size is not None:
        if batch_size < 1:
            raise BadInputError(f"--batch-size must be at least 1 (got {batch_size})")
        changes["consumer_batch_size"] = batch_size
    if metrics_port is not None:
        changes["metrics_port"] = metrics_port
    if changes:
        settings = settings.replace(**changes)
    log.info("settings: %s", " ".join(f"{k}={v}" for k, v in settings.describe().items()))
    level = logging.getLevelName(logging.getLogger().level).lower()
    run_worker(settings, worker_id or default_worker_id(), "warn" if level == "warning" else level)


@cli.command()
@click.argument("job_id", type=cli_types.JOB_ID)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the job to appear and finish; exit 0 once it is fully written and clean.",
)
@click.option(
    "--timeout",
    type=cli_types.TIMEOUT,
    default=3600.0,
    show_default=True,
    help="With --wait: give up (exit 4) after this many seconds.",
)
@click.option(
    "--verify",
    "verify_after",
    is_flag=True,
    help="Once fully written, verify the job's range against Postgres.",
)
@output_option
def status(job_id: str, wait: bool, timeout: float, verify_after: bool, output: str) -> None:
    """Published, written and dead-lettered scorecards of a job, and its state.

    Exit codes: 0 complete and clean (or, without --wait, still on its way); 1 failed or
    cancelled (with the reason); 3 complete with dead-lettered scorecards (the first few named);
    4 --wait gave up.

    \b
    Examples:
      reindex status nightly-2026-03-01
      reindex status nightly-2026-03-01 --wait --timeout 7200 -o json
    """
    from reindex.status import (  # noqa: PLC0415
        check_job_id,
        job_status,
        raise_for_outcome,
        wait_for_job,
    )

    as_json = output == "json"
    check_job_id(job_id)
    if verify_after and as_json:
        raise BadInputError("--verify prints text: use it without -o json")
    settings = _settings()
    if wait:
        report = wait_for_job(settings, job_id, timeout, say=say(output))
    else:
        report = job_status(settings, job_id)
    if report is not None:
        if as_json:
            emit_json(report.document())
        else:
            click.echo(report.describe())
    raise_for_outcome(report, job_id, waited_s=timeout if wait else None)
    if verify_after:
        assert report is not None
        if not report.complete:
            raise ReindexError(f"job {job_id} is not fully written yet: nothing to verify")
        req = report.checkpoint.request
        if not _run_verify(settings, req.start, req.end, req.scorecard_types, "day"):
            raise ReindexError("verification failed: reindex the buckets listed above")


# --- jobs --------------------------------------------------------------------------------------


@cli.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Every job, not only the recent ones.")
@output_option
@click.pass_context
def jobs(ctx: click.Context, show_all: bool, output: str) -> None:
    """The jobs in the jobs topic, newest first (without a subcommand).

    Id, range, types, clean-up, state (requested, running, done, failed, cancelled), published /
    written / dead-lettered scorecards, started, last update and failure reason. Shows the
    most recent jobs; --all shows every one.

    \b
    Examples:
      reindex jobs
      reindex jobs --all -o json
    """
    if ctx.invoked_subcommand is not None:
        return
    from reindex.jobs import list_jobs  # noqa: PLC0415

    listing = list_jobs(_settings(), show_all=show_all)
    if output == "json":
        emit_json(listing.document())
    else:
        click.echo(listing.table())
    if listing.hidden and output != "json":
        click.echo(f"{listing.hidden} older job(s) not shown: reindex jobs --all", err=True)


# --- verify ------------------------------------------------------------------------------------


def _selection(
    settings: Settings,
    start: str | None,
    end: str | None,
    last: str | None,
    types: str | None,
    mode: str | None,
) -> ReindexRequest:
    """The range and types of the selection options, checked as for a job (exit 2 if bad)."""
    return build_request(
        settings,
        start=start,
        end=end,
        last=last,
        types=types,
        mode=mode,
        batch_size=None,
        clean_up=False,
        job_id="selection",
    )


def _run_verify(settings: Settings, start: Any, end: Any, types: Any, bucket: str) -> bool:
    from reindex.verify import verify as run_verify  # noqa: PLC0415

    report = run_verify(settings, start, end, types, "hour" if bucket == "hour" else "day")
    click.echo(report.describe())
    return report.ok


@cli.command()
@selection_options
@click.option(
    "--bucket",
    type=click.Choice(["day", "hour"]),
    default="day",
    show_default=True,
    help="Compare per day or per hour of created_at.",
)
@output_option
def verify(
    start: str | None,
    end: str | None,
    last: str | None,
    types: str | None,
    mode: str | None,
    bucket: str,
    output: str,
) -> None:
    """Compare Postgres with the shards per time bucket; exit 0 when all match, 3 when not.

    \b
    Examples:
      reindex verify --start 2026-01-01 --end 2026-02-01 --mode all
      reindex verify --last 24h --bucket hour -o json
    """
    from reindex.verify import verify as run_verify  # noqa: PLC0415

    settings = _settings()
    request = _selection(settings, start, end, last, types, mode)
    report = run_verify(
        settings,
        request.start,
        request.end,
        request.scorecard_types,
        "hour" if bucket == "hour" else "day",
    )
    if output == "json":
        emit_json(report.as_document())
    else:
        click.echo(report.describe())
    if not report.ok:
        raise NotCleanError("verification failed: reindex the buckets listed above")


# --- check -------------------------------------------------------------------------------------


@cli.command()
def check() -> None:
    """Check every configured service, the consumer group and the effective settings.

    One line per check: both Postgres DSNs (source tables readable), Kafka (the topics and their
    partitions), every shard (database, tables, columns, engine), the consumer group (live
    members, messages behind); then each setting, masked, with where it came from. Exit 0 only
    when every check passes, 1 otherwise.

    \b
    Examples:
      reindex check
      reindex check && reindex request --last 24h --mode all --clean-up
    """
    from reindex.check import effective_settings, run_checks  # noqa: PLC0415

    settings = _settings()
    checks = run_checks(settings)
    for one in checks:
        click.echo(one.line())
    for setting in effective_settings(settings):
        click.echo(setting.line())
    failed = [c for c in checks if not c.ok]
    if failed:
        names = ", ".join(dict.fromkeys(c.name for c in failed))
        raise ReindexError(f"{len(failed)} of {len(checks)} checks failed: {names}")


# --- repair ------------------------------------------------------------------------------------


@cli.command()
@selection_options
@click.option(
    "--bucket",
    type=click.Choice(["day", "hour"]),
    default="day",
    show_default=True,
    help="Verify and mend per day or per hour of created_at.",
)
@click.option(
    "--max-rounds",
    type=cli_types.MAX_ROUNDS,
    default=3,
    show_default=True,
    help="Mend and verify again at most this many times.",
)
@click.option(
    "--timeout",
    type=cli_types.TIMEOUT,
    default=3600.0,
    show_default=True,
    help="How long to wait, in all, for the consumers to write the repair jobs.",
)
def repair(
    start: str | None,
    end: str | None,
    last: str | None,
    types: str | None,
    mode: str | None,
    bucket: str,
    max_rounds: int,
    timeout: float,
) -> None:
    """Verify a range and mend exactly the buckets that differ (consumers must be running).

    Per differing bucket: delete rows of scorecards Postgres no longer has and rows on the wrong
    shard, rewrite the bucket with clean-up, wait, verify again (narrowing a day to its hours).
    Exit 0 when the whole range matches, 3 when differences are left after --max-rounds,
    4 when the consumers did not write the repair jobs within --timeout.

    \b
    Examples:
      reindex repair --start 2026-03-01 --end 2026-03-08 --mode all
      reindex repair --last 24h --bucket hour --max-rounds 5
    """
    from reindex.repair import repair as run_repair  # noqa: PLC0415
    from reindex_common.errors import NotCleanError  # noqa: PLC0415

    settings = _settings()
    request = _selection(settings, start, end, last, types, mode)
    report = run_repair(
        settings,
        request.start,
        request.end,
        request.scorecard_types,
        "hour" if bucket == "hour" else "day",
        max_rounds=max_rounds,
        timeout_s=timeout,
        say=lambda line: click.echo(line, err=True),
    )
    click.echo(report.describe())
    if not report.ok:
        raise NotCleanError(f"{len(report.left)} bucket(s) still differ after repair")


# --- demo --------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--scorecards",
    default=20_000,
    show_default=True,
    type=cli_types.SCORECARDS,
    callback=_positive,
    help="How many synthetic scorecards to seed.",
)
@click.option("--seed", "seed_value", default=42, show_default=True, help="Random seed.")
@click.option(
    "--shards",
    default=2,
    show_default=True,
    type=cli_types.SHARDS,
    callback=_positive,
    help="Number of ClickHouse shards.",
)
@click.option("--keep", is_flag=True, help="Leave the stack running, with the data, afterwards.")
@click.option(
    "--kafka-port",
    default=9092,
    show_default=True,
    type=cli_types.PORT,
    help="Broker port of the stack.",
)
@click.option(
    "--clickhouse-port",
    default=8123,
    show_default=True,
    type=cli_types.PORT,
    help="HTTP port of shard 0; shard i listens on this port + i.",
)
@click.option(
    "--yes",
    is_flag=True,
    help="Replace a 'reindex_demo' database the demo did not create.",
)
def demo(
    scorecards: int,
    seed_value: int,
    shards: int,
    keep: bool,
    kafka_port: int,
    clickhouse_port: int,
    yes: bool,
) -> None:
    """The main job on the embedded default: stack, schemas, data, job, verification, report."""
    from reindex.demo import DemoOptions, run_demo  # noqa: PLC0415

    options = DemoOptions(
        _devstack_dir(), scorecards, seed_value, shards, keep, kafka_port, clickhouse_port, yes=yes
    )
    if not run_demo(options, _settings(), say=click.echo):
        raise ReindexError("the demo failed (see above)")


cli.add_command(dlq)
jobs.add_command(jobs_cancel)

# --- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status instead of raising."""
    install_excepthooks()
    try:
        result = cli.main(args=argv, prog_name="reindex", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.UsageError as e:
        click.echo(f"reindex: error: {redact(e.format_message())}", err=True)
        return 2
    except click.Abort:
        click.echo("reindex: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("reindex: interrupted", err=True)
        return 130
    except ReindexError as e:
        if _Context.debug:
            click.echo(redact(traceback.format_exc()).rstrip(), err=True)
        click.echo(f"reindex: error: {redact(str(e))}", err=True)
        return e.exit_code
    return result if isinstance(result, int) else 0


__all__ = ["BadInputError", "cli", "main"]
