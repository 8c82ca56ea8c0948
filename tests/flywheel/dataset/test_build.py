"""Datasets over the training window: de-duplication, stable leak-free splits, golden set, manifest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flywheel.config import load_config
from flywheel.dataset.build import EmptyWindowError, build_dataset
from flywheel.dataset.splits import split_of
from flywheel.demo.seed import write_raw_partition
from flywheel.demo.support_router import TOOLS
from flywheel.evaluate.examples import load_examples
from flywheel.intervals import latest_intervals
from flywheel.storage import ArtifactStore
from flywheel.validate.day import validate_day

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def read_split(uri: str, split: str) -> list[dict]:
    path = Path(uri.removeprefix("file://")) / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def router(tmp_path):
    workload = load_config().workload("customer_support_router")
    workload = workload.model_copy(update={"training_window_days": 3})
    return workload, ArtifactStore(str(tmp_path / "artifacts"))


def add_day(
    store: ArtifactStore, workload, start: datetime, count: int = 600, *, api_changed: bool | float = False
) -> None:
    end = start + timedelta(days=1)
    write_raw_partition(store, workload, start=start, end=end, count=count, seed=11, api_changed=api_changed)
    result = validate_day(
        store,
        workload_id=workload.workload_id,
        start=start,
        end=end,
        rules=workload.data_quality,
        build_docs=False,
    )
    assert result.success, result.failed_expectations


def test_consecutive_days_never_move_a_record_between_splits(router):
    workload, store = router
    (d1, _), (d2, _) = latest_intervals(workload.schedule, 2, NOW)
    add_day(store, workload, d1)
    first = build_dataset(store, workload, d1.date())
    add_day(store, workload, d2)
    second = build_dataset(store, workload, d2.date())

    def split_by_record(result) -> dict[str, str]:
        return {
            example["record_id"]: split
            for split in ("train", "validation", "evaluation")
            for example in read_split(result.uri, split)
        }

    before, after = split_by_record(first), split_by_record(second)
    assert second.days_used == [d1.date().isoformat(), d2.date().isoformat()]
    common = set(before) & set(after)
    assert len(common) > 300
    assert all(before[r] == after[r] for r in common)
    evaluation_ever = {r for r, s in {**before, **after}.items() if s == "evaluation"}
    training_ever = {r for r, s in {**before, **after}.items() if s == "train"}
    assert not evaluation_ever & training_ever
    # The golden set is frozen on the first night and never overlaps training, then or later.
    golden = [
        json.loads(line)
        for line in store.fs.cat(
            store.path("datasets", workload.workload_id, "golden", "evaluation.jsonl")
        ).splitlines()
    ]
    golden_ids = {g["record_id"] for g in golden}
    # Chosen once from the first night's evaluation bucket: up to golden_size records.
    assert 0 < len(golden_ids) <= workload.data_quality.splits.golden_size
    assert not golden_ids & training_ever
    assert not golden_ids & evaluation_ever
    assert all("reference" in g for g in golden)


def test_duplicates_are_removed_newest_first_and_splits_follow_the_key(router):
    workload, store = router
    (d1, _), (d2, _) = latest_intervals(workload.schedule, 2, NOW)
    add_day(store, workload, d1)
    add_day(store, workload, d2)

    result = build_dataset(store, workload, d2.date())

    manifest = json.loads(store.fs.cat(result.manifest_uri.removeprefix("file://")))
    assert result.duplicates_removed == manifest["duplicates_removed"] > 0
    assert manifest["records_seen"] == sum(s["records"] for s in manifest["sources"])
    used = sum(result.counts.values())
    assert (
        used + manifest["held_out"] + result.duplicates_removed + manifest["golden"]["records"]
        == manifest["records_seen"]
    )
    rules = workload.data_quality.splits
    for split in ("train", "validation"):
        for example in read_split(result.uri, split)[:50]:
            assert example["messages"][-1]["role"] == "assistant"
    evaluation = read_split(result.uri, "evaluation")
    assert len(evaluation) <= rules.evaluation_target
    assert {e["label"] for e in evaluation} >= {"get_order_status", "<no_tool>"}
    for example in evaluation:
        assert example["reference"]["tool_calls"] or example["reference"]["content"]
    # Every split is what the salted hash of the conversation key says.
    keys = _keys_by_record(store, workload, [d1.date(), d2.date()])
    for split in ("train", "validation", "evaluation"):
        for example in read_split(result.uri, split):
            assert (
                split_of(
                    keys[example["record_id"]],
                    rules.salt,
                    rules.evaluation_fraction,
                    rules.validation_fraction,
                )
                == split
            )
    assert manifest["counts_per_label"]["evaluation"]
    # The tools the records offer, one entry per distinct definition: the router's seven.
    assert sorted(manifest["tools"].values()) == sorted(t["function"]["name"] for t in TOOLS)
    assert manifest["config_hash"] == result.config_hash
    assert manifest["content_hash"] == result.content_hash


def test_rebuilding_the_same_window_gives_the_same_dataset(router):
    workload, store = router
    ((d1, _),) = latest_intervals(workload.schedule, 1, NOW)
    add_day(store, workload, d1)

    first = build_dataset(store, workload, d1.date())
    second = build_dataset(store, workload, d1.date())

    assert first.dataset_id == second.dataset_id
    assert first.content_hash == second.content_hash
    latest = json.loads(store.fs.cat(store.path("datasets", workload.workload_id, "latest.json")))
    assert latest["dataset_id"] == second.dataset_id


def test_a_window_without_validated_days_is_an_error(router):
    workload, store = router
    with pytest.raises(EmptyWindowError, match="no validated day"):
        build_dataset(store, workload, NOW.date())


def _keys_by_record(store: ArtifactStore, workload, days) -> dict[str, str]:
    import pyarrow.parquet as pq

    keys = {}
    for day in days:
        for part in store.partition_files(workload.workload_id, day, "clean"):
            table = pq.read_table(part, columns=["record_id", "conversation_key"], filesystem=store.fs)
            keys.update(
                zip(
                    table.column("record_id").to_pylist(),
                    table.column("conversation_key").to_pylist(),
                    strict=True,
                )
            )
    return keys


def test_rebuilding_an_older_window_keeps_latest_on_the_newest(router):
    workload, store = router
    (d1, _), (d2, _) = latest_intervals(workload.schedule, 2, NOW)
    add_day(store, workload, d1)
    add_day(store, workload, d2)
    newest = build_dataset(store, workload, d2.date())

    older = build_dataset(store, workload, d1.date())

    latest = json.loads(store.fs.cat(store.path("datasets", workload.workload_id, "latest.json")))
    assert older.dataset_id != newest.dataset_id
    assert latest["dataset_id"] == newest.dataset_id
    assert latest["last_day"] == d2.date().isoformat()


def _offered(tools: list[dict]) -> set[str]:
    return {tool["function"]["name"] for tool in tools}


def _examples(uri: str) -> list[dict]:
    """Every example of the dataset's three split files."""
    return [example for split in ("train", "validation", "evaluation") for example in read_split(uri, split)]


@pytest.mark.parametrize("changed_share", [1.0, 0.98], ids=["whole-day", "old-api-stragglers"])
def test_after_an_api_change_records_offering_retired_tools_are_counted_out_of_every_split(
    router, changed_share: float
):
    workload, store = router  # the router's config says retired_tools: exclude
    assert workload.data_quality.retired_tools == "exclude"
    (d1, _), (d2, _), (d3, _) = latest_intervals(workload.schedule, 3, NOW)
    add_day(store, workload, d1)
    before = build_dataset(store, workload, d1.date())  # chooses the golden set, on the old API
    add_day(store, workload, d2)
    # track_shipment renamed, start_return changed; 2 % of the day's records still on the old API (logged
    # late) are below retired_tool_share and do not keep it current.
    add_day(store, workload, d3, api_changed=changed_share)

    after = build_dataset(store, workload, d3.date())

    manifest = json.loads(store.fs.cat(after.manifest_uri))
    retired = manifest["retired_tools"]
    assert retired["catalogue_day"] == d3.date().isoformat()
    assert retired["retired"] == {"start_return": "changed", "track_shipment": "gone"}
    # Every record offers the whole catalogue: all of the two old days' records are stale.
    assert retired["stale_records"] == after.stale_records > 0
    kept = {example["record_id"] for example in _examples(after.uri)}
    stale_days = {example["record_id"] for example in _examples(before.uri)}
    assert kept and not kept & stale_days
    for example in _examples(after.uri):
        assert "track_package" in _offered(example["tools"]) and "track_shipment" not in _offered(
            example["tools"]
        )
    assert "track_shipment" not in set(manifest["tools"].values())
    # Nothing silently dropped: every de-duplicated record is used, held out or stale (the golden
    # records among them are old API too, so stale).
    candidates = manifest["records_seen"] - manifest["duplicates_removed"]
    used = sum(manifest["counts"].values())
    assert used + manifest["held_out"] + retired["stale_records"] == candidates
    # The frozen golden set is all old API: each of its examples is listed stale and not evaluated.
    assert len(manifest["golden"]["stale"]) == manifest["golden"]["records"] == retired["stale_golden"] > 0
    examples = load_examples(after.uri)
    assert examples and {e.eval_set for e in examples} == {"evaluation"}
    assert all("track_shipment" not in _offered(e.tools) for e in examples)


def test_with_retired_tools_kept_an_api_change_leaves_the_window_whole(router):
    workload, store = router
    rules = workload.data_quality.model_copy(update={"retired_tools": "keep"})
    workload = workload.model_copy(update={"data_quality": rules})
    (d1, _), (d2, _) = latest_intervals(workload.schedule, 2, NOW)
    add_day(store, workload, d1)
    add_day(store, workload, d2, api_changed=True)

    result = build_dataset(store, workload, d2.date())

    manifest = json.loads(store.fs.cat(result.manifest_uri))
    assert manifest["retired_tools"] is None and result.stale_records == 0
    offered = [
        _offered(e["tools"]) for split in ("train", "evaluation") for e in read_split(result.uri, split)
    ]
    assert any("track_shipment" in names for names in offered)
    assert any("track_package" in names for names in offered)
    assert {"track_shipment", "track_package"} <= set(manifest["tools"].values())


def test_a_day_that_offers_both_apis_retires_neither(router):
    workload, store = router
    (d1, _), (d2, _) = latest_intervals(workload.schedule, 2, NOW)
    add_day(store, workload, d1)
    add_day(store, workload, d2, api_changed=0.5)  # a release rolling out: half the traffic on each

    result = build_dataset(store, workload, d2.date())

    manifest = json.loads(store.fs.cat(result.manifest_uri))
    assert manifest["retired_tools"]["retired"] == {} and result.stale_records == 0
    assert {"track_shipment", "track_package"} <= set(manifest["tools"].values())
