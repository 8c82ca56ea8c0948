"""docs/configuration-reference.md is what the configuration models generate, and it documents every key.

The page is regenerated here and compared with the file: a model changed without
`flywheel config reference --output docs/configuration-reference.md` fails the first test.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import Field

from conftest import PROJECT_ROOT
from flywheel.cli import main
from flywheel.config import DEFAULT_CONFIG_PATH, DeployConfig, PluginConfig, _Strict, load_config
from flywheel.config_reference import COMMAND, REFERENCE_PATH, describe_type, render_reference

PAGE = REFERENCE_PATH.read_text(encoding="utf-8")


def sections(page: str) -> dict[str, dict[str, list[str]]]:
    """Each ``## `path``` section's table: key -> its cells (type, default, description)."""
    tables: dict[str, dict[str, list[str]]] = {}
    for block in re.split(r"^## ", page, flags=re.MULTILINE)[1:]:
        title, _, body = block.partition("\n")
        rows = re.findall(r"^\| `([^`]+)` \| (.*) \|$", body, flags=re.MULTILINE)
        table = {key: re.split(r" (?<!\\)\| ", cells) for key, cells in rows}
        path = "" if title == "Top level" else title.split(",")[0].strip("`")
        tables.setdefault(path, {}).update(table)
    return tables


def test_the_reference_is_what_the_models_generate() -> None:
    assert render_reference() == PAGE, f"docs/configuration-reference.md is out of date: run `{COMMAND}`"


def undocumented(value: dict[str, Any], path: str, tables: dict[str, dict[str, list[str]]]) -> list[str]:
    """Keys of a config (as dumped) that the reference's section for ``path`` does not list, following
    nested blocks into their sections (``[]`` list items, ``<name>`` mapping values)."""
    missing = []
    for key, child in value.items():
        if key not in tables.get(path, {}):
            missing.append(f"{path}.{key}" if path else key)
            continue
        where = f"{path}.{key}" if path else key
        children = [(where, child)]
        if isinstance(child, list):
            children = [(f"{where}[]", item) for item in child]
        elif isinstance(child, dict) and f"{where}.<name>" in tables:
            children = [(f"{where}.<name>", item) for item in child.values()]
        for child_path, item in children:
            if isinstance(item, dict) and child_path in tables:  # else a free-form mapping (env, options)
                missing += undocumented(item, child_path, tables)
    return missing


def test_every_key_of_the_shipped_configuration_is_documented_with_its_default() -> None:
    tables = sections(PAGE)
    dumped = load_config(DEFAULT_CONFIG_PATH).model_dump(mode="json")
    assert undocumented(dumped, "", tables) == []
    # Spot checks of what each column says.
    assert tables["workloads[].data_quality"]["max_quarantine_rate"][:2] == ["number (>= 0, <= 1)", "`0.2`"]
    assert tables["workloads[]"]["start_date"][:2] == ["date (YYYY-MM-DD)", "required"]
    assert tables["compute.kubernetes"]["pod_template_dir"][1] == '`"<project root>/k8s_templates"`'
    assert str(PROJECT_ROOT) not in PAGE  # nothing machine-specific


def test_blocks_picked_by_type_are_documented_per_built_in_implementation() -> None:
    titles = re.findall(r"^## (.*)$", PAGE, flags=re.MULTILINE)
    for title in (
        "`workloads[].log_source`, `type: elasticsearch`",
        "`workloads[].log_source`, `type: files`",
        "`workloads[].deploy`, `type: vllm`",
        "`workloads[].alerts.channels[]`, `type: email`",
    ):
        assert title in titles
    webhook_deploy = PAGE.split("## `workloads[].deploy`, `type: webhook`")[1].split("\n## ")[0]
    assert "| `max_retries` | integer (>= 0, <= 10) | `2` |" in webhook_deploy


class Endpoint(_Strict):
    """Where a model is served."""

    url: str = Field(..., pattern=r"^https?://", description="Root URL, e.g. http://a|b.")


class Approval(_Strict):
    """A sign-off before promotion: the kind of key another change may add."""

    mode: Literal["none", "required"] = Field("none", description="Whether a person signs off.")
    timeout_hours: float | None = Field(None, gt=0, le=72, description="Then no promotion.")
    approvers: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    prices: dict[str, float] = Field(default_factory=dict, description="Cost per 1,000 tokens by model.")
    endpoints: dict[str, Endpoint] = Field(default_factory=dict)
    fallbacks: list[Endpoint] = Field(default_factory=lambda: [Endpoint(url="http://x")])
    cap: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    since: date | None = None
    deploy: DeployConfig = Field({"type": "none"}, validate_default=True)
    primary: Endpoint | None = None


class Root(_Strict):
    """A configuration file of one block."""

    approval: Approval = Field(default_factory=Approval)


def test_keys_of_every_kind_render_without_knowing_them() -> None:
    tables = sections(render_reference(Root))

    approval = tables["approval"]
    assert approval["mode"] == ["one of `none`, `required`", '`"none"`', "Whether a person signs off."]
    assert approval["timeout_hours"][:2] == ["number (> 0, <= 72), or null", "`null`"]
    assert approval["approvers"][:2] == ["list of string (length >= 1)", "`[]`"]
    assert approval["prices"][0] == "mapping of string to number"
    assert approval["cap"][:2] == ["`auto`, or integer (>= 1)", '`"auto"`']
    assert approval["since"][:2] == ["date (YYYY-MM-DD), or null", "`null`"]
    assert approval["fallbacks"][1] == '`[{"url": "http://x"}]`'
    assert approval["deploy"][0].startswith("mapping whose `type` is one of `none`, `webhook`, `vllm`")
    # A model used in several places is documented once; the others point at it.
    assert "approval.endpoints.<name>" in tables
    assert approval["primary"][0] == "mapping, or null (see `approval.endpoints.<name>`)"
    assert tables["approval.endpoints.<name>"]["url"] == [
        "string (matching `^https?://`)",
        "required",
        "Root URL, e.g. http://a\\|b.",
    ]
    # Blocks picked by `type` get one section per built-in implementation.
    assert tables["approval.deploy"]["adapter_name"][1] == '`"{workload_id}-v{version}"`'
    # A nested block without a description of its own takes its model's first sentence.
    assert tables[""]["approval"] == [
        "mapping",
        "every default",
        "A sign-off before promotion: the kind of key another change may add.",
    ]


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (int | None, "integer, or null"),
        (list[str] | Literal["all-linear"], "list of string, or `all-linear`"),
        (dict[str, Any], "mapping"),
        (Literal[1, 2], "one of `1`, `2`"),
        (PluginConfig, "mapping"),
    ],
)
def test_describe_type(annotation: Any, expected: str) -> None:
    assert describe_type(annotation) == expected


def test_cli_writes_and_checks_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = tmp_path / "reference.md"
    assert main(["config", "reference", "--output", str(written)]) == 0
    assert written.read_text(encoding="utf-8") == PAGE
    assert main(["config", "reference", "--check", str(written)]) == 0

    written.write_text(PAGE.replace("| `retries` |", "| `tries` |"), encoding="utf-8")
    capsys.readouterr()
    assert main(["config", "reference", "--check", str(written)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"{written} is out of date with the configuration models: run `{COMMAND}`"
    )


def test_configuration_md_links_the_reference() -> None:
    page = (PROJECT_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert "(configuration-reference.md)" in page
