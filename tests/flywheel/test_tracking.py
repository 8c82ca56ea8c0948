"""Recording stage results in the metadata database: each row's columns come from the result itself."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from sqlalchemy import select

from flywheel.config import MetadataConfig
from flywheel.dataset.build import DatasetResult
from flywheel.db.engine import get_engine, session_scope
from flywheel.db.migrate import upgrade
from flywheel.db.models import Dataset
from flywheel.tracking import record_dataset


def test_a_dataset_row_holds_the_results_fields_and_a_rebuild_refreshes_it(tmp_path: Path) -> None:
    metadata = MetadataConfig(url=f"sqlite:///{tmp_path / 'flywheel.db'}")
    upgrade(get_engine(metadata))
    result = DatasetResult(
        dataset_id="2026-11-20-abc",
        workload_id="router",
        uri="/artifacts/datasets/router/2026-11-20-abc",
        manifest_uri="/artifacts/datasets/router/2026-11-20-abc/manifest.json",
        counts={"train": 80, "validation": 10, "evaluation": 15},
        duplicates_removed=4,
        first_day="2026-11-14",
        last_day="2026-11-20",
        days_used=["2026-11-20"],
        days_skipped={},
        content_hash="c0ffee",
        config_hash="b47da766c766b6ab",
        under_represented=[],
        stale_records=0,
    )

    record_dataset(metadata, result, None)
    record_dataset(metadata, result, None)  # an identical rebuild: the same row

    with session_scope(metadata) as session:
        (row,) = session.scalars(select(Dataset)).all()
        stored = {column.key: getattr(row, column.key) for column in Dataset.__table__.columns}
    assert stored.pop("created_at") is not None
    assert stored == {
        "dataset_id": "2026-11-20-abc",
        "workload_id": "router",
        "uri": result.uri,
        "manifest_uri": result.manifest_uri,
        "train_records": 80,
        "validation_records": 10,
        "evaluation_records": 15,
        "duplicates_removed": 4,
        "first_day": date(2026, 11, 14),
        "last_day": date(2026, 11, 20),
        "content_hash": "c0ffee",
        "config_hash": "b47da766c766b6ab",
        "run_id": None,
    }
