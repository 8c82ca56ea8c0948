"""Seeding the log source with demo traffic, the way an LLM gateway would have logged it.

For an ``elasticsearch`` source, documents go into daily indices (``flywheel-logs-2026.11.20`` for the
pattern ``flywheel-logs-*``) under an index template whose mapping indexes the routing fields and keeps
``request`` / ``response`` unindexed, as a production log index for arbitrary tool schemas would. For a
``files`` source, they go into one JSONL file per workload in each UTC day's folder, as a gateway's
log export would.

With ``drift_day``, the seeded history carries an API change: from that day on, the workloads that
have one (:data:`~flywheel.demo.traffic.API_CHANGE_KINDS`) log the changed tool schemas and their
teacher calls the changed API (:mod:`flywheel.demo.support_router`).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from flywheel.config import FlywheelConfig, WorkloadConfig
from flywheel.demo.traffic import API_CHANGE_KINDS, PII_RATE, DemoRecord, generate_traffic
from flywheel.errors import PermanentError
from flywheel.extract.sources.elasticsearch import ElasticsearchSource
from flywheel.extract.sources.files import FilesSource
from flywheel.intervals import Interval, latest_intervals
from flywheel.storage import ArtifactStore


@dataclass(frozen=True)
class DemoWorkload:
    """Which traffic generator feeds a configured workload, and its share of the daily volume."""

    kind: str
    volume_share: float


DEMO_WORKLOADS = {
    "customer_support_router": DemoWorkload("support_router", 1.0),
    # A quieter workload: it replays 408 distinct BFCL requests, so full volume would be mostly repeats.
    "bfcl_live_assistant": DemoWorkload("bfcl_live", 0.25),
}

DEFAULT_CLIENT_IDS = ("web-shop", "mobile-app", "partner-api")
"""client_id values for workloads whose config does not restrict clients."""

TEMPLATE_NAME = "flywheel-demo-logs"


class SeedError(PermanentError):
    """The log store rejected documents, or no configured workload has demo traffic."""


@dataclass
class SeedReport:
    """What was written: documents per workload and interval, the noise injected, the personal data
    planted (values per kind), and where the API changed (``api_changed``: workload to the start of its
    first interval under the changed API)."""

    documents: int = 0
    by_workload: dict[str, int] = field(default_factory=dict)
    noise: dict[str, dict[str, int]] = field(default_factory=dict)
    pii: dict[str, dict[str, int]] = field(default_factory=dict)
    intervals: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    api_changed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "by_workload": self.by_workload,
            "noise": self.noise,
            "pii": self.pii,
            "intervals": self.intervals,
            "api_changed": self.api_changed,
        }


def log_index_template(source: ElasticsearchSource) -> dict[str, Any]:
    """Index template body for the log indices matched by ``source.index``."""
    return {
        "index_patterns": [source.index],
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "dynamic": False,
                "properties": {
                    source.timestamp_field: {"type": "date"},
                    source.workload_field: {"type": "keyword"},
                    source.client_field: {"type": "keyword"},
                    "request": {"type": "object", "enabled": False},
                    "response": {"type": "object", "enabled": False},
                },
            },
        },
    }


def daily_index(source: ElasticsearchSource, timestamp: Any, fallback: datetime) -> str:
    """The daily index a document is written to: the pattern's prefix plus its UTC date."""
    if not source.index.endswith("*"):
        return source.index
    return source.index[:-1] + _log_day(timestamp, fallback).replace("-", ".")


def _log_day(timestamp: Any, fallback: datetime) -> str:
    """The UTC date (``2026-11-20``) a document is filed under: its ISO timestamp's, else ``fallback``'s."""
    return (
        timestamp[:10] if isinstance(timestamp, str) and len(timestamp) >= 10 else fallback.date().isoformat()
    )


def demo_workloads(
    config: FlywheelConfig, only: list[str] | None = None
) -> list[tuple[WorkloadConfig, DemoWorkload]]:
    """Configured workloads that have a demo traffic generator, with that generator."""
    chosen = [
        (w, DEMO_WORKLOADS[w.workload_id])
        for w in config.workloads
        if w.workload_id in DEMO_WORKLOADS and (not only or w.workload_id in only)
    ]
    if not chosen:
        raise SeedError(
            f"no configured workload has demo traffic; demo workloads: {', '.join(DEMO_WORKLOADS)}"
        )
    return chosen


def seed_logs(
    config: FlywheelConfig,
    *,
    days: int,
    records_per_day: int,
    now: datetime | None = None,
    seed: int = 0,
    workloads: list[str] | None = None,
    noise_rate: float = 0.08,
    drift_day: int | None = None,
    pii_rate: float = PII_RATE,
) -> SeedReport:
    """Write ``days`` data intervals of demo traffic for each demo workload into its log source.

    ``records_per_day`` is the full-volume workload's count; quieter ones get their share of it.
    ``drift_day``: the seeded day (1 is the oldest, ``days`` the latest) from which the workloads
    whose backend API can change (:data:`~flywheel.demo.traffic.API_CHANGE_KINDS`) run on the changed
    API; None (the default): no change. ``pii_rate``: the share of conversations with a planted e-mail
    address, phone number, card number or IP address (:mod:`flywheel.demo.personal_data`), which
    validation scrubs.

    An Elasticsearch source's documents go through its own Airflow connection (``log_source.conn_id``);
    a files source's are written under its ``url``, replacing the workload's earlier demo files.
    """
    if not 0.0 <= pii_rate <= 1.0:
        raise SeedError(f"pii_rate must be within [0, 1], got {pii_rate}")
    if drift_day is not None and not 1 <= drift_day <= days:
        raise SeedError(
            f"drift_day must be a seeded day, 1 (the oldest) to {days} (the latest); got {drift_day}"
        )
    report = SeedReport()
    for workload, demo in demo_workloads(config, workloads):
        source = workload.log_source
        intervals = latest_intervals(workload.schedule, days, now)
        noise: Counter[str] = Counter()
        pii: Counter[str] = Counter()
        per_day = max(1, round(records_per_day * demo.volume_share))
        # Index of the first interval under the changed API (len(intervals): none is).
        changed_from = len(intervals)
        if drift_day is not None and demo.kind in API_CHANGE_KINDS:
            changed_from = drift_day - 1
            report.api_changed[workload.workload_id] = intervals[changed_from][0].isoformat()
        records = _counted(
            _records(workload, demo.kind, intervals, per_day, seed, noise_rate, changed_from, pii_rate),
            noise,
            pii,
        )
        if isinstance(source, ElasticsearchSource):
            written = _index_documents(source, workload.workload_id, records)
        elif isinstance(source, FilesSource):
            written = _write_files(source, workload.workload_id, records)
        else:
            raise SeedError(f"{workload.workload_id}: cannot seed a {source.type!r} log source")
        report.documents += written
        report.by_workload[workload.workload_id] = written
        report.noise[workload.workload_id] = dict(sorted(noise.items()))
        report.pii[workload.workload_id] = dict(sorted(pii.items()))
        report.intervals[workload.workload_id] = [(s.isoformat(), e.isoformat()) for s, e in intervals]
    return report


def _counted(
    records: Iterator[tuple[DemoRecord, datetime]], noise: Counter[str], pii: Counter[str]
) -> Iterator[tuple[DemoRecord, datetime]]:
    """``records`` as they are, counting their noise kinds and planted personal data on the way."""
    for record, interval_start in records:
        noise[record.noise.value if record.noise else "clean"] += 1
        pii.update(planted.kind.value for planted in record.pii)
        yield record, interval_start


def put_log_index_template(client: Any, source: ElasticsearchSource) -> None:
    """Put the template of ``source``'s log indices (:func:`log_index_template`).

    One template per index pattern: workloads sharing a pattern share (and re-put) it, and two templates
    of one pattern would refuse each other's indices.
    """
    name = TEMPLATE_NAME + "-" + re.sub(r"[^a-z0-9_-]+", "-", source.index.lower()).strip("-")
    client.indices.put_index_template(name=name, **log_index_template(source))


def _index_documents(
    source: ElasticsearchSource, workload_id: str, records: Iterator[tuple[DemoRecord, datetime]]
) -> int:
    from elasticsearch.helpers import streaming_bulk

    from flywheel.extract.sources.elasticsearch import connect

    client = connect(source.conn_id, source.request_timeout_s)
    put_log_index_template(client, source)
    written = 0
    failures: list[Any] = []
    for ok, item in streaming_bulk(
        client,
        _actions(records, source),
        chunk_size=2000,
        raise_on_error=False,
        max_retries=2,
    ):
        if ok:
            written += 1
        elif len(failures) < 5:
            failures.append(item)
    if failures:
        raise SeedError(f"log store rejected documents of {workload_id}: {failures}")
    client.indices.refresh(index=source.index)
    return written


def _write_files(
    source: FilesSource, workload_id: str, records: Iterator[tuple[DemoRecord, datetime]]
) -> int:
    """Write the records as ``<day folder>/demo-<workload_id>.jsonl``, one file per UTC day."""
    import fsspec
    import msgspec

    encode = msgspec.json.Encoder().encode
    fs, root = fsspec.core.url_to_fs(source.url, **source.storage_options)
    files: dict[str, Any] = {}
    written = 0
    try:
        for record, interval_start in records:
            day = date.fromisoformat(_log_day(record.source.get(source.timestamp_field), interval_start))
            folder = f"{root.rstrip('/')}/{source.day_folder(day)}"
            if folder not in files:
                fs.makedirs(folder, exist_ok=True)
                files[folder] = fs.open(f"{folder}/demo-{workload_id}.jsonl", "wb")
            files[folder].write(encode(record.source) + b"\n")
            written += 1
    finally:
        for handle in files.values():
            handle.close()
    return written


def _records(
    workload: WorkloadConfig,
    kind: str,
    intervals: list[Interval],
    records_per_day: int,
    seed: int,
    noise_rate: float,
    changed_from: int,
    pii_rate: float,
) -> Iterator[tuple[DemoRecord, datetime]]:
    """The records of every interval; those from interval ``changed_from`` on under the changed API."""
    clients = workload.client_ids or list(DEFAULT_CLIENT_IDS)
    for index, (start, end) in enumerate(intervals):
        for record in generate_traffic(
            kind=kind,
            workload_id=workload.workload_id,
            start=start,
            end=end,
            count=records_per_day,
            seed=seed,
            client_ids=clients,
            noise_rate=noise_rate,
            api_changed=index >= changed_from,
            pii_rate=pii_rate,
        ):
            yield record, start


def _actions(
    records: Iterator[tuple[DemoRecord, datetime]], source: ElasticsearchSource
) -> Iterator[dict[str, Any]]:
    for record, interval_start in records:
        index = daily_index(source, record.source.get(source.timestamp_field), interval_start)
        yield {"_op_type": "index", "_index": index, "_source": record.source}


def write_raw_partition(
    store: ArtifactStore,
    workload: WorkloadConfig,
    *,
    start: datetime,
    end: datetime,
    count: int,
    seed: int = 0,
    api_changed: bool | float = False,
) -> dict[str, Any]:
    """Commit a raw partition of demo traffic for one interval without a log store (tests, benchmarks).

    Documents go through the extractor's own conversion, as if read from the log source, so everything
    downstream sees exactly what an extraction would have written (outside-window records included).
    ``api_changed``: the interval's teacher runs on the changed API (as from ``seed_logs``'s ``drift_day``);
    a share between 0 and 1: that share of its records does, the rest still the old one (a release
    rolling out, or the old API's logs arriving late).
    """
    import msgspec

    from flywheel.extract.documents import RawRecord
    from flywheel.extract.partition import PartWriter, batches_of_records
    from flywheel.intervals import partition_day

    raw_source = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
    encode = msgspec.json.Encoder().encode
    changed = round(count * float(api_changed))
    # (records, on the changed API, seed): a whole day on one API keeps the seed it always had.
    streams = [(count - changed, False, seed), (changed, True, seed if changed == count else seed + 1)]
    traffic = itertools.chain.from_iterable(
        generate_traffic(
            kind=DEMO_WORKLOADS[workload.workload_id].kind,
            workload_id=workload.workload_id,
            start=start,
            end=end,
            count=records,
            seed=stream_seed,
            client_ids=workload.client_ids or list(DEFAULT_CLIENT_IDS),
            api_changed=on_changed_api,
        )
        for records, on_changed_api, stream_seed in streams
        if records
    )
    records = (
        RawRecord(f"demo/{start:%Y%m%d}-{number}", raw_source(encode(record.source)))
        for number, record in enumerate(traffic)
    )
    with store.stage_partition(workload.workload_id, partition_day(start)) as staged:
        writer = PartWriter(store, staged.part_path)
        for batch in batches_of_records(records, workload.log_source, "demo"):
            writer.write(batch)
        writer.close()
        return store.commit_partition(staged, {"records": writer.rows, "interval_start": start.isoformat()})
