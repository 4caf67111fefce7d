"""Secrets never leave the process: masking of connection strings and of known secret values.

Two layers, because a secret can reach text by paths nobody planned:

1. **Forms we print on purpose** (the start-up ``settings:`` line, connect errors, ``devstack``
   output): :func:`mask_dsn` masks every form libpq accepts — ``key=value`` strings with
   ``password=``, URLs with the password in the user part or in ``?password=``, multi-host URLs —
   by parsing them with libpq itself (``psycopg.conninfo``), not by string surgery.
   :func:`mask_url` does the same for any URL (shard URLs with credentials).
2. **Anything else**: every secret the settings hold is registered (:func:`register_secret`), and
   :func:`redact` replaces each registered value (and its URL-encoded forms) by ``***``. A log
   record factory (:func:`install_log_redaction`) applies it to every log record at every level,
   tracebacks included, before any handler sees it; the CLI applies it to its error lines.

Nothing here raises: a string that cannot be parsed is hidden whole rather than shown.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

from pydantic import AfterValidator

MASK = "***"
HIDDEN = "<connection string hidden: it could not be parsed>"

# libpq parameters that hold secrets (``passfile`` names a file, it is not one).
SECRET_KEYS = frozenset({"password", "sslpassword"})

_URL_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#]*)")

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its URL-encoded forms) wherever :func:`redact` runs from now on."""
    if not value:
        return
    global _ordered
    # As written in a URL (percent-encoded) or in a quoted libpq ``key='value'``.
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    forms = {value, quote(value, safe=""), quote_plus(value, safe=""), quote(value), escaped}
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(f for f in forms if f)
        # Longest first, so that a secret containing another is masked whole.
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def register_dsn(dsn: str | None) -> None:
    """Register the secrets a libpq connection string or a URL holds."""
    if not dsn:
        return
    for value in secrets_of(dsn):
        register_secret(value)


def secrets_of(text: str) -> list[str]:
    """The secret values in a connection string or URL (never raises)."""
    found: list[str] = []
    params = _conninfo(text)
    if params is not None:
        found.extend(str(params[k]) for k in SECRET_KEYS if params.get(k))
    try:
        match = _URL_USERINFO.match(text.strip())
        if match:
            userinfo = match["authority"].rpartition("@")[0]
            if ":" in userinfo:
                found.append(userinfo.partition(":")[2])
            query = text.partition("?")[2].partition("#")[0]
            found.extend(v for k, v in parse_qsl(query) if k in SECRET_KEYS and v)
    except Exception:  # masking never raises
        return found
    return [f for f in dict.fromkeys(found) if f]


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (never raises)."""
    try:
        for secret in _ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
    except Exception:
        return MASK


def _conninfo(dsn: str) -> dict[str, Any] | None:
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 - psycopg is heavy to import

    try:
        return conninfo_to_dict(dsn)
    except Exception:
        return None


def _is_url(text: str) -> bool:
    return _URL_USERINFO.match(text) is not None


def _mask_url_text(url: str) -> str:
    """The URL with the password of its user part and of its query masked, by its structure."""
    match = _URL_USERINFO.match(url)
    if match is None:
        return url
    authority = match["authority"]
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:{MASK}@{hosts}"
    rest = url[match.end() :]
    path, qmark, query = rest.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k in SECRET_KEYS for k, _ in pairs):
            query = urlencode([(k, MASK if k in SECRET_KEYS else v) for k, v in pairs], safe="*")
        query = query + hash_ + fragment
    return f"{match['scheme']}{authority}{path}{qmark}{query}"


def mask_dsn(dsn: str) -> str:
    """A libpq connection string (any form) with its secrets masked, for display.

    URLs keep their shape; ``key=value`` strings are rebuilt by libpq's rules with ``***`` in
    place of each secret. A string libpq cannot parse is hidden whole.
    """
    try:
        text = dsn.strip()
        params = _conninfo(text)
        if params is None:
            return HIDDEN
        if not any(params.get(k) for k in SECRET_KEYS) and not secrets_of(text):
            return text
        if _is_url(text):
            masked = _mask_url_text(text)
            again = _conninfo(masked)
            if again is not None and all(again.get(k) in (None, "", MASK) for k in SECRET_KEYS):
                return masked
        from psycopg.conninfo import make_conninfo  # noqa: PLC0415

        return make_conninfo("", **{k: MASK if k in SECRET_KEYS else v for k, v in params.items()})
    except Exception:
        return HIDDEN


def mask_url(url: str) -> str:
    """Any URL (a shard's ``http://user:pw@host``, a Postgres URL) with its password masked."""
    try:
        text = url.strip()
        if text.startswith(("postgres://", "postgresql://")) or not _is_url(text):
            return mask_dsn(text)
        return redact(_mask_url_text(text))
    except Exception:
        return HIDDEN


# A text field of a message that leaves the process (a job's failure, a DLQ reason): whatever
# raised, a registered secret never reaches the topic.
RedactedStr = Annotated[str, AfterValidator(redact)]


# --- logs --------------------------------------------------------------------------------------

_installed = False


def install_log_redaction() -> None:
    """Mask registered secrets in every log record, at every level, before any handler runs.

    A record factory rather than a handler filter: it sees records of every logger (Faust's,
    librdkafka's, ours) whatever handlers a library installs later. Idempotent.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _ordered:
            return record
        try:
            record.msg = redact(record.getMessage())
            record.args = ()  # already in msg; () as logging (and mode's formatter) expect
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(formatter.formatException(record.exc_info))
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        except Exception:
            record.msg, record.args = MASK, ()
        return record

    logging.setLogRecordFactory(factory)


def install_excepthooks() -> None:
    """Tracebacks of uncaught errors (a bug) are text leaving the process too: print them
    redacted. For the command's process (``reindex.cli.main``), not for a library's caller."""
    import sys  # noqa: PLC0415
    import traceback  # noqa: PLC0415

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread else "thread"
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        sys.stderr.write(redact(f"Exception in {name}:\n{text}"))

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
