"""Tests of the configuration loader: the project file loads, and every error names the key and the reason."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import write_config
from flywheel.config import DEFAULT_CONFIG_PATH, FlywheelConfig, load_config
from flywheel.errors import ConfigError

Raw = dict[str, Any]


@pytest.fixture
def edited_config(tmp_path: Path) -> Callable[[Callable[[Raw], None]], Path]:
    """Write a valid test config, apply ``edit`` to its parsed YAML and write it back."""

    def make(edit: Callable[[Raw], None]) -> Path:
        path = write_config(tmp_path)
        raw = yaml.safe_load(path.read_text())
        edit(raw)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return make


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


MINIMAL = """\
artifact_store:
  root: {root}
metadata:
  url: {url}
workloads:
  - workload_id: alpha
    log_source:
      index: logs-*
    start_date: 2026-10-01
"""


def write_minimal(tmp_path: Path, root: str = "/tmp/artifacts", url: str = "sqlite://") -> Path:
    path = tmp_path / "minimal.yaml"
    path.write_text(MINIMAL.format(root=root, url=url))
    return path


# --- the project's own file ---------------------------------------------------------------------


def test_project_config_loads_both_workloads() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)

    assert isinstance(config, FlywheelConfig)
    assert [w.workload_id for w in config.workloads] == ["customer_support_router", "bfcl_live_assistant"]
    assert [w.dag_id for w in config.workloads] == [
        "flywheel_customer_support_router",
        "flywheel_bfcl_live_assistant",
    ]
    router = config.workload("customer_support_router")
    assert router.client_ids == ["web-shop", "mobile-app", "email-gateway"]
    assert router.start_date == date(2026, 10, 1)
    assert router.schedule == "0 2 * * *"
    assert config.workload("bfcl_live_assistant").client_ids is None
    assert config.airflow.owner == "ml-platform"


def test_project_config_defaults_live_under_flywheel_home(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLYWHEEL_ARTIFACT_ROOT", "FLYWHEEL_METADATA_URL", "FLYWHEEL_METADATA_CONN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLYWHEEL_HOME", "/srv/fw-home")

    config = load_config(DEFAULT_CONFIG_PATH)

    assert config.artifact_store.root == "/srv/fw-home/artifacts"
    assert config.metadata.url == "sqlite:////srv/fw-home/flywheel.db"
    assert config.metadata.conn_id is None


def test_default_config_path_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path)
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(path))

    assert load_config().artifact_store.root == str(tmp_path / "artifacts")


def test_write_config_helper_gives_a_valid_file(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, training_window_days=3))

    assert config.metadata.url == f"sqlite:///{tmp_path / 'flywheel.db'}"
    assert {w.training_window_days for w in config.workloads} == {3}


# --- errors name the key and the reason ---------------------------------------------------------


def test_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("artifact_store:\n  root: /tmp/a\nworkloads: [one, two\nmetadata: {}\n")

    message = load_error(path)

    assert "invalid YAML at line 4, column 9" in message
    assert "expected ',' or ']'" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")

    assert "top level must be a mapping, got list" in load_error(path)


def test_page_size_out_of_range(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["log_source"]["page_size"] = 50_000

    message = load_error(edited_config(edit))

    assert "invalid configuration" in message
    assert (
        "  - workloads[0].log_source.page_size: Input should be less than or equal to 10000 (got 50000)"
        in message.splitlines()
    )


def test_page_size_below_minimum(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][1]["log_source"]["page_size"] = 1

    message = load_error(edited_config(edit))

    assert "workloads[1].log_source.page_size: Input should be greater than or equal to 10 (got 1)" in message


def test_unknown_key_is_rejected_by_name(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["log_sorce"] = raw["workloads"][0].pop("log_source")

    message = load_error(edited_config(edit))

    assert "workloads[0].log_sorce: Extra inputs are not permitted" in message
    # The real key is now missing, and that is reported too.
    assert "workloads[0].log_source: Field required" in message


def test_unknown_top_level_key(edited_config: Callable[..., Path]) -> None:
    message = load_error(edited_config(lambda raw: raw.update(artefact_store={"root": "/x"})))

    assert "artefact_store: Extra inputs are not permitted" in message


def test_missing_required_start_date(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        del raw["workloads"][1]["start_date"]

    message = load_error(edited_config(edit))

    assert "  - workloads[1].start_date: Field required" in message.splitlines()


def test_bad_start_date_value(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["start_date"] = "yesterday"

    message = load_error(edited_config(edit))

    assert "workloads[0].start_date:" in message
    assert "(got 'yesterday')" in message


def test_duplicate_workload_id(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][1]["workload_id"] = raw["workloads"][0]["workload_id"]

    message = load_error(edited_config(edit))

    assert "workloads[1].workload_id: 'customer_support_router' is defined twice" in message


def test_invalid_workload_id_pattern(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["workload_id"] = "Support-Router"

    message = load_error(edited_config(edit))

    assert "workloads[0].workload_id: String should match pattern" in message
    assert "(got 'Support-Router')" in message


def test_empty_client_ids_list(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["client_ids"] = []

    message = load_error(edited_config(edit))

    assert "workloads[0].client_ids: must list at least one client_id" in message


def test_duplicate_client_id(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["client_ids"] = ["web-shop", "web-shop"]

    assert "workloads[0].client_ids: lists a client_id twice" in load_error(edited_config(edit))


def test_empty_workloads_list(edited_config: Callable[..., Path]) -> None:
    message = load_error(edited_config(lambda raw: raw.update(workloads=[])))

    assert "workloads: List should have at least 1 item" in message


def test_hourly_schedule_is_rejected(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][1]["schedule"] = "0 * * * *"

    message = load_error(edited_config(edit))

    assert "workloads[1].schedule: '0 * * * *' does not fire exactly once a day" in message


def test_weekly_schedule_is_rejected(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["schedule"] = "0 2 * * 1"

    assert "workloads[0].schedule: '0 2 * * 1' does not fire exactly once a day" in load_error(
        edited_config(edit)
    )


def test_non_cron_schedule_is_rejected(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["schedule"] = "every night"

    message = load_error(edited_config(edit))

    assert "workloads[0].schedule: 'every night' is not a cron expression" in message


def test_other_daily_schedule_is_accepted(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["schedule"] = "30 23 * * *"

    assert load_config(edited_config(edit)).workloads[0].schedule == "30 23 * * *"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    message = load_error(path)

    assert "cannot read configuration file (No such file or directory)" in message


# --- environment references ---------------------------------------------------------------------


def test_env_var_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_TEST_ROOT", "s3://bucket/flywheel")
    path = write_minimal(tmp_path, root="${FW_TEST_ROOT}/artifacts")

    assert load_config(path).artifact_store.root == "s3://bucket/flywheel/artifacts"


def test_env_default_used_when_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FW_TEST_ROOT", raising=False)
    path = write_minimal(tmp_path, root="${FW_TEST_ROOT:-/data/default}")

    assert load_config(path).artifact_store.root == "/data/default"


def test_env_value_wins_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_TEST_ROOT", "/data/from-env")
    path = write_minimal(tmp_path, root="${FW_TEST_ROOT:-/data/default}")

    assert load_config(path).artifact_store.root == "/data/from-env"


def test_env_default_used_when_set_but_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `${NAME:-default}` means "unset or empty" in the shell and in docker compose, which is what
    # operators expect from this syntax (a Kubernetes env entry with an empty value, for instance).
    monkeypatch.setenv("FW_TEST_ROOT", "")
    path = write_minimal(tmp_path, root="${FW_TEST_ROOT:-/data/default}")

    assert load_config(path).artifact_store.root == "/data/default"


def test_nested_default_expands_flywheel_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FW_TEST_ROOT", raising=False)
    monkeypatch.setenv("FLYWHEEL_HOME", "/srv/home")
    path = write_minimal(tmp_path, root="${FW_TEST_ROOT:-${FLYWHEEL_HOME}/x}")

    assert load_config(path).artifact_store.root == "/srv/home/x"


def test_flywheel_home_has_a_builtin_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.config import PROJECT_ROOT

    monkeypatch.delenv("FLYWHEEL_HOME", raising=False)
    path = write_minimal(tmp_path, root="${FLYWHEEL_HOME}/artifacts")

    assert load_config(path).artifact_store.root == f"{PROJECT_ROOT / '.flywheel'}/artifacts"


def test_unset_env_without_default_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FW_TEST_INDEX", raising=False)
    path = tmp_path / "env.yaml"
    path.write_text(MINIMAL.format(root="/a", url="sqlite://").replace("logs-*", "${FW_TEST_INDEX}"))

    message = load_error(path)

    assert message == (
        f"{path}: workloads[0].log_source.index: "
        "environment variable FW_TEST_INDEX is not set and has no default"
    )


def test_malformed_env_reference_names_the_key(tmp_path: Path) -> None:
    path = write_minimal(tmp_path, root="${not a name}")

    assert "artifact_store.root: malformed environment reference in '${not a name}'" in load_error(path)


def test_empty_metadata_conn_id_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FW_TEST_CONN", raising=False)
    path = tmp_path / "conn.yaml"
    text = MINIMAL.format(root="/a", url="sqlite://")
    path.write_text(text.replace("metadata:\n", 'metadata:\n  conn_id: ""\n'))
    assert load_config(path).metadata.conn_id is None

    path.write_text(text.replace("metadata:\n", "metadata:\n  conn_id: ${FW_TEST_CONN:-}\n"))
    assert load_config(path).metadata.conn_id is None

    monkeypatch.setenv("FW_TEST_CONN", "flywheel_metadata")
    assert load_config(path).metadata.conn_id == "flywheel_metadata"


# --- lookups ------------------------------------------------------------------------------------


def test_workload_lookup_by_id() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)

    assert config.workload("bfcl_live_assistant").dag_id == "flywheel_bfcl_live_assistant"


def test_unknown_workload_lists_configured_ids() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)

    with pytest.raises(ConfigError) as info:
        config.workload("nope")

    assert str(info.value) == (
        "unknown workload_id 'nope'; configured: customer_support_router, bfcl_live_assistant"
    )


def test_config_is_frozen() -> None:
    from pydantic import ValidationError

    config = load_config(DEFAULT_CONFIG_PATH)

    with pytest.raises(ValidationError, match="frozen"):
        config.workloads[0].catchup = True  # type: ignore[misc]


def test_project_config_trains_smollm2_locally_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYWHEEL_COMPUTE_BACKEND", raising=False)
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.compute.backend == "local"
    assert config.compute.kubernetes.image == "flywheel-job:0.1.0"
    for workload in config.workloads:
        [candidate] = workload.training.candidates
        assert candidate.base_model == "smollm2-135m-instruct"
        assert workload.training.settings_for(candidate).max_steps >= 100


def test_kubernetes_backend_reads_its_image_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_COMPUTE_BACKEND", "kubernetes")
    monkeypatch.setenv("FLYWHEEL_JOB_IMAGE", f"registry.example/flywheel-job@{DIGEST}")
    config = load_config(DEFAULT_CONFIG_PATH)
    assert (config.compute.backend, config.compute.kubernetes.image) == (
        "kubernetes",
        f"registry.example/flywheel-job@{DIGEST}",
    )


DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "image",
    [
        "flywheel-job:latest",
        "registry.example/flywheel-job:latest",
        "flywheel-job",
        "registry.example:5000/team/flywheel-job",
        "flywheel-job:",
    ],
)
def test_job_image_latest_or_untagged_is_rejected(
    edited_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, image: str
) -> None:
    monkeypatch.delenv("FLYWHEEL_JOB_IMAGE", raising=False)
    message = load_error(edited_config(lambda raw: raw["compute"]["kubernetes"].update(image=image)))
    assert f"compute.kubernetes.image: {image!r} runs the moving ':latest' image" in message


def test_job_image_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_JOB_IMAGE", "registry.example/flywheel-job:latest")
    with pytest.raises(ConfigError, match=r"compute\.kubernetes\.image: .*:latest"):
        load_config(DEFAULT_CONFIG_PATH)


def test_job_image_digest_must_be_well_formed(edited_config: Callable[..., Path]) -> None:
    path = edited_config(lambda raw: raw["compute"]["kubernetes"].update(image="flywheel-job@sha256:abc"))
    assert "compute.kubernetes.image: 'flywheel-job@sha256:abc': the digest after '@' must be" in (
        load_error(path)
    )


@pytest.mark.parametrize(
    "image",
    [
        "flywheel-job:0.1.0",
        "registry.example:5000/team/flywheel-job:2026-12-07.3",
        f"registry.example/flywheel-job@{DIGEST}",
        f"registry.example/flywheel-job:latest@{DIGEST}",
    ],
)
def test_job_image_with_a_version_tag_or_digest_is_accepted(
    edited_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, image: str
) -> None:
    monkeypatch.delenv("FLYWHEEL_JOB_IMAGE", raising=False)
    config = load_config(edited_config(lambda raw: raw["compute"]["kubernetes"].update(image=image)))
    assert config.compute.kubernetes.image == image


def test_unknown_backend_is_rejected(edited_config: Callable[..., Path]) -> None:
    message = load_error(edited_config(lambda raw: raw["compute"].update(backend="slurm")))
    assert "compute.backend: unknown compute backend 'slurm': use one of 'local', 'kubernetes'" in message


def test_kubernetes_backend_needs_its_block(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["compute"] = {"backend": "kubernetes"}

    assert "compute: kubernetes: required when backend is 'kubernetes'" in load_error(edited_config(edit))


def test_candidate_override_error_names_the_candidate_and_key(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][1]["training"]["candidates"][0]["settings"] = {"lora": {"r": 0}}

    message = load_error(edited_config(edit))
    assert (
        "workloads[1].training: candidates[0].settings.lora.r: Input should be greater than or equal to 1"
        in (message)
    )


def test_candidate_override_of_an_unknown_key_is_rejected(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["training"]["candidates"][0]["settings"] = {"learning_rat": 1e-4}

    assert "candidates[0].settings.learning_rat: Extra inputs are not permitted" in load_error(
        edited_config(edit)
    )


def test_init_from_is_base_or_champion(edited_config: Callable[..., Path]) -> None:
    from flywheel.config import TrainingConfig

    def edit(raw: Raw) -> None:
        raw["workloads"][0]["training"]["candidates"][0]["settings"] = {"init_from": "latest"}

    assert TrainingConfig().init_from == "base"
    assert "candidates[0].settings.init_from: Input should be 'base' or 'champion'" in load_error(
        edited_config(edit)
    )


def test_duplicate_candidate_id(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        candidates = raw["workloads"][0]["training"]["candidates"]
        candidates.append(dict(candidates[0]))

    assert "candidates[1].candidate_id: 'tiny' is defined twice" in load_error(edited_config(edit))


@pytest.mark.parametrize("candidate_id", ["Upper", "-dash", "x" * 41, ""])
def test_candidate_id_must_fit_labels_and_paths(
    edited_config: Callable[..., Path], candidate_id: str
) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["training"]["candidates"][0]["candidate_id"] = candidate_id

    assert "workloads[0].training.candidates[0].candidate_id: String should match pattern" in load_error(
        edited_config(edit)
    )


def test_candidate_settings_merge_nested_blocks() -> None:
    from flywheel.config import CandidateConfig, WorkloadTrainingConfig

    training = WorkloadTrainingConfig.model_validate(
        {
            "settings": {
                "batch_size": 4,
                "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
            },
            "candidates": [{"candidate_id": "a", "base_model": "m", "settings": {"lora": {"r": 32}}}],
        }
    )
    merged = training.settings_for(training.candidates[0])
    assert (merged.batch_size, merged.lora.r, merged.lora.alpha) == (4, 32, 16)
    assert merged.lora.target_modules == ["q_proj", "v_proj"]
    assert training.candidate("a").base_model == "m"
    with pytest.raises(ConfigError, match="unknown candidate_id 'b'; configured: a"):
        training.candidate("b")
    # A workload without a training block trains the shipped small model.
    assert WorkloadTrainingConfig().candidates == [
        CandidateConfig(candidate_id="smollm2-135m", base_model="smollm2-135m-instruct")
    ]


# --- evaluation ----------------------------------------------------------------------------------


def test_project_config_evaluates_every_variant_without_a_champion() -> None:
    for workload in load_config(DEFAULT_CONFIG_PATH).workloads:
        assert workload.evaluation.eval_types == ["base", "icl", "customized"]
        assert workload.evaluation.champion is None
        assert workload.evaluation.settings.generation.temperature == 0


def test_champion_is_a_base_model_or_an_endpoint(edited_config: Callable[..., Path]) -> None:
    def both(raw: Raw) -> None:
        raw["workloads"][0]["evaluation"] = {
            "champion": {"base_model": "m", "endpoint": {"base_url": "http://vllm:8000/v1", "model": "x"}}
        }

    assert "workloads[0].evaluation.champion: set exactly one of base_model or endpoint" in load_error(
        edited_config(both)
    )


def test_endpoint_errors_name_the_key(edited_config: Callable[..., Path]) -> None:
    def bad_endpoint(raw: Raw) -> None:
        raw["workloads"][0]["evaluation"] = {
            "champion": {"endpoint": {"base_url": "vllm:8000", "model": "x", "concurrency": 0}}
        }

    message = load_error(edited_config(bad_endpoint))
    assert "workloads[0].evaluation.champion.endpoint.base_url: String should match pattern" in message
    assert "workloads[0].evaluation.champion.endpoint.concurrency: Input should be greater than" in message


def test_embedding_similarity_needs_a_model(edited_config: Callable[..., Path]) -> None:
    def embedding(raw: Raw) -> None:
        raw["workloads"][0]["evaluation"] = {"settings": {"icl": {"similarity": "embedding"}}}

    assert "workloads[0].evaluation.settings.icl: embedding_model: required" in load_error(
        edited_config(embedding)
    )


def test_champion_is_not_a_candidate_id(edited_config: Callable[..., Path]) -> None:
    def champion_candidate(raw: Raw) -> None:
        raw["workloads"][0]["training"]["candidates"][0]["candidate_id"] = "champion"

    assert "candidates[0].candidate_id: 'champion' names the production model" in load_error(
        edited_config(champion_candidate)
    )


def test_unknown_eval_type_is_rejected(edited_config: Callable[..., Path]) -> None:
    def unknown(raw: Raw) -> None:
        raw["workloads"][0]["evaluation"] = {"eval_types": ["base", "zero_shot"]}

    assert (
        "workloads[0].evaluation.eval_types[1]: Input should be 'base', 'icl' or 'customized'"
        in load_error(edited_config(unknown))
    )


# --- metrics: built-in by name, the user's own by dotted path -----------------------------------


def test_primary_metric_must_be_higher_is_better(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0].setdefault("decision", {})["primary_metric"] = "parse_error_rate"

    message = load_error(edited_config(edit))

    assert "workloads[0].decision.primary_metric: 'parse_error_rate' is lower-is-better" in message


def test_unknown_guardrail_metric_is_named(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0].setdefault("decision", {})["guardrails"] = {"no_cal_accuracy": {"margin": 0.05}}

    message = load_error(edited_config(edit))

    assert "workloads[0].decision.guardrails: no_cal_accuracy: unknown metric" in message
    assert "'no_call_accuracy'" in message  # the built-ins are listed


def test_evaluated_metric_must_be_a_metric(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        evaluation = raw["workloads"][0].setdefault("evaluation", {})
        evaluation.setdefault("settings", {})["metrics"] = [
            "my_flywheel.metrics:OfferedToolsOnly",
            "conftest:log_store",
        ]

    message = load_error(edited_config(edit))

    assert "workloads[0].evaluation.settings.metrics: 1: 'conftest:log_store' is not a metric" in message


def test_own_metric_in_the_decision_must_be_evaluated(edited_config: Callable[..., Path]) -> None:
    own = "my_flywheel.metrics:OfferedToolsOnly"

    def guard(raw: Raw) -> None:
        raw["workloads"][0].setdefault("decision", {})["guardrails"] = {own: {"margin": 0.02}}

    def guard_and_evaluate(raw: Raw) -> None:
        guard(raw)
        raw["workloads"][0].setdefault("evaluation", {}).setdefault("settings", {})["metrics"] = [own]

    message = load_error(edited_config(guard))
    workload = load_config(edited_config(guard_and_evaluate)).workloads[0]

    assert f"decision.guardrails: '{own}' is not evaluated; add it to evaluation.settings.metrics" in message
    assert list(workload.decision.guardrails) == [own]
    assert workload.evaluation.settings.metrics == [own]


def test_deploy_and_alert_blocks_are_validated_by_the_model_their_type_names(
    edited_config: Callable[..., Path],
) -> None:
    from flywheel.deliver.channels import EmailChannel
    from flywheel.deliver.deploy import NoDeploy, VllmDeploy

    def edit(raw: Raw) -> None:
        raw["workloads"][0]["deploy"] = {"type": "vllm", "conn_id": "vllm_router"}
        raw["workloads"][0]["alerts"] = {"channels": [{"type": "email", "to": ["oncall@example.com"]}]}

    config = load_config(edited_config(edit))
    first, second = config.workloads[0], config.workloads[1]
    assert first.deploy == VllmDeploy(conn_id="vllm_router", adapter_name="{workload_id}-v{version}")
    assert first.alerts.channels == [EmailChannel(to=["oncall@example.com"], conn_id="smtp_default")]
    assert second.deploy == NoDeploy()  # no deploy block: the registry alias only
    assert config.model_dump()["workloads"][0]["deploy"]["conn_id"] == "vllm_router"


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            {"deploy": {"type": "kubectl"}},
            "workloads[0].deploy.type: unknown deploy hook 'kubectl': use one of 'none', 'webhook', 'vllm'",
        ),
        ({"deploy": {"conn_id": "x"}}, "workloads[0].deploy.type: Field required"),
        ({"deploy": {"type": "vllm"}}, "workloads[0].deploy.conn_id: Field required"),
        ({"deploy": {"type": "webhook", "conn_id": "x", "retries": 3}}, "workloads[0].deploy.retries: Extra"),
        (
            {"alerts": {"channels": [{"type": "pager"}]}},
            "workloads[0].alerts.channels[0].type: unknown alert channel 'pager': use one of 'slack'",
        ),
        (
            {"alerts": {"channels": [{"type": "email", "to": ["not an address"]}]}},
            "workloads[0].alerts.channels[0].to[0]: String should match pattern",
        ),
        (
            {"deploy": {"type": "my_flywheel.deploy:ChampionFile"}},
            "workloads[0].deploy.path: Field required",
        ),
        (
            {"deploy": {"type": "my_flywheel.deploy:NoSuchHook"}},
            "workloads[0].deploy.type: module 'my_flywheel.deploy' has no 'NoSuchHook'",
        ),
        (
            {"deploy": {"type": "my_flywheel.alerts:TeamsChannel", "conn_id": "teams"}},
            "workloads[0].deploy.type: deploy hook 'my_flywheel.alerts:TeamsChannel' is not a subclass of "
            "flywheel.deliver.deploy.DeployHook",
        ),
    ],
    ids=[
        "unknown-hook",
        "no-type",
        "missing-option",
        "unknown-option",
        "unknown-channel",
        "bad-channel-option",
        "own-hook-option",
        "own-hook-missing",
        "own-class-of-another-kind",
    ],
)
def test_deploy_and_alert_errors_name_the_key(
    edited_config: Callable[..., Path], block: dict[str, Any], expected: str
) -> None:
    assert expected in load_error(edited_config(lambda raw: raw["workloads"][0].update(block)))


def test_own_compute_backend_is_imported_when_the_config_is_read(edited_config: Callable[..., Path]) -> None:
    path = edited_config(lambda raw: raw["compute"].update(backend="my_flywheel.compute:GpuLockBackend"))
    assert load_config(path).compute.backend == "my_flywheel.compute:GpuLockBackend"
    missing = edited_config(lambda raw: raw["compute"].update(backend="my_flywheel.nowhere:Backend"))
    assert "compute.backend: cannot import module 'my_flywheel.nowhere'" in load_error(missing)


# --- training.retrain ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retrain", "line"),
    [
        (
            {"policy": "sometimes"},
            "workloads[0].training.retrain.policy: Input should be 'always', 'on_trigger' or 'every_n_days' "
            "(got 'sometimes')",
        ),
        (
            {"policy": "every_n_days"},
            "workloads[0].training.retrain: every_n_days: required when policy is every_n_days",
        ),
        (
            {"policy": "on_trigger", "every_n_days": 3},
            "workloads[0].training.retrain: every_n_days: only used with policy every_n_days, "
            "not 'on_trigger'",
        ),
        (
            {"policy": "every_n_days", "every_n_days": 0},
            "workloads[0].training.retrain.every_n_days: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"policy": "always", "when": "nightly"},
            "workloads[0].training.retrain.when: Extra inputs are not permitted (got 'nightly')",
        ),
    ],
)
def test_bad_retrain_policy_names_the_key(
    edited_config: Callable[..., Path], retrain: dict[str, object], line: str
) -> None:
    def edit(raw: Raw) -> None:
        raw["workloads"][0]["training"]["retrain"] = retrain

    assert f"  - {line}" in load_error(edited_config(edit)).splitlines()


def test_retrain_policy_defaults_to_always_and_takes_every_n_days(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        # A copy: the test config's workloads share one training block (a YAML alias).
        training = raw["workloads"][1]["training"]
        raw["workloads"][1]["training"] = training | {
            "retrain": {"policy": "every_n_days", "every_n_days": 7}
        }

    config = load_config(edited_config(edit))

    assert config.workloads[0].training.retrain.policy == "always"
    assert config.workloads[1].training.retrain.model_dump() == {"policy": "every_n_days", "every_n_days": 7}


@pytest.mark.parametrize(
    ("decision", "notify_on", "line"),
    [
        (
            {"approval": "sometimes"},
            None,
            "workloads[0].decision.approval: Input should be 'none' or 'required' (got 'sometimes')",
        ),
        (
            {"approval": "required", "approval_timeout_hours": 0},
            None,
            "workloads[0].decision.approval_timeout_hours: Input should be greater than 0 (got 0)",
        ),
        (
            {"approval": "required", "approval_timeout_hours": 24 * 8},
            None,
            "workloads[0].decision.approval_timeout_hours: Input should be less than or equal to 168 "
            "(got 192)",
        ),
        (
            {"approval": "required"},
            ["promote", "alert"],
            "workloads[0]: alerts.notify_on: must include approval_requested when decision.approval is "
            "required, or no channel hears that a promotion waits for approval",
        ),
        (
            {"approvers": ["alice"]},
            None,
            "workloads[0].decision: approvers: only used when approval is required; set approval: required",
        ),
        (
            {"approval": "required", "approvers": ["alice", "bob", "alice"]},
            None,
            "workloads[0].decision.approvers: listed more than once: alice",
        ),
        (
            {"approval": "required", "approvers": [{"name": "Bob"}]},
            None,
            "workloads[0].decision.approvers[0].id: Field required",
        ),
        (
            {"approval": "required", "approvers": [7]},
            None,
            "workloads[0].decision.approvers[0]: must be a user id or a mapping with id and name (got 7)",
        ),
    ],
)
def test_bad_approval_settings_name_the_key(
    edited_config: Callable[..., Path], decision: dict[str, object], notify_on: list[str] | None, line: str
) -> None:
    def edit(raw: Raw) -> None:
        workload = raw["workloads"][0]
        workload["decision"] = workload["decision"] | decision
        if notify_on is not None:
            workload["alerts"] = workload["alerts"] | {"notify_on": notify_on}

    assert f"  - {line}" in load_error(edited_config(edit)).splitlines()


def test_approval_is_off_by_default_and_required_takes_a_timeout(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        workload = raw["workloads"][1]
        workload["decision"] = workload["decision"] | {"approval": "required", "approval_timeout_hours": 0.5}
        workload.pop("alerts", None)  # the default notify_on includes approval_requested

    config = load_config(edited_config(edit))

    assert (config.workloads[0].decision.approval, config.workloads[0].decision.approval_timeout_hours) == (
        "none",
        24.0,
    )
    assert (config.workloads[1].decision.approval, config.workloads[1].decision.approval_timeout_hours) == (
        "required",
        0.5,
    )
    assert {"approval_requested", "not_approved"} <= set(config.workloads[1].alerts.notify_on)


def test_approvers_are_user_ids_or_ids_with_names(edited_config: Callable[..., Path]) -> None:
    def edit(raw: Raw) -> None:
        workload = raw["workloads"][1]
        approvers = ["alice", {"id": "7", "name": "Bob"}]
        workload["decision"] = workload["decision"] | {"approval": "required", "approvers": approvers}
        workload.pop("alerts", None)

    config = load_config(edited_config(edit))

    assert config.workloads[0].decision.approvers == []  # anyone the auth manager lets answer
    assert [a.model_dump() for a in config.workloads[1].decision.approvers] == [
        {"id": "alice", "name": None},
        {"id": "7", "name": "Bob"},
    ]
