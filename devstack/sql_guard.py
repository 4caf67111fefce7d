"""What SQL the dev stack's ClickHouse front lets through to the engine.

The engine behind the front (chdb) can read and write any file the user can, fetch URLs, reach
other database servers and run programs. The front serves only this project's own work (DDL,
INSERT, SELECT, DELETE on local tables), so it refuses every statement that could reach outside
the shard's data directory:

* table functions and functions that read files, URLs, other servers or programs
  (``file``, ``url``, ``s3``, ``remote``, ``cluster``, ``mysql``, ``postgresql``, ``executable``,
  ``hdfs``, ``jdbc``, ``odbc``, ``sqlite``, ``iceberg…``, ``disk`` …) wherever they are called;
* table and database engines other than local ones (``ENGINE = URL``, ``Kafka``, ``Distributed``,
  ``PostgreSQL``, ``Filesystem`` …), and dictionary sources (``SOURCE(…)``);
* ``INTO OUTFILE``, ``FROM INFILE``, and statements starting with ``SYSTEM``, ``ATTACH``,
  ``BACKUP`` or ``RESTORE``;
* settings that name files (``format_schema`` …) or make ``Values`` data run expressions;
* more than one statement in a request.

The check tokenizes the text the way ClickHouse's lexer does for what matters here: case does
not matter, whitespace and comments may stand anywhere between tokens, strings are skipped and
quoted identifiers are compared by their content. Where the lexers could disagree it refuses
(fail closed): an unterminated string or comment, a comment opened inside a block comment
(ClickHouse nests them), a ``$`` outside a string (heredoc strings), a ``#`` that is not one of
the engine's comment forms (``# `` and ``#!``), a backslash in a quoted name that is called.

This is a guard for a development tool, not a sandbox: the front also listens on loopback only
and requires the stack's password.
"""

from __future__ import annotations

from dataclasses import dataclass

# Functions (table functions or scalar ones) that reach files, URLs, other servers or programs.
DENIED_FUNCTIONS = frozenset(
    {
        "file",
        "filecluster",
        "url",
        "urlcluster",
        "input_file",
        "gcs",
        "oss",
        "cosn",
        "cluster",
        "clusterallreplicas",
        "executable",
        "executablepool",
        "hive",
        "jdbc",
        "odbc",
        "sqlite",
        "mongodb",
        "redis",
        "dictionary",
        "disk",
        "catboostevaluate",
        "naivebayesclassifier",
        "modelevaluate",
        "ytsaurus",
        "prometheusquery",
        "prometheusqueryrange",
        "source",  # a dictionary's SOURCE(...) clause
        "filesystem",
    }
)
# Families of them, by the start of the name: s3, s3Cluster, s3Queue, remoteSecure, ...
DENIED_FUNCTION_PREFIXES = (
    "s3",
    "remote",
    "mysql",
    "postgres",
    "materializedpostgres",
    "materializedmysql",
    "hdfs",
    "azure",
    "iceberg",
    "deltalake",
    "hudi",
    "paimon",
    "arrowflight",
    "datalake",
    "kafka",
    "nats",
    "rabbitmq",
)

# Engines a table or database may have: all local to the data directory.
ALLOWED_ENGINES = frozenset(
    {
        "mergetree",
        "replacingmergetree",
        "summingmergetree",
        "aggregatingmergetree",
        "collapsingmergetree",
        "versionedcollapsingmergetree",
        "graphitemergetree",
        "coalescingmergetree",
        "memory",
        "log",
        "tinylog",
        "stripelog",
        "null",
        "set",
        "join",
        "buffer",
        "merge",
        "generaterandom",
        "view",
        "materializedview",
        "atomic",
        "ordinary",
        "lazy",
    }
)

# Settings that name files on the server, or let INSERT ... VALUES data run expressions.
DENIED_SETTINGS = frozenset(
    {
        "format_schema",
        "format_schema_source",
        "output_format_schema",
        "format_template_resultset",
        "format_template_row",
        "schema_inference_cache",
        "input_format_values_interpret_expressions",
        "input_format_values_deduce_templates_of_expressions",
    }
)

# Words refused anywhere, and words refused at the start of a statement.
DENIED_WORDS = frozenset({"infile", "outfile"})
DENIED_STATEMENTS = frozenset({"system", "attach", "backup", "restore"})


class RefusedError(ValueError):
    """The statement could reach outside the shard's data; the message says why."""


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "quoted" (a quoted identifier), "string", "number", "punct"
    text: str  # a word or identifier as written (quotes removed), or the punctuation


_SPACE = " \t\r\n\f\v"
_WORD_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_WORD = _WORD_START | set("0123456789")


def tokenize(sql: str) -> list[Token]:
    """ClickHouse's tokens, comments dropped; raises RefusedError where it cannot be sure."""
    tokens: list[Token] = []
    n = len(sql)
    pos = 0
    while pos < n:
        c = sql[pos]
        if c in _SPACE:
            pos += 1
        elif sql.startswith(("--", "# ", "#!"), pos):  # the engine's line comments
            end = sql.find("\n", pos)
            pos = n if end < 0 else end + 1
        elif sql.startswith("/*", pos):
            end = sql.find("*/", pos + 2)
            if end < 0:
                raise RefusedError("an unterminated comment")
            if "/*" in sql[pos + 2 : end]:
                raise RefusedError("a comment inside a comment")
            pos = end + 2
        elif c in "'\"`":
            end = _quoted_end(sql, pos)
            if end < 0:
                raise RefusedError("an unterminated quoted string or name")
            kind = "string" if c == "'" else "quoted"
            tokens.append(Token(kind, sql[pos + 1 : end - 1]))
            pos = end
        elif c == "$":
            raise RefusedError("'$' outside a string (heredocs are not accepted)")
        elif c == "#":
            raise RefusedError("'#' that does not start a comment")
        elif c in _WORD_START or ord(c) >= 0x80:
            end = pos
            while end < n and (sql[end] in _WORD or ord(sql[end]) >= 0x80):
                end += 1
            tokens.append(Token("word", sql[pos:end]))
            pos = end
        elif c.isdigit():
            end = pos
            while end < n and (sql[end] in _WORD or sql[end] == "."):
                end += 1
            tokens.append(Token("number", sql[pos:end]))
            pos = end
        else:
            tokens.append(Token("punct", c))
            pos += 1
    return tokens


def _quoted_end(sql: str, pos: int) -> int:
    """The position after the quoted text at ``pos``; -1 if it does not end."""
    quote = sql[pos]
    pos += 1
    n = len(sql)
    while pos < n:
        c = sql[pos]
        if c == "\\":
            pos += 2
        elif c == quote:
            if pos + 1 < n and sql[pos + 1] == quote:  # a doubled quote
                pos += 2
            else:
                return pos + 1
        else:
            pos += 1
    return -1


def _name(token: Token) -> str | None:
    """The lower-cased name a word or quoted identifier stands for; None for other tokens."""
    if token.kind == "word":
        return token.text.lower()
    if token.kind == "quoted":
        if "\\" in token.text:
            return "\\"  # escapes could spell any name: callers refuse it where it matters
        return token.text.lower()
    return None


def denied_function(name: str) -> bool:
    name = name.lower()
    return name in DENIED_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES)


def check_setting(name: str) -> None:
    """Refuse a setting that names files or lets ``Values`` data run expressions."""
    if name.lower() in DENIED_SETTINGS:
        raise RefusedError(f"the setting {name} is not accepted by the dev stack")


def check(sql: str) -> list[Token]:
    """Raise :class:`RefusedError` if ``sql`` could reach files, URLs, servers or programs;
    ``sql``'s tokens otherwise."""
    tokens = tokenize(sql)
    statement_start = True
    first_word = ""
    for i, token in enumerate(tokens):
        if token.kind == "punct" and token.text == ";":
            if any(t.kind != "punct" or t.text != ";" for t in tokens[i + 1 :]):
                raise RefusedError("more than one statement in a request")
            return tokens
        name = _name(token)
        if name is None:
            continue
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if statement_start:
            statement_start = False
            first_word = name
            if name in DENIED_STATEMENTS:
                raise RefusedError(f"{name.upper()} statements are not accepted")
        if token.kind == "word" and name in DENIED_WORDS:
            raise RefusedError(f"{name.upper()} is not accepted (it reaches files)")
        if name in DENIED_SETTINGS:
            check_setting(name)
        if following is not None and following.kind == "punct" and following.text == "(":
            if name == "\\":
                raise RefusedError("a called name with escapes in its quotes")
            if denied_function(name):
                raise RefusedError(
                    f"{token.text}(…) is not accepted (it reaches files, URLs, other servers "
                    "or programs)"
                )
        if token.kind == "word" and name == "engine":
            _check_engine(tokens, i, first_word)
    return tokens


def _check_engine(tokens: list[Token], i: int, first_word: str) -> None:
    """``ENGINE [=] Name``: only local engines."""
    j = i + 1
    has_equals = j < len(tokens) and tokens[j].kind == "punct" and tokens[j].text == "="
    if has_equals:
        j += 1
    elif first_word not in ("create", "replace", "alter"):
        return  # a column named engine (system.tables), not a clause
    if j >= len(tokens):
        return
    engine = _name(tokens[j])
    if engine is None:
        return  # engine = 'MergeTree' compares a column with a string
    if engine not in ALLOWED_ENGINES:
        raise RefusedError(f"ENGINE {tokens[j].text} is not accepted (only local engines)")
