"""Turn measurements into summaries, ratios against the targets, a printed table and a JSON document."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from _measure import TargetStats, median, percentile

LATENCY_RATIO_MAX = 1.5
THROUGHPUT_RATIO_MIN = 0.4
HTTP_THROUGHPUT_RATIO_MIN = 0.5


@dataclass(frozen=True, slots=True)
class Ratio:
    """daemon / baseline for one metric, and whether it meets its target (None: informational only)."""

    name: str
    label: str
    value: float
    limit: float | None = None
    at_most: bool = True

    @property
    def passed(self) -> bool | None:
        """PASS/MISS against the limit; None when there is no limit or no value."""
        if self.limit is None:
            return None
        if math.isnan(self.value):
            return False
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def to_doc(self) -> dict[str, Any]:
        """The JSON form."""
        doc: dict[str, Any] = {"value": _number(self.value)}
        if self.limit is not None:
            doc.update(target=("<= " if self.at_most else ">= ") + f"{self.limit:g}", passed=self.passed)
        return doc


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def _divide(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


def summarize(stats: TargetStats) -> dict[str, Any]:
    """Latency percentiles (µs) over all rounds, throughput per round, CPU and error counts."""
    latencies = sorted(stats.latencies_ns)
    doc: dict[str, Any] = {}
    if stats.round_p50_us:
        doc["latency_us"] = {
            "p50": _number(percentile(latencies, 0.50) / 1000),
            "p99": _number(percentile(latencies, 0.99) / 1000),
            "mean": _number(sum(latencies) / len(latencies) / 1000) if latencies else None,
            "samples": len(latencies),
            "round_p50": [_number(v) for v in stats.round_p50_us],
        }
    doc["throughput_rps"] = {
        "median": _number(median(stats.throughputs_rps)),
        "rounds": [_number(v) for v in stats.throughputs_rps],
    }
    doc["cpu_us_per_request"] = _number(median(stats.cpu_us_per_request))
    doc["client_cpu_fraction"] = _number(median(stats.client_cpu_fractions))
    doc["requests"] = stats.requests
    doc["errors"] = stats.errors
    return doc


def nats_ratios(echo: dict[str, Any], daemon: dict[str, Any]) -> list[Ratio]:
    """The NATS ratios: p50 and p99 latency, throughput."""

    def get(doc: dict[str, Any], *path: str) -> float:
        value: Any = doc
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return math.nan if value is None else float(value)

    return [
        Ratio(
            "latency_p50",
            "latency p50",
            _divide(get(daemon, "latency_us", "p50"), get(echo, "latency_us", "p50")),
            LATENCY_RATIO_MAX,
        ),
        Ratio("latency_p99", "latency p99", _divide(get(daemon, "latency_us", "p99"), get(echo, "latency_us", "p99"))),
        Ratio(
            "throughput",
            "throughput",
            _divide(get(daemon, "throughput_rps", "median"), get(echo, "throughput_rps", "median")),
            THROUGHPUT_RATIO_MIN,
            at_most=False,
        ),
    ]


def http_ratio(echo: dict[str, Any], daemon: dict[str, Any]) -> Ratio:
    """The HTTP throughput ratio."""
    value = _divide(daemon["throughput_rps"]["median"] or math.nan, echo["throughput_rps"]["median"] or math.nan)
    return Ratio("http_throughput", "HTTP throughput", value, HTTP_THROUGHPUT_RATIO_MIN, at_most=False)


def _cell(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _spread(values: Sequence[Any]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    return f"{min(present):,.0f}-{max(present):,.0f}"


def _verdict(ratio: Ratio | None) -> tuple[str, str, str]:
    if ratio is None:
        return "", "", ""
    target = "" if ratio.limit is None else ("<= " if ratio.at_most else ">= ") + f"{ratio.limit:g}"
    verdict = {None: "", True: "PASS", False: "MISS"}[ratio.passed]
    return _cell(ratio.value, 2), target, verdict


def format_table(
    title: str, labels: tuple[str, str], echo: dict[str, Any], daemon: dict[str, Any], ratios: dict[str, Ratio]
) -> str:
    """A fixed-width table: one row per metric, baseline and daemon side by side, with ratio and verdict."""
    rows: list[tuple[str, str, str, Ratio | None]] = []
    if "latency_us" in echo and "latency_us" in daemon:
        for key in ("p50", "p99"):
            rows.append(
                (
                    f"latency {key} (µs)",
                    _cell(echo["latency_us"][key]),
                    _cell(daemon["latency_us"][key]),
                    ratios.get(f"latency_{key}"),
                )
            )
        rows.append(
            (
                "  p50 per round (µs)",
                _spread(echo["latency_us"]["round_p50"]),
                _spread(daemon["latency_us"]["round_p50"]),
                None,
            )
        )
    throughput_ratio = ratios.get("throughput") or ratios.get("http_throughput")
    rows += [
        (
            "throughput (req/s, median)",
            _cell(echo["throughput_rps"]["median"], 0),
            _cell(daemon["throughput_rps"]["median"], 0),
            throughput_ratio,
        ),
        (
            "  per round (req/s)",
            _spread(echo["throughput_rps"]["rounds"]),
            _spread(daemon["throughput_rps"]["rounds"]),
            None,
        ),
        ("target CPU per request (µs)", _cell(echo["cpu_us_per_request"]), _cell(daemon["cpu_us_per_request"]), None),
        (
            "client CPU while pipelined",
            _percent(echo["client_cpu_fraction"]),
            _percent(daemon["client_cpu_fraction"]),
            None,
        ),
        ("failed requests", _cell(echo["errors"]), _cell(daemon["errors"]), None),
    ]
    header = ("", labels[0], labels[1], "ratio", "target", "")
    table = [header] + [(name, a, b, *_verdict(ratio)) for name, a, b, ratio in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [title]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:5], widths[1:5], strict=True)
        ]
        lines.append(("  " + "   ".join(cells) + "   " + row[5]).rstrip())
    return "\n".join(lines)


def format_verdicts(ratios: Sequence[Ratio]) -> str:
    """One PASS/MISS line per ratio that has a target."""
    lines = []
    for ratio in ratios:
        if ratio.limit is not None:
            comparison = "<=" if ratio.at_most else ">="
            verdict = "PASS" if ratio.passed else "MISS"
            lines.append(
                f"{verdict}  {ratio.label} daemon/baseline = {ratio.value:.2f} (target {comparison} {ratio.limit:g})"
            )
    return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def to_json(document: dict[str, Any]) -> str:
    """The machine-readable results."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
