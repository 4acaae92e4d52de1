"""Persistent queues: ``open_store(name, options)`` picks a store; ``StoreWriter`` drives it.

A store is a small blocking plug-in (``commit`` / ``replay`` / ``close``, see ``base``);
one trio task (``writer.StoreWriter``) applies operations to it in order.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

from server.store.base import Store, StoredJob, StoreError, decode_job, encode_job
from server.store.registry import BY_NAME, COMMON, QUEUE_TYPES, all_options, is_true

__all__ = ["QUEUE_TYPES", "Store", "StoreError", "StoredJob", "decode_job", "encode_job",
           "open_store", "queue_option_true"]

log = logging.getLogger(__name__)


def open_store(queue_type: str, options: Mapping[str, str]) -> Store | None:
    """The store for ``-q queue_type``; ``None`` for ``builtin`` (memory only).

    Names are case-insensitive. Options of another queue module are ignored with a
    warning (the reference accepts them too); options no module knows, and missing
    required ones, raise ``StoreError`` with one line.
    """
    name = queue_type.lower()
    queue = BY_NAME.get(name)
    if queue is None:
        raise StoreError(f"Unknown queue {queue_type}")
    if queue.module is None:
        return None
    known = {o.name: o.default for o in queue.options}
    common = {o.name for o in COMMON.options}
    others = {o.name for _, o in all_options()}
    for opt in options:
        if opt in common:
            continue
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
        module = importlib.import_module(queue.module)
    except ImportError as exc:
        raise StoreError(f"queue {name} needs a Python package that is not installed "
                         f"({exc.name}): pip install 'gearman-toolkit[queues]', or "
                         "pip install -e '.[queues]' in a clone") from exc
    store: Store = module.open_store(values)
    return store


def queue_option_true(options: Mapping[str, str], name: str) -> bool:
    """Whether a switch among the queue options (``store-queue-on-shutdown``) is on."""
    return is_true(options.get(name))
