"""Persistent queues: ``open_store(name, options)`` picks a store; ``StoreWriter`` drives it.

A store is a small blocking plug-in (``commit`` / ``replay`` / ``close``, see ``base``);
one trio task (``writer.StoreWriter``) applies operations to it in order.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

from server.store.base import Store, StoredJob, StoreError, decode_job, encode_job

__all__ = ["QUEUES", "Store", "StoreError", "StoredJob", "decode_job", "encode_job",
           "open_store"]

log = logging.getLogger(__name__)

#: Queue name (lower case) -> (module, {option: default}); default None = required.
#: Option names are the reference's long options without the leading dashes (spec §4.3).
QUEUES: dict[str, tuple[str, dict[str, str | None]]] = {
    "libsqlite3": ("server.store.sqlite", {
        "libsqlite3-db": None,
        "libsqlite3-table": "gearman_queue",
        "store-queue-on-shutdown": "",
    }),
    "flatfile": ("server.store.flatfile", {
        "flatfile-file": None,
        "flatfile-fsync": "batch",
    }),
    "postgres": ("server.store.postgres", {
        "libpq-conninfo": "",
        "libpq-table": "queue",
    }),
    "mysql": ("server.store.mysql", {
        "mysql-host": "localhost",
        "mysql-port": "3306",
        "mysql-user": "",
        "mysql-password": "",
        "mysql-db": "",
        "mysql-table": "gearman_queue",
    }),
    "redis": ("server.store.redis", {
        "redis-server": "127.0.0.1",
        "redis-port": "6379",
        "redis-password": "",
        "redis-prefix": "_gear_",
    }),
    "libmemcached": ("server.store.memcached", {
        "libmemcached-servers": None,
        "libmemcached-prefix": "gear_",
    }),
}


def open_store(queue_type: str, options: Mapping[str, str]) -> Store | None:
    """The store for ``-q queue_type``; ``None`` for ``builtin`` (memory only).

    Names are case-insensitive. Options of another queue module are ignored with a
    warning (the reference accepts them too); options no module knows, and missing
    required ones, raise ``StoreError`` with one line.
    """
    name = queue_type.lower()
    if name == "builtin":
        return None
    if name not in QUEUES:
        raise StoreError(f"Unknown queue {queue_type}")
    module_name, known = QUEUES[name]
    others = {opt for _, (_, opts) in QUEUES.items() for opt in opts}
    for opt in options:
        if opt in known:
            continue
        if opt in others:
            log.warning("option --%s does not apply to queue %s; ignored", opt, name)
            continue
        raise StoreError(f"Unknown option --{opt} for queue {name}")
    missing = [opt for opt, default in known.items()
               if default is None and not options.get(opt)]
    if missing:
        raise StoreError(f"queue {name} needs --{missing[0]}")
    values = {opt: (options.get(opt) or default or "") for opt, default in known.items()}
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StoreError(f"queue {name} needs a Python package that is not installed "
                         f"({exc.name}); pip install 'gearman-toolkit[queues]'") from exc
    store: Store = module.open_store(values)
    return store
