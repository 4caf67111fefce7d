"""The dev stack's SQL guard: what reaches outside the shard is refused, our own SQL is not."""

from __future__ import annotations

import pytest

from devstack.sql_guard import RefusedError, check, check_setting
from reindex_common.schema import statements, target_ddl

REFUSED = [
    # table functions reaching files, URLs, other servers, programs
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "INSERT INTO FUNCTION file('/tmp/owned.tsv', 'TSV', 'a String') VALUES ('x')",
    "SELECT * FROM fileCluster('c', '/etc/*')",
    "SELECT * FROM url('http://127.0.0.1:1/x', CSV, 'a String')",
    "SELECT * FROM s3('http://127.0.0.1:1/b/k', CSV)",
    "SELECT * FROM s3Cluster('c', 'http://127.0.0.1:1/b/k')",
    "SELECT * FROM remote('127.0.0.1:9000', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1:9440', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM clusterAllReplicas('default', system.one)",
    "SELECT * FROM executable('cat /etc/passwd', TSV, 'a String')",
    "SELECT * FROM mysql('127.0.0.1:3306', 'd', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:5432', 'd', 't', 'u', 'p')",
    "SELECT * FROM jdbc('jdbc:x', 't')",
    "SELECT * FROM odbc('DSN=x', 't')",
    "SELECT * FROM hdfs('hdfs://127.0.0.1:9000/x', CSV)",
    "SELECT * FROM sqlite('/tmp/x.db', 't')",
    "SELECT * FROM icebergLocal('/tmp/x')",
    "SELECT * FROM azureBlobStorage('x')",
    "SELECT * FROM mongodb('127.0.0.1', 'd', 'c', 'u', 'p', 'x String')",
    "SELECT file('/etc/hostname')",  # the scalar function reads files too
    # clauses and statements
    "SELECT 1 INTO OUTFILE '/tmp/owned.txt'",
    "INSERT INTO t FROM INFILE '/etc/hostname' FORMAT LineAsString",
    "SYSTEM FLUSH LOGS",
    "system shutdown",
    "ATTACH TABLE t FROM '/tmp/x' (a UInt8) ENGINE = MergeTree ORDER BY a",
    "BACKUP TABLE t TO File('/tmp/b')",
    "RESTORE TABLE t FROM Disk('default', 'b')",
    "CREATE DICTIONARY d (k UInt64, v String) PRIMARY KEY k "
    "SOURCE(FILE(path '/etc/passwd' format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
    "CREATE DICTIONARY d (k UInt64) PRIMARY KEY k SOURCE(HTTP(url 'http://x' format 'TSV')) "
    "LAYOUT(FLAT()) LIFETIME(0)",
    # engines reaching outside
    "CREATE TABLE t (a String) ENGINE = URL('http://127.0.0.1:1/', CSV)",
    "CREATE TABLE t (a String) ENGINE = File(TSV)",
    "CREATE TABLE t (a String) ENGINE = Kafka SETTINGS kafka_broker_list = 'h:9092'",
    "CREATE TABLE t (a String) ENGINE Distributed('c', 'd', 't')",
    "CREATE TABLE t (a String) ENGINE = MergeTree ORDER BY a SETTINGS disk = disk(type = local, "
    "path = '/tmp/x/')",
    "CREATE DATABASE x ENGINE = Filesystem('/')",
    "CREATE DATABASE x ENGINE = PostgreSQL('h:5432', 'd', 'u', 'p')",
    "CREATE TABLE t AS s3('http://x/b/k', CSV)",
    "CREATE TABLE t (a String DEFAULT file('/etc/hostname')) ENGINE = Memory",
    # settings naming files or letting VALUES run expressions
    "SELECT 1 SETTINGS format_schema = 'x:Message'",
    "SET input_format_values_interpret_expressions = 1",
    # case, whitespace, comments, quoting
    "sElEcT * fRoM FiLe('/etc/hostname')",
    "SELECT * FROM file\n\t ('/etc/hostname')",
    "SELECT * FROM file/* a comment */('/etc/hostname')",
    "SELECT * FROM file -- a comment\n('/etc/hostname')",
    "SELECT * FROM `file`('/etc/hostname')",
    "SELECT * FROM \"URL\"('http://x', CSV)",
    "SELECT * FROM `\\x66ile`('/etc/hostname')",  # an escape spelling 'file'
    "SELECT * INTO OutFile '/tmp/x' FROM numbers(1)",
    # what the lexers could disagree on: refused rather than guessed
    "SELECT 1; SELECT * FROM numbers(1)",  # chdb runs every statement
    "SELECT $$'$$, file('/etc/hostname') --'",  # a heredoc hiding a quote
    "SELECT 1 #x\n, 2",
    "SELECT 1 /* a /* nested */ file('/etc/hostname') */",
    "SELECT 'unterminated",
    "SELECT 1 /* unterminated",
]

ACCEPTED = [
    "SELECT 1",
    "SELECT version(), timezone()",
    "SELECT name, value, readonly FROM system.settings LIMIT 10",
    "SELECT name, engine FROM system.tables WHERE database = 'default'",
    "SELECT count() FROM numbers(1000)",
    "SELECT 'file(\\'/etc/hostname\\')' AS looks_like_a_call",  # inside a string
    "SELECT 1 -- file('/etc/hostname')",  # inside a comment
    "SELECT 1 # a comment: file('/x')",
    "SELECT url, file FROM t",  # columns with those names, not calls
    "INSERT INTO scorecards (a, b) FORMAT Native",
    "INSERT INTO t SELECT number FROM numbers(10)",
    "DELETE FROM t WHERE customer_id IN ({ids:Array(String)})",
    "CREATE TABLE t (a UInt8) ENGINE = ReplacingMergeTree(a) ORDER BY a",
    "CREATE DATABASE IF NOT EXISTS `d` ENGINE = Atomic",
    "SELECT 1;",
    "SELECT 1\nSETTINGS readonly=2",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused(sql: str) -> None:
    with pytest.raises(RefusedError):
        check(sql)


@pytest.mark.parametrize("sql", ACCEPTED)
def test_accepted(sql: str) -> None:
    check(sql)


def test_the_projects_own_ddl_is_accepted() -> None:
    for stmt in statements(target_ddl("reindex")):
        check(stmt)


def test_settings() -> None:
    check_setting("max_result_rows")
    with pytest.raises(RefusedError):
        check_setting("FORMAT_SCHEMA")
