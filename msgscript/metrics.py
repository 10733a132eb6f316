"""Prometheus metrics of one daemon: what its scripts did, and the state of its parts when scraped.

The hot path only adds to plain numbers: a message is one integer increment, a script run one more and a
histogram bucket found by bisection (about half a microsecond together, where prometheus_client's own
counters and histograms, which take a lock per update, cost four times that). All of it happens on the event
loop, as does the scrape, so nothing needs a lock. Values the daemon keeps anyway (slots in flight, scripts in
the store, NATS reconnections) are read when `/metrics` is scraped, never updated as they change.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from msgscript import __version__
from msgscript.script import Script

Outcome = Literal["ok", "error", "timeout", "cancelled"]
"""How one script run ended: a result without error, one with an error, past its deadline (or its lock's), or
cancelled because nobody waited for its result any more."""
Source = Literal["nats", "http", "jetstream", "cron"]
TickOutcome = Literal["run", "elsewhere", "missed"]
"""What became of one tick of a `--* cron:` script in this daemon: it ran here, another daemon's copy of it
was stored first (so it ran there), or it could not be run (too late, or the stream did not answer)."""

DURATION_BUCKETS_S = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
"""From half a millisecond (a Lua function on the event loop) to the minutes a container may take."""
LOCK_WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Histogram:
    """Observations counted per bucket (the last one past every bound), made cumulative when scraped."""

    __slots__ = ("bounds", "counts", "labels", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.labels = [repr(float(bound)) for bound in bounds] + ["+Inf"]
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (`le`).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, total = [], 0
        for le, count in zip(self.labels, self.counts, strict=True):
            total += count
            cumulative.append((le, float(total)))
        return cumulative


class _WorkerLabelled:
    """Every sample of another registry's families, with the label `worker="<index>"` added."""

    def __init__(self, source: CollectorRegistry, worker: str) -> None:
        self._source = source
        self._worker = worker

    def describe(self) -> list[Metric]:
        """Nothing: the names are the source registry's to check."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The source's families of this moment, labelled."""
        for family in self._source.collect():
            family.samples = [s._replace(labels={**s.labels, "worker": self._worker}) for s in family.samples]
            yield family


class Metrics:
    """The metrics of one daemon, in a registry of its own: several daemons may share a process (tests do).

    `in_flight`, `scripts_loaded` and `nats_reconnects` are read when the registry is collected; `in_flight_limit`
    is `-max-in-flight`. With `worker` (one of several worker processes: its index), every sample carries the label
    `worker="<index>"`. Record and collect on the event loop only.
    """

    def __init__(
        self,
        *,
        in_flight: Callable[[], float],
        in_flight_limit: int,
        scripts_loaded: Callable[[], float],
        nats_reconnects: Callable[[], float],
        worker: str = "",
    ) -> None:
        self._in_flight = in_flight
        self._in_flight_limit = in_flight_limit
        self._scripts_loaded = scripts_loaded
        self._nats_reconnects = nats_reconnects
        self._messages: dict[Source, int] = {"nats": 0, "http": 0, "jetstream": 0, "cron": 0}
        self._ticks: dict[tuple[str, str, TickOutcome], int] = {}
        self._runs: dict[tuple[str, str, str, Outcome], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self._lock_wait = _Histogram(LOCK_WAIT_BUCKETS_S)
        self.registry = CollectorRegistry()
        families = CollectorRegistry() if worker else self.registry
        ProcessCollector(registry=families)
        PlatformCollector(registry=families)
        GCCollector(registry=families)
        families.register(self)
        if worker:
            self.registry.register(_WorkerLabelled(families, worker))

    def count_message(self, source: Source) -> None:
        """One message arrived over NATS, one gateway request for a subject with scripts, or one durable delivery
        or scheduled tick to run."""
        self._messages[source] += 1

    def count_tick(self, script: Script, outcome: TickOutcome) -> None:
        """One tick of a scheduled script came due in this daemon."""
        key = (script.subject, script.name, outcome)
        self._ticks[key] = self._ticks.get(key, 0) + 1

    def observe_run(self, script: Script, outcome: Outcome, duration_s: float) -> None:
        """One script run ended after `duration_s`."""
        executor = script.executor
        key = (script.subject, script.name, executor, outcome)
        self._runs[key] = self._runs.get(key, 0) + 1
        duration = self._durations.get(executor)
        if duration is None:
            duration = self._durations[executor] = _Histogram(DURATION_BUCKETS_S)
        duration.observe(duration_s)

    def observe_lock_wait(self, wait_s: float) -> None:
        """A `lock: true` script waited `wait_s` for the cluster lock (got or not)."""
        self._lock_wait.observe(wait_s)

    def describe(self) -> Iterator[Metric]:
        """The families `collect` yields (for the registry's check of duplicate names)."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """The daemon's own families, with the values of this moment."""
        runs = CounterMetricFamily(
            "msgscript_executions",
            "Script runs by the script's subject, name and executor, and how they ended: "
            "ok, error, timeout or cancelled.",
            labels=("subject", "name", "executor", "outcome"),
        )
        for key, count in list(self._runs.items()):
            runs.add_metric(key, count)
        yield runs
        duration = HistogramMetricFamily(
            "msgscript_execution_duration_seconds",
            "Time from a script run's start to its end: libraries, lock wait and execution.",
            labels=("executor",),
        )
        for executor, histogram in list(self._durations.items()):
            duration.add_metric((executor,), histogram.buckets(), histogram.sum)
        yield duration
        messages = CounterMetricFamily(
            "msgscript_messages",
            "Messages arrived for script subjects over NATS, gateway requests for subjects with scripts, "
            "deliveries to durable scripts from JetStream, and ticks of scheduled scripts run by this daemon.",
            labels=("source",),
        )
        for source, count in list(self._messages.items()):
            messages.add_metric((source,), count)
        yield messages
        ticks = CounterMetricFamily(
            "msgscript_cron_ticks",
            "Ticks of `--* cron:` scripts that came due in this daemon, by how they went: run here, run by another "
            "daemon (elsewhere), or missed (too late, or the stream did not answer).",
            labels=("subject", "name", "outcome"),
        )
        for tick_key, count in list(self._ticks.items()):
            ticks.add_metric(tick_key, count)
        yield ticks
        yield HistogramMetricFamily(
            "msgscript_lock_wait_seconds",
            "Time `lock: true` scripts waited for the cluster lock, whether they got it or not.",
            buckets=self._lock_wait.buckets(),
            sum_value=self._lock_wait.sum,
        )
        yield GaugeMetricFamily(
            "msgscript_in_flight",
            "NATS messages and HTTP requests being handled now (-max-in-flight bounds them).",
            value=self._in_flight(),
        )
        yield GaugeMetricFamily(
            "msgscript_in_flight_limit",
            "The bound on msgscript_in_flight (-max-in-flight).",
            value=self._in_flight_limit,
        )
        yield GaugeMetricFamily("msgscript_scripts_loaded", "Scripts in the store.", value=self._scripts_loaded())
        yield CounterMetricFamily("msgscript_nats_reconnects", "Reconnections to NATS.", value=self._nats_reconnects())
        build_info = GaugeMetricFamily(
            "msgscript_build_info", "Always 1, labelled with the version.", labels=("version",)
        )
        build_info.add_metric((__version__,), 1)
        yield build_info
