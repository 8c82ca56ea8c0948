"""Dataset building: the training window's clean partitions into train / validation / evaluation files.

The window is the last ``training_window_days`` days ending with the run's day. Only days whose batch
passed validation are used (the others are listed in the manifest). Records are de-duplicated across
the window on their conversation key (newest wins), then split by a salted hash of that key
(:mod:`flywheel.dataset.splits`), so a record keeps its split from night to night and nothing seen
in evaluation is ever trained on.

Layout under ``datasets/<workload_id>/`` (the paths are built in :mod:`flywheel.artifacts`)::

    <dataset_id>/train.jsonl        chat form for SFT: {"messages": [... , assistant answer], "tools": [...]}
    <dataset_id>/validation.jsonl   same form
    <dataset_id>/evaluation.jsonl   {"record_id", "label", "messages", "tools", "reference": {...}}
    <dataset_id>/manifest.json      counts per split and label, the tools offered, sources, accounting, hashes
    golden/evaluation.jsonl         the frozen golden evaluation set (when configured), written once
    latest.json                     pointer to the dataset of the latest window built

Two passes over the window keep memory small: the first reads four narrow columns to decide, the
second streams records into the split files.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pyarrow.parquet as pq

from flywheel import artifacts
from flywheel.config import WorkloadConfig
from flywheel.dataset.splits import Candidate, Split, golden_selection, plan_splits
from flywheel.errors import RetryableError
from flywheel.storage import ArtifactStore, PartitionNotFound
from flywheel.validate.keys import KEY_VERSION

DATASET_SCHEMA = "dataset/v1"
_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.Decoder().decode
_DECIDING_COLUMNS = ["record_id", "timestamp", "label", "conversation_key"]


@dataclass
class DatasetResult:
    """What a dataset build produced (the manifest's headline figures)."""

    dataset_id: str
    workload_id: str
    uri: str
    manifest_uri: str
    counts: dict[str, int]
    duplicates_removed: int
    first_day: str
    last_day: str
    days_used: list[str]
    days_skipped: dict[str, str]
    content_hash: str
    config_hash: str
    under_represented: list[str]
    stale_records: int
    """Records left out because they offer a retired tool (``data_quality.retired_tools: exclude``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EmptyWindowError(RetryableError):
    # Retryable: logs that arrive late can fill the window on a later try.
    """No validated day in the training window: there is nothing to build a dataset from."""


def dataset_config_hash(workload: WorkloadConfig) -> str:
    """Hash of everything that decides a dataset's content besides the data itself."""
    settings = {
        "data_quality": workload.data_quality.model_dump(mode="json"),
        "window": workload.training_window_days,
        "key_version": KEY_VERSION,  # a new key rule re-deals every split, like a new salt
    }
    return hashlib.sha256(_encode(settings)).hexdigest()[:16]


def build_dataset(store: ArtifactStore, workload: WorkloadConfig, end_day: date) -> DatasetResult:
    """Build the dataset of the window ending with ``end_day`` and publish it as the latest."""
    rules = workload.data_quality
    window = [end_day - timedelta(days=offset) for offset in reversed(range(workload.training_window_days))]
    sources, skipped = _window_sources(store, workload.workload_id, window)
    if not sources:
        raise EmptyWindowError(
            f"no validated day for {workload.workload_id} in {window[0]}..{window[-1]}: {skipped}"
        )

    excluding = rules.retired_tools == "exclude"
    offered = ToolSet()
    newest_day_offers: Counter[str] = Counter()  # records of the newest day offering each definition
    newest: dict[str, tuple[datetime, str, str, frozenset[str]]] = {}
    seen = 0
    columns = [*_DECIDING_COLUMNS, "tools_json"] if excluding else _DECIDING_COLUMNS
    for position, source in enumerate(sources, 1):
        for row in _read_rows(store, source["files"], columns):
            seen += 1
            tools = offered.add(row["tools_json"]) if excluding else frozenset()
            if position == len(sources):
                newest_day_offers.update(tools)
            current = newest.get(row["conversation_key"])
            candidate = (row["timestamp"], row["record_id"], row["label"], tools)
            if current is None or candidate[:2] > current[:2]:
                newest[row["conversation_key"]] = candidate
    least = rules.retired_tool_share * sources[-1]["records"]
    catalogue = {digest for digest, records in newest_day_offers.items() if records >= least}
    stale = {v[1] for v in newest.values() if not v[3] <= catalogue} if excluding else set()
    candidates = [
        Candidate(key=k, label=v[2], timestamp=v[0], record_id=v[1])
        for k, v in newest.items()
        if v[1] not in stale
    ]

    splits = rules.splits
    golden_ids, golden_is_new = _golden(store, workload, candidates)
    stale_golden = _stale_golden(store, workload, catalogue) if excluding and not golden_is_new else []
    golden_lines: list[bytes] = []
    plan = plan_splits(
        [c for c in candidates if c.record_id not in golden_ids],
        salt=splits.salt,
        evaluation_fraction=splits.evaluation_fraction,
        validation_fraction=splits.validation_fraction,
        evaluation_target=splits.evaluation_target,
        min_evaluation_per_label=splits.min_evaluation_per_label,
        min_label_examples=splits.min_label_examples,
        max_train_records=splits.max_train_records,
    )

    staging = store.path(artifacts.dataset_staging_dir(workload.workload_id, uuid.uuid4().hex[:8]))
    store.fs.makedirs(staging, exist_ok=True)
    try:
        files = {split: store.fs.open(artifacts.split_uri(staging, split.value), "wb") for split in Split}
        digests = {split: hashlib.sha256() for split in Split}
        per_label: dict[str, Counter[str]] = defaultdict(Counter)
        tools = ToolSet()
        try:
            for source in sources:
                wanted = set(plan.assignments) | (golden_ids if golden_is_new else set())
                for row in _read_rows(store, source["files"], None, only=wanted):
                    if golden_is_new and row["record_id"] in golden_ids:
                        golden_lines.append(_encode(_example(row, Split.EVALUATION)) + b"\n")
                    split = plan.assignments.get(row["record_id"])
                    if split is None:
                        continue
                    line = _encode(_example(row, split)) + b"\n"
                    tools.add(row["tools_json"])
                    files[split].write(line)
                    digests[split].update(line)
                    per_label[split.value][row["label"]] += 1
        finally:
            for handle in files.values():
                handle.close()
        if golden_is_new:
            store.write_bytes_atomic(_golden_path(store, workload), b"".join(sorted(golden_lines)))
        content_hash = hashlib.sha256(b"".join(d.digest() for d in digests.values())).hexdigest()
        dataset_id = f"{end_day.isoformat()}-{content_hash[:10]}"
        counts = {split.value: sum(per_label[split.value].values()) for split in Split}
        manifest = {
            "schema": DATASET_SCHEMA,
            "dataset_id": dataset_id,
            "workload_id": workload.workload_id,
            "created_at": datetime.now(UTC).isoformat(),
            "window": {"first_day": window[0].isoformat(), "last_day": window[-1].isoformat()},
            "sources": [{k: v for k, v in s.items() if k != "files"} for s in sources],
            "days_skipped": skipped,
            "records_seen": seen,
            "duplicates_removed": seen - len(newest),
            "counts": counts,
            "counts_per_label": {split: dict(sorted(c.items())) for split, c in per_label.items()},
            "tools": tools.definitions,
            "held_out": len(plan.held_out),
            "golden": {
                "records": len(golden_ids),
                "uri": store.uri(_golden_path(store, workload)),
                "stale": stale_golden,
            }
            if golden_ids
            else None,
            "retired_tools": _retired(sources, offered, catalogue, stale, stale_golden)
            if excluding
            else None,
            "under_represented": plan.under_represented,
            "pii": dict(sum((Counter(s["pii"]) for s in sources), Counter())),
            "accounting": {s["day"]: s["accounting"] for s in sources},
            "split_rules": workload.data_quality.splits.model_dump(mode="json"),
            "config_hash": dataset_config_hash(workload),
            "content_hash": content_hash,
        }
        store.write_json_atomic(artifacts.manifest_uri(staging), manifest)
        final = store.path(artifacts.dataset_dir(workload.workload_id, dataset_id))
        if store.fs.exists(final):
            store.fs.rm(final, recursive=True)  # same inputs, same id: an identical rebuild
        store.fs.mv(staging, final, recursive=True)
    except BaseException:
        if store.fs.exists(staging):
            store.fs.rm(staging, recursive=True)
        raise
    _point_latest(
        store,
        workload.workload_id,
        {"dataset_id": dataset_id, "uri": store.uri(final), "last_day": window[-1].isoformat()},
    )
    return DatasetResult(
        dataset_id=dataset_id,
        workload_id=workload.workload_id,
        uri=store.uri(final),
        manifest_uri=store.uri(artifacts.manifest_uri(final)),
        counts=counts,
        duplicates_removed=manifest["duplicates_removed"],
        first_day=window[0].isoformat(),
        last_day=window[-1].isoformat(),
        days_used=[s["day"] for s in sources],
        days_skipped=skipped,
        content_hash=content_hash,
        config_hash=manifest["config_hash"],
        under_represented=plan.under_represented,
        stale_records=len(stale),
    )


class ToolSet:
    """The distinct tool definitions that records offer, each by the digest of its canonical JSON.

    ``definitions`` maps each digest to the tool's name: a tool whose schema or description changed
    gets a new digest under the same name, a renamed tool a new name. Records repeat the same tool
    list, so each distinct list is decoded once.
    """

    def __init__(self) -> None:
        self.definitions: dict[str, str] = {}
        self._lists: dict[bytes, frozenset[str]] = {}

    def add(self, tools_json: str) -> frozenset[str]:
        """Count the tools of one record's ``tools_json`` (a JSON list of OpenAI tool entries); returns
        their digests."""
        key = hashlib.blake2b(tools_json.encode(), digest_size=16).digest()
        digests = self._lists.get(key)
        if digests is None:
            # Validation let only lists of {"type": "function", "function": {"name": ...}} through.
            named = {
                hashlib.sha256(_encode(t)).hexdigest()[:16]: t["function"]["name"]
                for t in _decode(tools_json)
            }
            self.definitions.update(named)
            digests = self._lists[key] = frozenset(named)
        return digests


def _stale_golden(store: ArtifactStore, workload: WorkloadConfig, catalogue: set[str]) -> list[str]:
    """Record ids of the frozen golden set's examples that offer a tool outside ``catalogue``."""
    with store.fs.open(_golden_path(store, workload), "rb") as handle:
        examples = [_decode(line) for line in handle if line.strip()]
    tools = ToolSet()
    return sorted(
        e["record_id"] for e in examples if not tools.add(_encode(e["tools"]).decode()) <= catalogue
    )


def _retired(
    sources: list[dict[str, Any]],
    offered: ToolSet,
    catalogue: set[str],
    stale: set[str],
    stale_golden: list[str],
) -> dict[str, Any]:
    """The manifest's ``retired_tools``: the tool definitions the window's records offer outside the
    current ``catalogue`` (by name: ``changed`` when the catalogue has the name with another schema,
    else ``gone``) and the records left out for them."""
    current_names = {offered.definitions[d] for d in catalogue}
    retired = {
        name: "changed" if name in current_names else "gone"
        for digest, name in offered.definitions.items()
        if digest not in catalogue
    }
    return {
        "catalogue_day": sources[-1]["day"],
        "retired": dict(sorted(retired.items())),
        "stale_records": len(stale),
        "stale_golden": len(stale_golden),
    }


def _window_sources(
    store: ArtifactStore, workload_id: str, window: list[date]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    sources, skipped = [], {}
    for day in window:
        try:
            record = store.read_partition_record(workload_id, day, "clean")
        except PartitionNotFound:
            skipped[day.isoformat()] = "not validated"
            continue
        if not record.get("success"):
            skipped[day.isoformat()] = "batch failed: " + ", ".join(record.get("failed_expectations", []))
            continue
        sources.append(
            {
                "day": day.isoformat(),
                "version": record["version"],
                "records": record["records"],
                "accounting": record["accounting"],
                "pii": record.get("pii", {}),
                "files": store.partition_files(workload_id, day, "clean"),
            }
        )
    return sources, skipped


def _example(row: dict[str, Any], split: Split) -> dict[str, Any]:
    """One line of a split file. Stored JSON is spliced in as raw text, never decoded and re-encoded."""
    messages = msgspec.Raw(row["messages_json"].encode())
    tools = msgspec.Raw(row["tools_json"].encode())
    calls = msgspec.Raw(row["tool_calls_json"].encode())
    if split is Split.EVALUATION:
        return {
            "record_id": row["record_id"],
            "label": row["label"],
            "messages": messages,
            "tools": tools,
            "reference": {"tool_calls": calls, "content": row["content"]},
        }
    answer: dict[str, Any] = {"role": "assistant", "content": row["content"]}
    parsed_calls = _decode(row["tool_calls_json"])
    if parsed_calls:
        answer["tool_calls"] = [
            {
                "id": f"call_{row['record_id'][:8]}_{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": _encode(c["arguments"]).decode()},
            }
            for i, c in enumerate(parsed_calls)
        ]
    conversation = row["messages_json"][:-1] + ("," if row["messages_json"] != "[]" else "")
    return {
        "record_id": row["record_id"],
        "messages": msgspec.Raw((conversation + _encode(answer).decode() + "]").encode()),
        "tools": tools,
    }


def _golden_path(store: ArtifactStore, workload: WorkloadConfig) -> str:
    return store.path(artifacts.golden_path(workload.workload_id))


def _golden(
    store: ArtifactStore, workload: WorkloadConfig, candidates: list[Candidate]
) -> tuple[set[str], bool]:
    """Record ids of the frozen golden evaluation set, and whether this build chose it.

    The set is chosen once, from evaluation-bucket records, and its examples are written by the build
    that chose it; later builds only read its ids to keep those records out of the fresh splits.
    """
    size = workload.data_quality.splits.golden_size
    if size == 0:
        return set(), False
    path = _golden_path(store, workload)
    if store.fs.exists(path):
        with store.fs.open(path, "rb") as handle:
            return {json.loads(line)["record_id"] for line in handle if line.strip()}, False
    splits = workload.data_quality.splits
    chosen = golden_selection(
        candidates, salt=splits.salt, size=size, evaluation_fraction=splits.evaluation_fraction
    )
    return set(chosen), True


def _read_rows(
    store: ArtifactStore, parts: list[str], columns: list[str] | None, only: set[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of Parquet parts, one record batch in memory at a time; with ``only``, just those record ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(sorted(only), pa.string()) if only is not None else None
    for part in parts:
        for batch in pq.ParquetFile(part, filesystem=store.fs).iter_batches(
            batch_size=5_000, columns=columns
        ):
            if wanted is not None:
                batch = batch.filter(pc.is_in(batch.column("record_id"), value_set=wanted))
            yield from batch.to_pylist()


def _point_latest(store: ArtifactStore, workload_id: str, pointer: dict[str, str]) -> None:
    """Point ``latest.json`` at this dataset unless one of a later window is already there
    (re-running an old day must not make training fall back to older data)."""
    path = store.path(artifacts.latest_path(workload_id))
    if store.fs.exists(path):
        with store.fs.open(path, "rb") as handle:
            current = json.load(handle)
        if current.get("last_day", "") > pointer["last_day"]:
            return
    store.write_json_atomic(path, pointer)
