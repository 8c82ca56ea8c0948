"""What the students save against the teacher: latency, tokens and cost per request.

The teacher's figures come from the production logs of the run's day, its raw partition: each
response's OpenAI ``usage`` (``prompt_tokens``, ``completion_tokens``) and the latency in the
top-level field named by ``report.teacher_latency_field``. A student's come from its evaluation's
``result.json`` (:func:`flywheel.evaluate.runner.summarize`): the latency percentiles over the
examples, the token totals and the job's throughput. ``report.prices`` turns both into a cost per
1,000 requests. The two sides answer different requests (the day's traffic; the evaluation examples
drawn from that traffic), so the comparison is per request, not request by request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date
from typing import TYPE_CHECKING, Any

import msgspec

from flywheel.config import PricesConfig, StudentPrices, TokenPrices
from flywheel.evaluate.stats import percentile
from flywheel.report.data import number

if TYPE_CHECKING:
    import pyarrow as pa

    from flywheel.storage import ArtifactStore

REQUESTS = 1_000
"""The costs are per this many requests."""


class _Usage(msgspec.Struct):
    prompt_tokens: int | float | None = None
    completion_tokens: int | float | None = None


class _Response(msgspec.Struct):
    """The part of a logged chat-completions response the teacher's figures need (the rest is skipped)."""

    usage: _Usage | None = None


_read_response = msgspec.json.Decoder(_Response).decode


def teacher_usage(batches: Iterable[pa.RecordBatch], latency_field: str | None) -> dict[str, Any]:
    """The teacher's latency and tokens per request over raw batches (``response_json``, ``extra_json``).

    ``requests`` counts every record; the token means cover the ``with_usage`` records whose response
    logged both token counts, the latency percentiles the ``with_latency`` ones with a numeric latency.
    A record whose JSON does not read (validation quarantines it) counts as having neither.
    """
    read_latency = None
    if latency_field:
        # Only the latency is decoded, under whatever name the logs give it.
        extra = msgspec.defstruct(
            "_Extra", [("latency_ms", int | float | None, None)], rename={"latency_ms": latency_field}
        )
        read_latency = msgspec.json.Decoder(extra).decode
    requests, with_usage, tokens_in, tokens_out = 0, 0, 0.0, 0.0
    latencies: list[float] = []
    for response_json, extra_json in _columns(batches):
        requests += 1
        response = _decoded(_read_response, response_json)
        usage = response.usage if response else None
        if usage and _count(usage.prompt_tokens) and _count(usage.completion_tokens):
            with_usage += 1
            tokens_in += usage.prompt_tokens
            tokens_out += usage.completion_tokens
        logged = _decoded(read_latency, extra_json) if read_latency else None
        if logged and _count(logged.latency_ms):
            latencies.append(logged.latency_ms / 1000)
    return {
        "requests": requests,
        "with_usage": with_usage,
        "with_latency": len(latencies),
        **latency_summary(latencies),
        "tokens_in": round(tokens_in / with_usage, 2) if with_usage else None,
        "tokens_out": round(tokens_out / with_usage, 2) if with_usage else None,
    }


def read_teacher_usage(
    store: ArtifactStore, workload_id: str, day: date, latency_field: str | None
) -> dict[str, Any] | None:
    """:func:`teacher_usage` of a day's committed raw partition, streamed; None when it has none."""
    import pyarrow.parquet as pq

    from flywheel.storage import PartitionNotFound

    try:
        files = store.partition_files(workload_id, day)
    except PartitionNotFound:
        return None
    batches = (
        batch
        for path in files
        for batch in pq.ParquetFile(path, filesystem=store.fs).iter_batches(
            5_000, columns=["response_json", "extra_json"]
        )
    )
    return teacher_usage(batches, latency_field)


def student_usage(result: dict[str, Any]) -> dict[str, Any]:
    """A student's latency and tokens per request from its evaluation's ``result.json``."""
    latency = result.get("latency_s") if isinstance(result.get("latency_s"), dict) else {}
    examples = result.get("examples")
    examples = examples if _count(examples) else None

    def per_request(key: str) -> float | None:
        total = result.get(key)
        return round(total / examples, 2) if examples and _count(total) else None

    return {
        "requests": examples,
        "latency_p50_s": latency.get("p50") if _count(latency.get("p50")) else None,
        "latency_p95_s": latency.get("p95") if _count(latency.get("p95")) else None,
        "tokens_in": per_request("tokens_in"),
        "tokens_out": per_request("tokens_out"),
        "examples_per_s": result.get("examples_per_s") if _count(result.get("examples_per_s")) else None,
    }


def latency_summary(seconds: list[float]) -> dict[str, float | None]:
    """The p50 and p95 of latencies in seconds, to 0.1 ms as ``result.json`` reports them."""
    p50, p95 = percentile(seconds, 50), percentile(seconds, 95)
    return {
        "latency_p50_s": None if p50 is None else round(p50, 4),
        "latency_p95_s": None if p95 is None else round(p95, 4),
    }


def cost_per_1k(usage: dict[str, Any], prices: TokenPrices | StudentPrices) -> float | None:
    """What :data:`REQUESTS` requests cost at ``prices``; None when a figure the prices need is missing.

    Token prices apply to the mean input and output tokens per request; a student's ``per_hour`` to
    the compute hours its evaluation job spent per request (1 / ``examples_per_s``).
    """
    cost = 0.0
    if prices.input_per_1m is not None and prices.output_per_1m is not None:
        tokens_in, tokens_out = usage.get("tokens_in"), usage.get("tokens_out")
        if tokens_in is None or tokens_out is None:
            return None
        cost += (tokens_in * prices.input_per_1m + tokens_out * prices.output_per_1m) / 1e6
    if isinstance(prices, StudentPrices) and prices.per_hour is not None:
        throughput = usage.get("examples_per_s")
        if not throughput:
            return None
        cost += prices.per_hour / 3600 / throughput
    return round(cost * REQUESTS, 6)


def savings(
    teacher: dict[str, Any] | None,
    students: list[tuple[dict[str, Any], dict[str, Any]]],
    prices: PricesConfig | None,
) -> dict[str, Any]:
    """The report data's ``savings`` block: the teacher's and each student's figures with their costs.

    ``students``: ``(evaluation identity, student_usage)`` pairs; costs are None without ``prices``.
    """

    def priced(usage: dict[str, Any], side: TokenPrices | StudentPrices | None) -> dict[str, Any]:
        return usage | {"cost_per_1k": cost_per_1k(usage, side) if side is not None else None}

    return {
        "currency": prices.currency if prices else None,
        "requests_per_cost": REQUESTS,
        "teacher": None if teacher is None else priced(teacher, prices.teacher if prices else None),
        "students": [who | priced(usage, prices.student if prices else None) for who, usage in students],
    }


def _columns(batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[str | None, str | None]]:
    for batch in batches:
        yield from zip(
            batch.column("response_json").to_pylist(), batch.column("extra_json").to_pylist(), strict=True
        )


def _decoded(decode: Any, text: str | None) -> Any:
    """``decode(text)``; None for no text, JSON that does not read or does not fit the struct."""
    if not text:
        return None
    try:
        return decode(text)
    except (msgspec.DecodeError, RecursionError):
        return None


def _count(value: Any) -> bool:
    """Whether ``value`` is a finite non-negative number (not a boolean): a token count, latency or rate."""
    n = number(value)
    return n is not None and n >= 0
