"""Benchmarks that print JSON (``flywheel bench ...``): speed and memory targets are checked here."""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

from flywheel.config import load_config
from flywheel.intervals import latest_intervals

T = TypeVar("T")

BENCH_WORKLOAD = "customer_support_router"
BENCH_NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux the high-water mark comes from ``/proc/self/status`` (VmHWM): a process started by
    another (a training job run by the worker) would otherwise report, through ``ru_maxrss``, its
    parent's peak from before the ``exec`` when that is higher. ``ru_maxrss`` (KiB) elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bench_etl(records: int, page_size: int = 1000, quiet: bool = False) -> dict[str, Any]:
    """Seed ``records`` demo records of one day into a fresh local log store and time their extraction.

    Seeding runs in a child process, so this process's peak RSS is the extractor's own;
    ``baseline_rss_mb`` is the same process with its libraries loaded, before the first record.
    """
    from flywheel.embedded import LocalLogStore
    from flywheel.extract.partition import extract_interval
    from flywheel.extract.sources.elasticsearch import connect
    from flywheel.storage import ArtifactStore

    config = load_config()
    workload = config.workload(BENCH_WORKLOAD)
    start, end = latest_intervals(workload.schedule, 1, BENCH_NOW)[0]
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp, LocalLogStore.start() as logs:
        bench_config = Path(tmp) / "flywheel.yaml"
        raw = config.model_dump(mode="json")
        raw["artifact_store"] = {"root": f"{tmp}/artifacts", "storage_options": {}}
        raw["metadata"] = {"conn_id": None, "url": f"sqlite:///{tmp}/flywheel.db"}
        raw["workloads"] = [w for w in raw["workloads"] if w["workload_id"] == BENCH_WORKLOAD]
        bench_config.write_text(yaml.safe_dump(raw))
        os.environ.update(logs.connection_env(workload.log_source.conn_id))
        # A separate process, so that seeding's memory does not count in this process's peak RSS.
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            seeded_docs = pool.submit(_seed_one_day, str(bench_config), records).result()
        # A client made (and dropped) here loads the client libraries before the baseline is taken.
        connect(workload.log_source.conn_id, workload.log_source.request_timeout_s, raw_hits=True)
        baseline = peak_rss_mb()  # interpreter and libraries loaded, no record read yet
        if not quiet:
            print(f"seeded {seeded_docs} records; extracting...", file=sys.stderr)
        result = extract_interval(
            workload.log_source,
            ArtifactStore(f"{tmp}/artifacts"),
            workload_id=BENCH_WORKLOAD,
            start=start,
            end=end,
            page_size=page_size,
        )
        return {
            "benchmark": "etl",
            "seeded": seeded_docs,
            "records": result.records,
            "seconds": result.seconds,
            "records_per_s": round(result.records / result.seconds, 1) if result.seconds else None,
            "peak_rss_mb": peak_rss_mb(),
            "baseline_rss_mb": baseline,
            "page_size": page_size,
            "pages": result.pages,
            "parts": result.parts,
            "parquet_mb": round(result.bytes / 2**20, 2),
            "read_method": result.read_method,
            "cpus": os.cpu_count(),
        }


def _seed_one_day(config_path: str, records: int) -> int:
    from flywheel.demo.seed import seed_logs

    report = seed_logs(load_config(config_path), days=1, records_per_day=records, now=BENCH_NOW)
    return report.documents


def bench_data(records: int, quiet: bool = False) -> dict[str, Any]:
    """Time the data stage (validation, PII scrubbing, de-duplication, splits) on ``records`` demo records.

    The raw partition is generated first (not timed); then one day is validated (Great Expectations
    and Data Docs included) and its dataset built, as the nightly DAG does.
    """
    from flywheel.dataset.build import build_dataset
    from flywheel.demo.seed import write_raw_partition
    from flywheel.storage import ArtifactStore
    from flywheel.validate.day import validate_day

    config = load_config()
    workload = config.workload(BENCH_WORKLOAD)
    start, end = latest_intervals(workload.schedule, 1, BENCH_NOW)[0]
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        store = ArtifactStore(f"{tmp}/artifacts")
        write_raw_partition(store, workload, start=start, end=end, count=records, seed=0)
        if not quiet:
            print(f"generated {records} raw records; validating...", file=sys.stderr)
        # A once-per-task cost, reported apart from the per-record work.
        import_started = time.perf_counter()
        import great_expectations  # noqa: F401

        gx_import_seconds = time.perf_counter() - import_started
        baseline = peak_rss_mb()
        started = time.perf_counter()
        day = validate_day(
            store, workload_id=BENCH_WORKLOAD, start=start, end=end, rules=workload.data_quality
        )
        validated = time.perf_counter()
        dataset = build_dataset(store, workload, start.date())
        finished = time.perf_counter()
    seconds = finished - started
    return {
        "benchmark": "data",
        "records": records,
        "seconds": round(seconds, 3),
        "records_per_s": round(records / seconds, 1),
        "validate_seconds": round(validated - started, 3),
        "dataset_seconds": round(finished - validated, 3),
        "gx_seconds": day.gx_seconds,
        "gx_share": round(day.gx_seconds / seconds, 3),
        "gx_import_seconds": round(gx_import_seconds, 3),
        "clean": day.clean,
        "quarantined": day.quarantined,
        "duplicates_removed": dataset.duplicates_removed,
        "splits": dataset.counts,
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "cpus": os.cpu_count(),
    }


def bench_day(records: int, page_size: int = 1000, quiet: bool = False) -> dict[str, Any]:
    """One day of ``records`` demo records through the ``files`` log source, extraction and validation.

    The demo traffic generator writes the day into JSONL day folders, as a gateway's log export would;
    then the day's window is extracted into its raw partition and validated (record rules, PII
    scrubbing, batch expectations and Data Docs), by the same functions the DAG's ``extract`` and
    ``validate`` tasks call. Each of the three stages runs in a process of its own, so that each one's
    peak RSS is its own: ``baseline_rss_mb`` is that process with its libraries loaded, before the
    stage's first record.
    """
    config = load_config()
    source = config.workload(BENCH_WORKLOAD).log_source
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        bench_config = Path(tmp) / "flywheel.yaml"
        raw = config.model_dump(mode="json")
        raw["artifact_store"] = {"root": f"{tmp}/artifacts", "storage_options": {}}
        raw["metadata"] = {"conn_id": None, "url": f"sqlite:///{tmp}/flywheel.db"}
        (bench_workload,) = (w for w in raw["workloads"] if w["workload_id"] == BENCH_WORKLOAD)
        bench_workload["log_source"] = {
            "type": "files",
            "url": f"{tmp}/logs",
            "page_size": page_size,
            **{name: getattr(source, name) for name in ("timestamp_field", "workload_field", "client_field")},
        }
        raw["workloads"] = [bench_workload]
        bench_config.write_text(yaml.safe_dump(raw))
        stages: dict[str, dict[str, Any]] = {}
        for name, stage, args in (
            ("generate", _generate_day, (str(bench_config), records)),
            ("extract", _extract_day, (str(bench_config),)),
            ("validate", _validate_day, (str(bench_config),)),
        ):
            if not quiet:
                print(f"{name}...", file=sys.stderr)
            # A fresh process per stage: a pool's worker would carry one stage's peak into the next.
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                figures = pool.submit(stage, *args).result()
            seconds = figures["seconds"]
            figures["records_per_s"] = round(figures["records"] / seconds, 1) if seconds else None
            stages[name] = figures
        log_mb = sum(path.stat().st_size for path in Path(tmp, "logs").rglob("*") if path.is_file()) / 2**20
    return {
        "benchmark": "day",
        "records": records,
        "log_source": "files",
        "page_size": page_size,
        "generated": stages["generate"]["records"],
        "extracted": stages["extract"]["records"],
        "clean": stages["validate"]["clean"],
        "quarantined": stages["validate"]["quarantined"],
        "log_mb": round(log_mb, 1),
        "stages": stages,
        "cpus": os.cpu_count(),
    }


def _measured(work: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    """``work()``'s result, and its ``seconds``, ``peak_rss_mb`` and ``baseline_rss_mb`` (the RSS before)."""
    baseline = peak_rss_mb()
    started = time.perf_counter()
    result = work()
    figures = {
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline,
    }
    return result, figures


def _bench_window(config_path: str) -> tuple[Any, Any, datetime, datetime]:
    """The bench configuration, its workload and the day's window (the latest interval before BENCH_NOW)."""
    config = load_config(config_path)
    workload = config.workload(BENCH_WORKLOAD)
    start, end = latest_intervals(workload.schedule, 1, BENCH_NOW)[0]
    return config, workload, start, end


def _generate_day(config_path: str, records: int) -> dict[str, Any]:
    """Write one day of demo traffic into the ``files`` source's day folders."""
    from flywheel.demo.seed import seed_logs

    config = load_config(config_path)
    report, figures = _measured(
        lambda: seed_logs(config, days=1, records_per_day=records, now=BENCH_NOW, workloads=[BENCH_WORKLOAD])
    )
    return {"records": report.documents, **figures}


def _extract_day(config_path: str) -> dict[str, Any]:
    """Extract the day's window from the day folders into its raw partition, as the ``extract`` task does."""
    from flywheel.extract.partition import extract_interval
    from flywheel.storage import ArtifactStore

    config, workload, start, end = _bench_window(config_path)
    result, figures = _measured(
        lambda: extract_interval(
            workload.log_source,
            ArtifactStore(config.artifact_store.root),
            workload_id=BENCH_WORKLOAD,
            start=start,
            end=end,
            client_ids=workload.client_ids,
        )
    )
    return {
        "records": result.records,
        **figures,
        "pages": result.pages,
        "parquet_mb": round(result.bytes / 2**20, 1),
    }


def _validate_day(config_path: str) -> dict[str, Any]:
    """Validate the day's raw partition, as the ``validate`` task does (Data Docs included)."""
    import great_expectations  # noqa: F401  # loaded before the baseline: a once-per-task cost

    from flywheel.storage import ArtifactStore
    from flywheel.validate.day import validate_day

    config, workload, start, end = _bench_window(config_path)
    day, figures = _measured(
        lambda: validate_day(
            ArtifactStore(config.artifact_store.root),
            workload_id=BENCH_WORKLOAD,
            start=start,
            end=end,
            rules=workload.data_quality,
        )
    )
    return {
        "records": day.extracted,
        **figures,
        "clean": day.clean,
        "quarantined": day.quarantined,
        "reasons": day.reasons,
        "gx_seconds": day.gx_seconds,
        "success": day.success,
    }
