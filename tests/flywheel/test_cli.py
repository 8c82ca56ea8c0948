"""Tests of the ``flywheel`` command line: exit codes, messages and the ``db upgrade`` sub-command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, inspect

from conftest import write_config
from flywheel.cli import main
from flywheel.config import DEFAULT_CONFIG_PATH
from flywheel.db.migrate import current_revision, head_revision

DAG_IDS = ("flywheel_customer_support_router", "flywheel_bfcl_live_assistant")


def broken_config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["workloads"][1]["log_source"]["page_size"] = 5
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_check_lists_both_dags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(DEFAULT_CONFIG_PATH)]) == 0

    out = capsys.readouterr().out
    for dag_id in DAG_IDS:
        assert f"  {dag_id}: flywheel-logs-* (" in out
    assert "flywheel_customer_support_router: flywheel-logs-* (web-shop,mobile-app,email-gateway)" in out
    assert "flywheel_bfcl_live_assistant: flywheel-logs-* (all clients), schedule '0 2 * * *'" in out
    assert out.rstrip().endswith("OK: 2 workload(s)")


def test_config_check_uses_global_config_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)

    assert main(["--config", str(path), "config", "check"]) == 0

    assert "OK: 2 workload(s)" in capsys.readouterr().out


def test_config_check_broken_file_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = broken_config(tmp_path)

    assert main(["config", "check", str(path)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {path}: invalid configuration")
    assert "workloads[1].log_source.page_size: Input should be greater than or equal to 10 (got 5)" in (
        captured.err
    )


def test_config_check_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere.yaml"

    assert main(["config", "check", str(path)]) == 2

    assert f"error: {path}: cannot read configuration file" in capsys.readouterr().err


def test_config_check_as_a_subprocess(tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "flywheel"
    assert executable.is_file(), f"{executable} missing: is the package installed (make install)?"

    ok = subprocess.run(
        [str(executable), "config", "check", str(DEFAULT_CONFIG_PATH)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert all(dag_id in ok.stdout for dag_id in DAG_IDS)

    broken = subprocess.run(
        [str(executable), "config", "check", str(broken_config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert broken.returncode == 2
    assert "workloads[1].log_source.page_size" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_db_upgrade_creates_sqlite_database_at_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    database = tmp_path / "flywheel.db"
    assert not database.exists()

    assert main(["--config", str(path), "db", "upgrade"]) == 0

    assert database.is_file()
    engine = create_engine(f"sqlite:///{database}")
    try:
        assert current_revision(engine) == head_revision()
        assert {"runs", "run_stages", "raw_partitions"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    out = capsys.readouterr().out
    assert f"metadata database sqlite:///{database} at revision {head_revision()}" in out

    # A second upgrade is harmless and reports the same revision.
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    assert f"at revision {head_revision()}" in capsys.readouterr().out


def test_db_upgrade_with_broken_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(broken_config(tmp_path)), "db", "upgrade"]) == 2

    assert "workloads[1].log_source.page_size" in capsys.readouterr().err
    assert not (tmp_path / "flywheel.db").exists()


def test_extract_bad_iso_date_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["extract", "customer_support_router", "--start", "21/11/2026", "--end", "2026-11-21T02:00Z"])

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --start: not an ISO 8601 date-time: '21/11/2026'" in err
    assert err.startswith("usage: flywheel extract")


def test_demo_seed_drift_day_outside_the_seeded_days_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "seed", "--days", "7", "--drift-day", "8"]) == 2

    assert (
        "error: drift_day must be a seeded day, 1 (the oldest) to 7 (the latest); got 8"
        in capsys.readouterr().err
    )


def test_demo_seed_pii_rate_outside_zero_to_one_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "seed", "--days", "1", "--pii-rate", "2"]) == 2

    assert "error: pii_rate must be within [0, 1], got 2.0" in capsys.readouterr().err


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])

    assert info.value.code == 2
    assert "usage: flywheel" in capsys.readouterr().err


def test_validate_command_writes_clean_quarantine_and_manifest(tmp_path):
    import json as _json
    from datetime import UTC, datetime, timedelta

    from flywheel.demo.traffic import generate_traffic

    start = datetime(2026, 11, 20, 2, tzinfo=UTC)
    records = generate_traffic(
        kind="support_router",
        workload_id="customer_support_router",
        start=start,
        end=start + timedelta(days=1),
        count=250,
        seed=2,
        client_ids=["web-shop"],
    )
    source = tmp_path / "batch.jsonl"
    source.write_text("".join(_json.dumps(r.source) + "\n" for r in records))
    out = tmp_path / "out"

    code = main(
        [
            "validate",
            "--input",
            str(source),
            "--start",
            start.isoformat(),
            "--end",
            (start + timedelta(days=1)).isoformat(),
            "--out",
            str(out),
            "--workload",
            "customer_support_router",
        ]
    )

    manifest = _json.loads((out / "manifest.json").read_text())
    assert code == 0
    assert manifest["extracted"] == 250 == manifest["clean"] + manifest["quarantined"]
    assert manifest["success"] is True
    assert (out / "quarantine.jsonl").read_text().count("\n") == manifest["quarantined"]
    assert list((out / "clean" / "customer_support_router").iterdir())
    assert (out / "reports" / "customer_support_router" / "2026-11-20" / "data_docs" / "index.html").exists()


# --- flywheel registry ---------------------------------------------------------------------------


def registered(config, days: int) -> list[int]:
    """``days`` registered versions of the router, one per run; returns their version numbers."""
    from datetime import UTC, datetime

    from flywheel.deliver.registry import register_version
    from flywheel.tracking import ensure_run

    numbers = []
    for day in range(1, days + 1):
        run_id = ensure_run(
            config.metadata,
            workload_id="customer_support_router",
            dag_id="flywheel_customer_support_router",
            dag_run_id=f"run-{day}",
            interval_start=datetime(2026, 11, day, 2, tzinfo=UTC),
            interval_end=datetime(2026, 11, day + 1, 2, tzinfo=UTC),
        )
        version = register_version(
            config.metadata,
            workload_id="customer_support_router",
            run_id=run_id,
            candidate_id="smollm2-135m",
            eval_type="customized",
            model={"base_model": "smollm2-135m-instruct", "adapter": f"/artifacts/day-{day}/adapter"},
            dataset_id=f"ds-{day}",
            parent_version=numbers[-1] if numbers else None,  # each warm-started from the one before
        )
        numbers.append(version.version)
    return numbers


def test_registry_promote_show_and_rollback_are_audited(
    flywheel_config, capsys: pytest.CaptureFixture[str]
) -> None:
    registered(flywheel_config, 2)
    router = ["--workload", "customer_support_router"]

    assert main(["registry", "show", *router]) == 0
    assert "customer_support_router: champion none yet" in capsys.readouterr().out

    assert (
        main(["registry", "promote", *router, "--version", "1", "--reason", "first", "--actor", "ann"]) == 0
    )
    assert (
        main(["registry", "promote", *router, "--version", "2", "--reason", "better", "--actor", "ann"]) == 0
    )
    assert "champion is v2 (was v1)" in capsys.readouterr().out
    assert main(["registry", "rollback", *router, "--reason", "v2 loops", "--actor", "bob"]) == 0
    assert "champion is v1 again (was v2)" in capsys.readouterr().out

    assert main(["registry", "show", *router]) == 0
    out = capsys.readouterr().out
    assert (
        "champion v1 (smollm2-135m/customized: smollm2-135m-instruct + adapter /artifacts/day-1/adapter)"
        in out
    )
    assert "manual_promote v1 (was none)  by ann: first" in out
    assert "manual_promote v2 (was v1)  by ann: better" in out
    assert "rollback       v1 (was v2)  by bob: v2 loops" in out
    assert " *v1 (" in out and "  v2 (" in out
    assert "  v2 (smollm2-135m/customized: smollm2-135m-instruct + adapter /artifacts/day-2/adapter, " in out
    assert "/day-2/adapter, warm-started from v1)  dataset ds-2" in out

    assert main(["registry", "show", *router, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["champion"]["version"] == 1
    assert [(v["version"], v["parent_version"]) for v in shown["versions"]] == [(1, None), (2, 1)]
    assert [(m["action"], m["actor"]) for m in shown["history"]] == [
        ("manual_promote", "ann"),
        ("manual_promote", "ann"),
        ("rollback", "bob"),
    ]


def test_registry_no_deploy_is_kept_in_the_audit_row(
    flywheel_config, capsys: pytest.CaptureFixture[str]
) -> None:
    from flywheel.deliver.registry import history

    registered(flywheel_config, 2)
    router = ["--workload", "customer_support_router"]
    configured = flywheel_config.workload("customer_support_router").deploy.type

    assert (
        main(["registry", "promote", *router, "--version", "1", "--reason", "first", "--actor", "ann"]) == 0
    )
    promote_2 = ["--version", "2", "--reason", "hotfix", "--actor", "ann", "--no-deploy"]
    assert main(["registry", "promote", *router, *promote_2]) == 0
    assert main(["registry", "rollback", *router, "--reason", "undo", "--actor", "bob", "--no-deploy"]) == 0

    moves = history(flywheel_config.metadata, "customer_support_router")
    assert moves[0].deployment is not None and moves[0].deployment["type"] == configured  # the hook ran
    skipped = {"status": "skipped", "by": "--no-deploy", "configured": configured}
    assert [m.deployment for m in moves[1:]] == [skipped, skipped]
    capsys.readouterr()
    assert main(["registry", "show", *router]) == 0
    out = capsys.readouterr().out
    assert "manual_promote v2 (was v1)  by ann: hotfix  [not deployed: --no-deploy]" in out
    assert "rollback       v1 (was v2)  by bob: undo  [not deployed: --no-deploy]" in out
    assert "by ann: first\n" in out


def test_registry_errors_exit_1_and_change_nothing(
    flywheel_config, capsys: pytest.CaptureFixture[str]
) -> None:
    from flywheel.deliver.registry import champion

    registered(flywheel_config, 1)
    router = ["--workload", "customer_support_router"]

    assert main(["registry", "promote", *router, "--version", "7", "--reason", "typo"]) == 1
    assert "has no model version 7" in capsys.readouterr().err
    assert main(["registry", "rollback", *router, "--reason", "nothing yet"]) == 1
    assert "no champion to roll back (the registry is unchanged)" in capsys.readouterr().err
    assert main(["registry", "show", "--workload", "nope"]) == 2
    assert "unknown workload_id 'nope'" in capsys.readouterr().err
    assert champion(flywheel_config.metadata, "customer_support_router") is None
