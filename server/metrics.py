"""``/metrics``: the core's statistics in the Prometheus text format.

Built with ``prometheus_client``'s exposition code over a collector that reads the core's
counters when scraped: nothing here runs per job. Imported only when metrics are served
(``--metrics-port``, or ``GET /metrics`` on the ``-r http`` port), so gearmand's start-up
does not load ``prometheus_client``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from . import stats
from .acl import ALL, View
from .admin import AdminContext
from .jobs import BUCKETS

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
_LE = [repr(b) for b in BUCKETS] + ["+Inf"]
_COUNTERS = (
    ("completed", "Jobs that ended with WORK_COMPLETE."),
    ("failed", "Jobs that ended with WORK_FAIL or ran out of retries."),
    ("exceptions", "Jobs that ended with WORK_EXCEPTION."),
    ("requeued", "Jobs put back in their queue (worker gone, CANT_DO, timed out)."),
    ("timed_out", "Jobs that ran past their worker's CAN_DO_TIMEOUT."),
    ("coalesced", "Submits that joined a job with the same unique key."),
    ("cancelled", "Jobs cancelled by the admin (cancel job)."),
)


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for le, n in zip(_LE, counts, strict=True):
        total += n
        out.append((le, total))
    return out


class StatsCollector(Collector):
    """Reads the core's counters at each scrape."""

    def __init__(self, ctx: AdminContext, view: View = ALL) -> None:
        self.ctx = ctx
        self.view = view

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        manager = ctx.manager
        now = ctx.clock()
        fn_label = ["function"]
        submitted = CounterMetricFamily(
            "gearman_jobs_submitted", "New jobs submitted (joins are counted as coalesced).",
            labels=["function", "priority", "background"])
        counters = {key: CounterMetricFamily(f"gearman_jobs_{key}", text, labels=fn_label)
                    for key, text in _COUNTERS}
        queued = GaugeMetricFamily("gearman_queued_jobs",
                                   "Jobs waiting (ready, scheduled or being stored).",
                                   labels=fn_label)
        running = GaugeMetricFamily("gearman_running_jobs", "Jobs assigned to a worker.",
                                    labels=fn_label)
        workers = GaugeMetricFamily("gearman_workers", "Worker connections that can do it.",
                                    labels=fn_label)
        oldest = GaugeMetricFamily("gearman_oldest_queued_job_age_seconds",
                                   "How long the oldest ready job has waited.",
                                   labels=fn_label)
        wait = HistogramMetricFamily("gearman_job_queue_wait_seconds",
                                     "From submit (or requeue) to JOB_ASSIGN.",
                                     labels=fn_label)
        run = HistogramMetricFamily("gearman_job_run_seconds",
                                    "From JOB_ASSIGN to the worker's result.",
                                    labels=fn_label)
        for name, st, fn in stats.functions(manager, self.view):
            label = stats.label(name)
            for i, priority in enumerate(stats.PRIORITY_NAMES):
                submitted.add_metric([label, priority, "false"], st.submitted[i])
                submitted.add_metric([label, priority, "true"], st.submitted[i + 3])
            for key, family in counters.items():
                family.add_metric([label], getattr(st, key))
            queued.add_metric([label], fn.queued if fn else 0)
            running.add_metric([label], fn.running if fn else 0)
            workers.add_metric([label], len(fn.workers) if fn else 0)
            oldest.add_metric([label], stats.oldest_age(fn, now))
            wait.add_metric([label], _buckets(st.wait), st.wait_sum)
            run.add_metric([label], _buckets(st.run), st.run_sum)
        yield submitted
        yield from counters.values()
        yield from (queued, running, workers, oldest, wait, run)
        bytes_queued = GaugeMetricFamily("gearman_queued_bytes",
                                         "Payload bytes of the jobs ready in the queues.",
                                         labels=fn_label)
        for name, _, fn in stats.functions(manager, self.view):
            bytes_queued.add_metric([stats.label(name)], fn.bytes_queued if fn else 0)
        yield bytes_queued
        dead = GaugeMetricFamily("gearman_dead_letters",
                                 "Jobs that used up their retries, kept as dead letters.",
                                 labels=fn_label)
        for name, letters in sorted(manager.dead_letters.by_function.items()):
            if self.view.sees(name):  # a tenant counts its own, by their plain names
                dead.add_metric([stats.label(self.view.show(name))], len(letters))
        yield dead
        if manager.results is not None:
            yield CounterMetricFamily("gearman_results_recorded",
                                      "Results of background jobs kept in the result cache.",
                                      value=manager.results.recorded)
            yield CounterMetricFamily("gearman_results_dropped",
                                      "Results a remote result cache could not take.",
                                      value=manager.results.dropped)
        yield GaugeMetricFamily("gearman_connections", "Connections open now.",
                                value=len(manager.conns))
        by_kind = GaugeMetricFamily("gearman_connections_by_kind",
                                    "Connections open now, by what they are.",
                                    labels=["kind"])
        for kind, count in manager.connections_now().items():
            by_kind.add_metric([kind], count)
        yield by_kind
        yield from _server_metrics(ctx.server_stats() if ctx.server_stats else {})
        yield CounterMetricFamily("gearman_connections_opened", "Connections ever opened.",
                                  value=manager.connections_total)
        yield GaugeMetricFamily("gearman_uptime_seconds", "Seconds since the server started.",
                                value=ctx.uptime(now))
        info = GaugeMetricFamily("gearman_build_info", "The server's version (always 1).",
                                 labels=["version"])
        info.add_metric([ctx.version], 1)
        yield info


def _server_metrics(report: dict[str, object]) -> Iterator[Metric]:
    """The server's own counters (``Server.server_stats``): Gear traffic, store commits."""
    gear = report.get("gear")
    if isinstance(gear, dict):
        for key, text in (("packets_in", "Packets received on the Gear port."),
                          ("bytes_in", "Bytes received on the Gear port."),
                          ("packets_out", "Packets sent on the Gear port."),
                          ("bytes_out", "Bytes sent on the Gear port.")):
            yield CounterMetricFamily(f"gearman_gear_{key}", text, value=gear[key])
    store = report.get("store")
    if isinstance(store, dict):
        yield CounterMetricFamily("gearman_store_commits", "Store commits that succeeded.",
                                  value=store["commits"])
        yield CounterMetricFamily("gearman_store_commit_failures", "Store commits that failed.",
                                  value=store["failures"])
        yield CounterMetricFamily("gearman_store_committed_jobs",
                                  "Jobs added by successful commits (over commits: the mean "
                                  "batch size).", value=store["batch_jobs_sum"])
        seconds = store["commit_seconds"]
        assert isinstance(seconds, dict)
        commit = HistogramMetricFamily("gearman_store_commit_seconds",
                                       "How long each successful store commit took.")
        commit.add_metric([], _buckets(seconds["counts"]), seconds["sum"])
        yield commit


def render(ctx: AdminContext, view: View = ALL) -> bytes:
    """The metrics page, read now (of the functions ``view`` sees)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(ctx, view))
    return generate_latest(registry)
