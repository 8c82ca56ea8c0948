"""The log-source seam: ``log_source.type`` picks a built-in or the user's own source by dotted path
(``docs/examples/my_flywheel/sources.py``, the worked example); configs without a type read Elasticsearch."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import write_config
from flywheel.config import load_config
from flywheel.errors import ConfigError
from flywheel.extract.partition import extract_interval
from flywheel.intervals import partition_day
from flywheel.storage import ArtifactStore
from logdocs import END, START, WORKLOAD, log_doc
from my_flywheel.sources import ArchiveSource

MS = timedelta(milliseconds=1)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


def test_a_users_own_source_by_dotted_path(tmp_path, store):
    archive = tmp_path / "archive" / WORKLOAD
    archive.mkdir(parents=True)
    (archive / "2026-11-20T02.jsonl").write_text(
        "\n".join(
            json.dumps(log_doc(START + timedelta(minutes=i), i, client=c))
            for i, c in enumerate(["web", "api"] * 3)
        )
    )
    (archive / "2026-11-21T01.jsonl").write_text(json.dumps({**log_doc(END - MS, 9), "timestamp": "soon"}))
    path = write_config(
        tmp_path, log_source={"type": "my_flywheel.sources:ArchiveSource", "root": str(tmp_path / "archive")}
    )
    source = load_config(path).workloads[0].log_source

    result = extract_interval(
        source, store, workload_id=WORKLOAD, start=START, end=END, client_ids=["web"], page_size=10
    )

    assert isinstance(source, ArchiveSource)
    assert result.read_method == "hourly-jsonl"
    assert result.records == 4  # three web records and the one whose timestamp cannot be read
    table = pq.ParquetDataset(
        store.partition_files(WORKLOAD, partition_day(START)), filesystem=store.fs
    ).read()
    assert set(table.column("source").to_pylist()) == {"my_flywheel.sources:ArchiveSource"}
    assert table.column("source_record_id").to_pylist()[0] == f"{archive}/2026-11-20T02.jsonl/line-1"


def test_a_users_own_source_with_a_bad_option_or_path(tmp_path):
    for block, expected in [
        ({"type": "my_flywheel.sources:ArchiveSource"}, r"log_source\.root: Field required"),
        ({"type": "my_flywheel.sources:Nowhere"}, r"log_source\.type: .*has no 'Nowhere'"),
        ({"type": "conftest:write_config"}, r"log_source\.type: .*not a subclass of .*LogSource"),
        ({"type": "filez"}, r"log_source\.type: .*unknown log source 'filez'"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            load_config(write_config(tmp_path, log_source=block))


def test_configs_without_a_type_read_elasticsearch(tmp_path):
    path = write_config(tmp_path)
    raw = yaml.safe_load(path.read_text())
    assert all("type" not in w["log_source"] for w in raw["workloads"])

    config = load_config(path)

    assert {w.log_source.type for w in config.workloads} == {"elasticsearch"}
    assert config.model_dump(mode="json")["workloads"][0]["log_source"]["index"] == "flywheel-logs-*"
