"""A gearmand cluster on PostgreSQL (``-q postgres --cluster NAME``): servers started with
the same database and cluster name share one durable queue of background jobs.

``db`` is the blocking PostgreSQL side (the shared table, claims, leases, notifications);
``member`` the ``JobStore`` of a member; ``node`` its tasks (claimer, listener, lease
renewer, relay sender); ``relay`` the peers of a relayed foreground job. See
docs/cluster.md.
"""
