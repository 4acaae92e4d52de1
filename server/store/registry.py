"""The one table of queue types and their options.

``gearmand`` builds its ``-q`` choices, its queue flags and their ``--help`` from it, and
``open_store`` checks options against it. It imports no database driver, so ``--help``
and ``--check-args`` stay quick and work without the optional packages installed; the
store module named here is imported only when its queue is opened. Option names are the
reference's long options without the leading dashes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueOption:
    name: str
    help: str
    #: None = required when the queue is chosen; "" = empty by default.
    default: str | None = ""
    #: A switch without a value (its value is "true" when given).
    flag: bool = False


@dataclass(frozen=True, slots=True)
class QueueType:
    name: str
    #: The module with ``open_store(options) -> Store``; None for the memory queue.
    module: str | None
    #: The ``--help`` section of its options (the reference's titles).
    section: str
    options: tuple[QueueOption, ...] = ()


#: Options every persistent queue takes.
COMMON = QueueType("", None, "Queue", (
    QueueOption("store-queue-on-shutdown",
                "Keep nothing while serving; write every background job left at a clean "
                "stop, replay and empty the store at the next start (any queue type).",
                flag=True),
))

QUEUE_TYPES: tuple[QueueType, ...] = (
    QueueType("builtin", None, "builtin"),
    QueueType("flatfile", "server.store.flatfile", "flatfile", (
        QueueOption("flatfile-file", "Journal file of the embedded flat-file store.", None),
        QueueOption("flatfile-fsync", "When to fsync the journal: always, batch or never.",
                    "batch"),
    )),
    QueueType("libsqlite3", "server.store.sqlite", "libsqlite3", (
        QueueOption("libsqlite3-db", "Database file to use.", None),
        QueueOption("libsqlite3-table", "Table to use.", "gearman_queue"),
    )),
    QueueType("postgres", "server.store.postgres", "Postgres", (
        QueueOption("libpq-conninfo", "PostgreSQL connection information string."),
        QueueOption("libpq-table", "Table to use.", "queue"),
        QueueOption("cluster", "Join the cluster of this name: every server started with "
                    "the same database and name shares one queue (table <libpq-table>"
                    "_cluster)."),
        QueueOption("cluster-lease", "Seconds a claim on a cluster job lasts without "
                    "renewal: a dead server's jobs run elsewhere after it.", "30"),
    )),
    QueueType("mysql", "server.store.mysql", "MySQL", (
        QueueOption("mysql-host", "MySQL host.", "localhost"),
        QueueOption("mysql-port", "Port of server.", "3306"),
        QueueOption("mysql-user", "MySQL user."),
        QueueOption("mysql-password", "MySQL user password."),
        QueueOption("mysql-db", "MySQL database."),
        QueueOption("mysql-table", "MySQL table name.", "gearman_queue"),
    )),
    QueueType("libmemcached", "server.store.memcached", "libmemcached", (
        QueueOption("libmemcached-servers", "List of Memcached servers to use.", None),
        QueueOption("libmemcached-prefix", "Prefix to use in memcached keys.", "gear_"),
    )),
    QueueType("redis", "server.store.redis", "redis", (
        QueueOption("redis-server", "Redis server.", "127.0.0.1"),
        QueueOption("redis-port", "Redis server port/service.", "6379"),
        QueueOption("redis-password", "Redis server password/service."),
        QueueOption("redis-prefix", "Prefix to use in redis keys.", "_gear_"),
    )),
)

#: Queue name (lower case) -> its type.
BY_NAME: dict[str, QueueType] = {q.name: q for q in QUEUE_TYPES}


def all_options() -> list[tuple[QueueType, QueueOption]]:
    """Every queue option once, with the type that declares it (COMMON for shared ones)."""
    return [(q, o) for q in (COMMON, *QUEUE_TYPES) for o in q.options]


def is_true(value: str | None) -> bool:
    """A queue option's switch value: given and not one of the usual false words."""
    return (value or "").lower() not in ("", "0", "false", "no", "off")
