"""A gearmand cluster on PostgreSQL (``-q postgres --cluster NAME``): servers started with
the same database and cluster name share one durable queue of background jobs.

``db`` is the blocking PostgreSQL side (the shared table, claims, leases, notifications);
``node`` the trio side (the ``JobStore`` of a member, its claimer, listener and lease
renewer). See docs/cluster.md.
"""
