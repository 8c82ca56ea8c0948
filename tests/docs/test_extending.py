"""docs/extending.md shows the worked examples as they are, and each configuration snippet validates.

The examples themselves (docs/examples/my_flywheel) are run by the tests the page names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import PROJECT_ROOT, write_config
from flywheel import assets
from flywheel.config import load_config

PAGE = (PROJECT_ROOT / "docs" / "extending.md").read_text()
EXAMPLES = PROJECT_ROOT / "docs" / "examples" / "my_flywheel"
EXAMPLE_DAGS = PROJECT_ROOT / "docs" / "examples" / "dags"
SHOWN = dict(re.findall(r"`(docs/examples/[^`]+\.py)`:\n\n```python\n(.*?)```", PAGE, re.DOTALL))
SNIPPETS = re.findall(r"```yaml\n# (workload|top level)\n(.*?)```", PAGE, re.DOTALL)
TESTS_NAMED = re.findall(r"`(tests/[^`:]+\.py)::(\w+)`", PAGE)


def test_every_example_module_is_shown_as_it_is() -> None:
    modules = {
        f"docs/examples/my_flywheel/{p.name}" for p in EXAMPLES.glob("*.py") if p.name != "__init__.py"
    } | {f"docs/examples/dags/{p.name}" for p in EXAMPLE_DAGS.glob("*.py")}
    assert set(SHOWN) == modules
    for path, code in SHOWN.items():
        assert code == (PROJECT_ROOT / path).read_text(), f"{path} differs from docs/extending.md"


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update`` key by key; a block with its own ``type`` replaces the block."""
    out = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and "type" not in value and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if nested else value
    return out


@pytest.mark.parametrize(("where", "snippet"), SNIPPETS, ids=[s.split(":")[0] for _, s in SNIPPETS])
def test_each_configuration_snippet_validates(tmp_path: Path, where: str, snippet: str) -> None:
    raw = yaml.safe_load(write_config(tmp_path).read_text())
    block = yaml.safe_load(snippet)
    if where == "workload":
        raw["workloads"][0] = merged(raw["workloads"][0], block)
    else:
        raw = merged(raw, block)
    path = tmp_path / "snippet.yaml"
    path.write_text(yaml.safe_dump(raw))

    load_config(path)


def test_the_tests_the_page_names_exist() -> None:
    assert len(TESTS_NAMED) >= 5
    for file, name in TESTS_NAMED:
        assert re.search(rf"^def {name}\(", (PROJECT_ROOT / file).read_text(), re.MULTILINE), (
            f"{file}::{name}"
        )


def test_the_example_downstream_dags_listen_to_the_workload_dags_assets(dagbag) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import PartitionedAssetTimetable

    bag = DagBag(dag_folder=str(EXAMPLE_DAGS / "flywheel_downstream.py"))
    assert bag.import_errors == {}
    workload = dagbag.dags["flywheel_customer_support_router"]
    promote, validate = workload.get_task("promote"), workload.get_task("validate")
    rollout = bag.dags["serving_rollout_customer_support_router"]
    export = bag.dags["clean_day_export_customer_support_router"]

    # The rollout waits for the asset `promote` adds through its alias; the export for `validate`'s.
    (alias,) = promote.outlets
    assert alias.name == "flywheel.customer_support_router.promotions"
    assert rollout.timetable.asset_condition == assets.champion("customer_support_router")
    assert export.timetable.asset_condition == validate.outlets[0]
    assert isinstance(export.timetable, PartitionedAssetTimetable)
    assert not isinstance(rollout.timetable, PartitionedAssetTimetable)
