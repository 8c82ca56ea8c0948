"""Jobs as one command line: the local backend runs it as a real subprocess and classifies failures."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import pytest

from conftest import write_config
from flywheel.compute import (
    CHAMPION_CANDIDATE_ID,
    JobSpec,
    dns_label,
    evaluate_job,
    job_failure,
    job_labels,
    label_value,
    outcome_entry,
    read_job_file,
    read_outcomes,
    train_job,
)
from flywheel.compute.local import run_local
from flywheel.config import EndpointConfig, ModelConfig, load_config
from flywheel.errors import (
    JobFailedError,
    JobTimeoutError,
    NonRetryableJobError,
    OutOfMemoryJobError,
    PermanentError,
    RetryableError,
    StaleResultError,
    TransientJobError,
)
from flywheel.jobs import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OUT_OF_MEMORY,
    check_result,
    write_error,
    write_result,
)
from processes import alive, wait_for

LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def test_local_backend_runs_the_command_with_the_jobs_environment_and_streams_its_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_path = write_config(tmp_path)
    # `flywheel config check` with no file reads $FLYWHEEL_CONFIG: the job's env reaches the process.
    job = JobSpec(
        kind="check",
        name="check",
        arguments=["config", "check"],
        output_uri=str(tmp_path / "out"),
        env={"FLYWHEEL_CONFIG": str(config_path)},
    )
    with caplog.at_level(logging.INFO, logger="test.job"):
        run_local(job, logger=logging.getLogger("test.job"))

    lines = [r.getMessage() for r in caplog.records if r.name == "test.job"]
    assert lines[0].startswith("running check locally: flywheel config check")
    assert any(str(config_path) in line for line in lines)
    assert "OK: 2 workload(s)" in lines


def test_a_bad_training_config_fails_without_retry_and_reports_its_error(tmp_path: Path) -> None:
    output = tmp_path / "out"
    job = JobSpec(
        kind="train",
        name="train-bad",
        arguments=[
            "train",
            "--dataset",
            str(tmp_path),
            "--base-model",
            "smollm2-135m-instruct",
            "--training-config",
            '{"learning_rate": 5}',
            "--output",
            str(output),
        ],
        output_uri=str(output),
    )
    with pytest.raises(NonRetryableJobError, match="learning_rate") as failure:
        run_local(job)

    assert failure.value.exit_code == EXIT_CONFIG
    assert failure.value.error["error"] == "ConfigError"
    assert failure.value.error["retryable"] is False
    assert read_job_file(str(output), "error.json") == failure.value.error


class PythonJob(JobSpec):
    """A job whose command is this interpreter with ``arguments``: a real process that misbehaves."""

    @property
    def command(self) -> list[str]:
        return [sys.executable, *self.arguments]


def python_job(output: Path, code: str) -> PythonJob:
    labels = job_labels("customer_support_router", "manual__x", "greedy", "train")
    return PythonJob(
        kind="train", name="train-greedy", arguments=["-c", code], output_uri=str(output), labels=labels
    )


@pytest.mark.parametrize(
    ("exit_code", "reason", "retried"),
    [
        (EXIT_CONFIG, None, False),
        (EXIT_OUT_OF_MEMORY, None, False),
        (EXIT_FAILED, None, True),
        (-signal.SIGTERM, None, True),  # stopped from outside: a worker shutting down
        (137, "Error", True),  # a pod SIGKILLed from outside (a deadline, an eviction), not OOMKilled
        (None, None, True),
    ],
)
def test_only_codes_retrying_cannot_fix_are_not_retried(
    tmp_path: Path, exit_code: int | None, reason: str | None, retried: bool
) -> None:
    failure = job_failure(exit_code, str(tmp_path / "nowhere"), "job x", reason=reason)
    assert isinstance(failure, JobFailedError)
    assert isinstance(failure, NonRetryableJobError) is not retried
    assert isinstance(failure, OutOfMemoryJobError) is (exit_code == EXIT_OUT_OF_MEMORY)
    assert failure.exit_code == exit_code
    assert "no error.json written" in str(failure)
    assert not (tmp_path / "nowhere").exists()  # nothing written on the job's behalf


@pytest.mark.parametrize(
    ("exit_code", "reason", "how"),
    [
        (-signal.SIGKILL, None, "killed by SIGKILL (exit code -9) without writing error.json, most likely"),
        (137, None, "killed by SIGKILL (exit code 137) without writing error.json, most likely"),
        (137, "OOMKilled", "its container was OOMKilled (exit code 137), over its memory limit"),
    ],
)
def test_a_job_an_oom_killer_ended_is_out_of_memory_and_gets_an_error_json(
    tmp_path: Path, exit_code: int, reason: str | None, how: str
) -> None:
    failure = job_failure(exit_code, str(tmp_path), "job x", reason=reason, peak_rss_bytes=23_500 * 2**20)

    assert isinstance(failure, OutOfMemoryJobError)
    assert isinstance(failure, PermanentError) and not isinstance(failure, RetryableError)
    assert str(failure).startswith(f"job x ran out of memory: {how}")
    assert "(peak RSS 23,500 MiB); not retried. To fix it, lower batch_size or max_seq_length" in str(failure)
    assert "training.memory_budget_mb" in str(failure)
    error = read_job_file(str(tmp_path), "error.json")
    assert error == failure.error
    assert error == {
        "error": "OutOfMemory",
        "message": str(failure),
        "exit_code": exit_code,
        "retryable": False,
        "reason": reason or "SIGKILL",
        "peak_rss_mb": 23500.0,
    }


@pytest.mark.parametrize("written", ["error.json", "result.json"])
def test_a_sigkill_after_the_job_wrote_its_outcome_is_not_taken_for_out_of_memory(
    tmp_path: Path, written: str
) -> None:
    if written == "error.json":
        write_error(str(tmp_path), RuntimeError("storage unavailable"), EXIT_FAILED)
    else:
        write_result(str(tmp_path), {"steps": 2})
    failure = job_failure(-signal.SIGKILL, str(tmp_path), "job x")
    assert isinstance(failure, TransientJobError)
    assert str(failure).startswith("job x failed with exit code -9")


def test_a_local_job_killed_by_sigkill_is_reported_out_of_memory_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "out"
    # What the kernel's OOM killer does to a job: SIGKILL, after it has grown (a little, here).
    code = (
        "import os, signal, time\n"
        "block = b'x' * (64 << 20)\n"
        "print('allocated', flush=True)\n"
        "time.sleep(1)\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    job = python_job(output, code)
    with caplog.at_level(logging.INFO, logger="test.job"), pytest.raises(OutOfMemoryJobError) as failure:
        run_local(job, logger=logging.getLogger("test.job"))

    error = failure.value.error
    assert isinstance(failure.value, PermanentError) and not isinstance(failure.value, RetryableError)
    assert failure.value.exit_code == -signal.SIGKILL
    assert str(failure.value).startswith(
        "local job train-greedy ran out of memory: killed by SIGKILL (exit code -9) without writing "
        "error.json, most likely by the kernel's OOM killer (peak RSS "
    )
    assert error["peak_rss_mb"] >= 64
    assert f"(peak RSS {error['peak_rss_mb']:,.0f} MiB); not retried. To fix it, lower batch_size" in str(
        failure.value
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "test.job"]
    assert "allocated" in lines
    assert f"train-greedy exited with code -9 (peak RSS {error['peak_rss_mb']:,.0f} MiB)" in lines
    # The error.json written on the job's behalf is what collect_training records for the candidate.
    assert read_job_file(str(output), "error.json") == error
    assert (error["error"], error["reason"], error["exit_code"], error["retryable"]) == (
        "OutOfMemory",
        "SIGKILL",
        -9,
        False,
    )
    [outcome] = read_outcomes([job.to_dict()])
    entry = outcome_entry(outcome, lambda _: {})
    assert (entry["candidate_id"], entry["status"], entry["error"]) == ("greedy", "failed", error)


def test_a_local_job_that_exits_non_zero_is_still_retried(tmp_path: Path) -> None:
    output = tmp_path / "out"
    with pytest.raises(TransientJobError) as failure:
        run_local(python_job(output, "import sys; print('flaky'); sys.exit(1)"))

    assert str(failure.value) == "local job train-greedy failed with exit code 1: no error.json written"
    assert not (output / "error.json").exists()  # none on the job's behalf: it may have been a hiccup


def test_failure_message_comes_from_the_jobs_error_json(tmp_path: Path) -> None:
    write_error(
        str(tmp_path), MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), EXIT_OUT_OF_MEMORY
    )
    failure = job_failure(EXIT_OUT_OF_MEMORY, str(tmp_path), "pod train-x")
    assert isinstance(failure, NonRetryableJobError)
    assert "pod train-x failed with exit code 3 (out of memory; not retried)" in str(failure)
    assert "MemoryError: CUDA out of memory" in str(failure)
    assert failure.error["exit_code"] == EXIT_OUT_OF_MEMORY


def test_train_job_carries_the_candidates_merged_settings_and_labels(tmp_path: Path) -> None:
    training = {
        "settings": {"max_steps": 10, "batch_size": 4, "lora": {"r": 8, "alpha": 16}},
        "candidates": [
            {"candidate_id": "a", "base_model": "/models/a"},
            {
                "candidate_id": "b",
                "base_model": "/models/b",
                "settings": {"batch_size": 2, "lora": {"r": 32}},
            },
        ],
    }
    config = load_config(write_config(tmp_path, training=training, compute={"env": {"OMP_NUM_THREADS": "8"}}))
    workload = config.workload("customer_support_router")
    jobs = [
        train_job(config, workload, c, dataset_uri="s3://d/1", day=date(2026, 11, 20), dag_run_id="manual__x")
        for c in workload.training.candidates
    ]

    settings = [json.loads(job.arguments[job.arguments.index("--training-config") + 1]) for job in jobs]
    assert (settings[0]["batch_size"], settings[0]["lora"]["r"], settings[0]["lora"]["alpha"]) == (4, 8, 16)
    assert (settings[1]["batch_size"], settings[1]["lora"]["r"], settings[1]["lora"]["alpha"]) == (2, 32, 16)
    assert settings[1]["max_steps"] == 10
    assert [job.env for job in jobs] == [{"OMP_NUM_THREADS": "8"}] * 2
    assert jobs[1].command[:6] == ["flywheel", "train", "--dataset", "s3://d/1", "--base-model", "/models/b"]
    assert (
        jobs[1].output_uri == f"{config.artifact_store.root}/runs/customer_support_router/2026-11-20/train/b"
    )
    assert JobSpec.from_dict(jobs[1].to_dict()) == jobs[1]


@pytest.mark.parametrize(
    "text",
    [
        "scheduled__2026-11-20T02:00:00+00:00",
        "manual__2026-11-21T10:15:09.201606+00:00",
        "backfill__" + "x" * 80,
        "__weird::name__",
    ],
)
def test_label_values_are_valid_kubernetes_label_values(text: str) -> None:
    import re

    value = label_value(text)
    assert len(value) <= 63
    assert re.fullmatch(LABEL_VALUE, value), value
    assert label_value(text) == value  # stable: the same run always gets the same label


def test_long_label_values_stay_distinct() -> None:
    assert label_value("backfill__" + "x" * 80 + "1") != label_value("backfill__" + "x" * 80 + "2")


def test_job_labels_and_pod_name_prefix() -> None:
    labels = job_labels(
        "customer_support_router", "manual__2026-11-21T10:15:09+00:00", "smollm2-135m", "train"
    )
    assert labels == {
        "flywheel.io/workload": "customer_support_router",
        "flywheel.io/dag-run": "manual__2026-11-21T10_15_09_00_00",
        "flywheel.io/candidate": "smollm2-135m",
        "flywheel.io/job": "train",
    }
    assert (
        dns_label("train-customer_support_router-smollm2-135m") == "train-customer-support-router-smollm2-13"
    )


def test_storage_options_reach_the_job_and_the_reader(tmp_path: Path) -> None:
    from flywheel.storage import STORAGE_OPTIONS_ENV, storage_options_from_env

    options = {"auto_mkdir": True}
    config = load_config(write_config(tmp_path))
    config = config.model_copy(
        update={"artifact_store": config.artifact_store.model_copy(update={"storage_options": options})}
    )
    workload = config.workload("customer_support_router")
    job = train_job(
        config,
        workload,
        workload.training.candidates[0],
        dataset_uri="file:///d",
        day=date(2026, 11, 20),
        dag_run_id="r",
    )
    assert storage_options_from_env(job.env) == options
    assert (
        STORAGE_OPTIONS_ENV
        not in train_job(
            load_config(write_config(tmp_path)),
            workload,
            workload.training.candidates[0],
            dataset_uri="file:///d",
            day=date(2026, 11, 20),
            dag_run_id="r",
        ).env
    )
    write_error(str(tmp_path), RuntimeError("boom"), EXIT_FAILED)
    assert read_job_file(str(tmp_path), "error.json", options)["message"] == "boom"


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_malformed_storage_options_are_a_config_error(text: str) -> None:
    from flywheel.errors import ConfigError
    from flywheel.storage import STORAGE_OPTIONS_ENV, storage_options_from_env

    with pytest.raises(ConfigError, match=STORAGE_OPTIONS_ENV):
        storage_options_from_env({STORAGE_OPTIONS_ENV: text})


def test_evaluate_jobs_name_the_model_and_share_the_evaluation_settings(tmp_path: Path) -> None:
    evaluation = {"settings": {"max_examples": 50, "generation": {"max_new_tokens": 32}}}
    config = load_config(write_config(tmp_path, evaluation=evaluation))
    workload = config.workload("customer_support_router")
    common = {"dataset_uri": "s3://d/1", "day": date(2026, 11, 20), "dag_run_id": "manual__x"}
    customized = evaluate_job(
        config,
        workload,
        ModelConfig(base_model="/models/a", adapter="s3://r/train/a/adapter"),
        eval_type="customized",
        candidate_id="a",
        **common,
    )
    endpoint = EndpointConfig(base_url="http://vllm:8000/v1", model="router", api_key_env="VLLM_API_KEY")
    champion = evaluate_job(
        config,
        workload,
        ModelConfig(endpoint=endpoint),
        eval_type="champion",
        candidate_id=CHAMPION_CANDIDATE_ID,
        **common,
    )

    arguments = customized.arguments
    assert arguments[:5] == ["evaluate", "--dataset", "s3://d/1", "--eval-type", "customized"]
    assert arguments[arguments.index("--adapter") + 1] == "s3://r/train/a/adapter"
    settings = json.loads(arguments[arguments.index("--evaluation-config") + 1])
    assert (settings["max_examples"], settings["generation"]["max_new_tokens"]) == (50, 32)
    assert customized.output_uri.endswith("/runs/customer_support_router/2026-11-20/evaluate/a/customized")
    assert customized.labels["flywheel.io/eval-type"] == "customized"
    assert customized.labels["flywheel.io/job"] == "evaluate"
    shown = json.loads(champion.arguments[champion.arguments.index("--endpoint") + 1])
    assert shown == endpoint.model_dump(mode="json")  # the key's variable name, never a key
    assert "--base-model" not in champion.arguments
    assert champion.output_uri.endswith("/evaluate/champion/champion")
    # What a job that writes no result is recorded as: the model as planned, without secrets.
    assert customized.model == {"base_model": "/models/a", "adapter": "s3://r/train/a/adapter"}
    assert champion.model == {"endpoint": {"base_url": "http://vllm:8000/v1", "model": "router"}}


# ---------------------------------------------------------------- the job's process group, time limits

# A job that starts a child of its own (as a data loader or a tokenizer pool would), records the pids
# and its process group in PIDS, then works "forever".
FOREVER_JOB = """
import json, os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pids = {"job": os.getpid(), "child": child.pid, "group": os.getpgid(0), "parent": os.getppid()}
with open(sys.argv[1] + ".tmp", "w") as handle:
    json.dump(pids, handle)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("working", flush=True)
time.sleep(600)
"""


def forever_job(tmp_path: Path) -> tuple[PythonJob, Path]:
    pids = tmp_path / "pids.json"
    job = PythonJob(
        kind="train",
        name="train-forever",
        arguments=["-c", FOREVER_JOB, str(pids)],
        output_uri=str(tmp_path / "out"),
        labels=job_labels("customer_support_router", "manual__x", "greedy", "train"),
    )
    return job, pids


def group_members(group: int) -> list[int]:
    """The live processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux_only
@pytest.mark.parametrize(
    "kill",
    [
        signal.SIGKILL,  # the worker killed: the OOM killer, a lost node (its guard ends the group)
        signal.SIGINT,  # the task interrupted: Airflow's escalation on "mark failed", a timeout's exception
    ],
)
def test_killing_the_worker_of_a_running_job_ends_the_jobs_whole_process_group(
    tmp_path: Path, kill: signal.Signals
) -> None:
    job, pids_file = forever_job(tmp_path)
    # A real worker process that runs the job with run_local, as the `train` task does.
    worker_code = (
        # An ignored SIGINT is inherited across exec: another test of this process may have left it
        # ignored, and the worker must be interruptible as a task process is.
        "import json, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from flywheel.compute import JobSpec\n"
        "from flywheel.compute.local import run_local\n"
        "class Job(JobSpec):\n"
        "    command = property(lambda self: [sys.executable, *self.arguments])\n"
        "run_local(Job.from_dict(json.loads(sys.argv[1])))\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", worker_code, json.dumps(job.to_dict())])
    try:
        wait_for(pids_file.exists, 60, "started")
        pids = json.loads(pids_file.read_text())
        group = pids["group"]
        # The job runs in a process group of its own (led by its guard), not in the worker's.
        assert group != os.getpgid(worker.pid)
        assert os.getpgid(pids["child"]) == group
        assert set(group_members(group)) == {group, pids["job"], pids["child"]}
        assert pids["parent"] == group  # the guard, a child of the worker

        os.kill(worker.pid, kill)
        assert worker.wait(timeout=10) != 0
        wait_for(lambda: not group_members(group), 10, "ended")
        assert not any(alive(pid) for pid in (group, pids["job"], pids["child"]))
    finally:
        worker.kill()
        worker.wait()
        for pid in json.loads(pids_file.read_text()).values() if pids_file.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@linux_only
def test_a_job_past_its_time_limit_is_killed_with_its_process_group_and_reported_timed_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job, pids_file = forever_job(tmp_path)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="test.job"), pytest.raises(JobTimeoutError) as failure:
        run_local(job, logger=logging.getLogger("test.job"), timeout_s=3)

    assert time.monotonic() - started < 30
    pids = json.loads(pids_file.read_text())
    assert not group_members(pids["group"])
    assert not any(alive(pid) for pid in (pids["group"], pids["job"], pids["child"]))
    # Retried (a hang may not recur), as a pod past its activeDeadlineSeconds is.
    assert isinstance(failure.value, TransientJobError) and isinstance(failure.value, RetryableError)
    assert str(failure.value) == (
        "local job train-forever timed out: it ran past its time limit of 3 s and was killed with every "
        "process it started (compute.train_timeout_minutes)"
    )
    assert failure.value.exit_code == -signal.SIGKILL
    lines = [r.getMessage() for r in caplog.records if r.name == "test.job"]
    assert "working" in lines
    assert any(
        line.startswith("train-forever ran past its time limit of 3 s and was killed") for line in lines
    )
    # Not taken for out of memory; collect_training records the candidate as timed out.
    error = read_job_file(job.output_uri, "error.json")
    assert error == failure.value.error
    assert (error["error"], error["retryable"], error["timeout_s"]) == ("Timeout", True, 3)
    [outcome] = read_outcomes([job.to_dict()])
    assert (outcome.status, outcome.error) == ("failed", error)


@linux_only
def test_a_sigterm_to_the_guard_reaches_the_job_and_is_retried_not_taken_for_out_of_memory(
    tmp_path: Path,
) -> None:
    job, pids_file = forever_job(tmp_path)

    def stop_the_guard() -> None:  # a person or a shutting-down worker, with the worker still alive
        wait_for(pids_file.exists, 60, "started")
        os.kill(json.loads(pids_file.read_text())["group"], signal.SIGTERM)

    stopper = threading.Thread(target=stop_the_guard, daemon=True)
    stopper.start()
    with pytest.raises(TransientJobError) as failure:
        run_local(job)
    stopper.join()

    assert not isinstance(failure.value, OutOfMemoryJobError)
    assert failure.value.exit_code == -signal.SIGTERM
    pids = json.loads(pids_file.read_text())
    assert not group_members(pids["group"])
    assert not alive(pids["child"])


@linux_only
def test_what_a_finished_job_left_running_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids.json"
    code = (
        "import json, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"json.dump({{'child': child.pid}}, open({str(pids)!r}, 'w'))\n"
    )
    started = time.monotonic()
    run_local(python_job(tmp_path / "out", code))  # the child holds the log pipe open: no hang

    assert time.monotonic() - started < 30
    child = json.loads(pids.read_text())["child"]
    deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously: the exit follows shortly
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_a_job_that_cannot_start_fails_with_the_reason_in_its_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Missing(JobSpec):
        @property
        def command(self) -> list[str]:
            return [str(tmp_path / "no-such-program")]

    job = Missing(kind="train", name="train-missing", arguments=[], output_uri=str(tmp_path / "out"))
    with caplog.at_level(logging.INFO, logger="test.job"), pytest.raises(TransientJobError) as failure:
        run_local(job, logger=logging.getLogger("test.job"))
    assert failure.value.exit_code == 127
    lines = [r.getMessage() for r in caplog.records if r.name == "test.job"]
    assert any("cannot start the job" in line and "no-such-program" in line for line in lines)


# ------------------------------------------------------------------ result.json of another attempt

RESULT_JOB = """
import json, os, sys
from flywheel.jobs import write_result
output, dataset, straggler = sys.argv[1:4]
write_result(output, {"steps": 2}, dataset_uri=dataset)
if straggler != "-":  # an earlier attempt's job, left running by its killed worker, finishes now
    path = os.path.join(output, "result.json")
    stale = json.load(open(path)) | json.loads(straggler)
    json.dump(stale, open(path, "w"))
"""


def result_job(
    tmp_path: Path, straggler: dict | None = None, dataset_id: str = "2026-11-20-abc"
) -> PythonJob:
    output, dataset = tmp_path / "out", f"file://{tmp_path}/datasets/wl/2026-11-20-abc"
    return PythonJob(
        kind="train",
        name="train-greedy",
        arguments=["-c", RESULT_JOB, str(output), dataset, json.dumps(straggler) if straggler else "-"],
        output_uri=str(output),
        labels=job_labels("customer_support_router", "manual__x", "greedy", "train"),
        dataset_id=dataset_id,
    )


def test_a_jobs_result_names_its_attempt_and_dataset_and_is_accepted(tmp_path: Path) -> None:
    job = result_job(tmp_path)
    run_local(job, attempt_id="manual__x/train[0]/try-2/5e1f")

    result = read_job_file(job.output_uri, "result.json")
    assert (result["attempt_id"], result["dataset_id"]) == ("manual__x/train[0]/try-2/5e1f", "2026-11-20-abc")
    attempt = read_job_file(job.output_uri, "attempt.json")
    assert (attempt["attempt_id"], attempt["dataset_id"]) == (
        "manual__x/train[0]/try-2/5e1f",
        "2026-11-20-abc",
    )
    [outcome] = read_outcomes([job.to_dict()])
    assert (outcome.status, outcome.result) == ("succeeded", result)


def test_a_stale_result_json_of_another_attempt_is_rejected(tmp_path: Path) -> None:
    # The straggler of try 1 overwrites try 2's result.json just before try 2's job exits.
    job = result_job(tmp_path, straggler={"attempt_id": "manual__x/train[0]/try-1/0a9c"})
    with pytest.raises(StaleResultError) as failure:
        run_local(job, attempt_id="manual__x/train[0]/try-2/5e1f")

    message = (
        f"job train-greedy ({job.output_uri}): result.json belongs to attempt "
        "'manual__x/train[0]/try-1/0a9c', not to this job's attempt 'manual__x/train[0]/try-2/5e1f'; "
        "rejected as the outcome of another job"
    )
    assert str(failure.value) == message
    assert isinstance(failure.value, RetryableError)  # the retry runs the job again, in a clean directory
    # collect_training, reading later, rejects it too: the attempt of record is the last one started.
    [outcome] = read_outcomes([job.to_dict()])
    assert outcome.status == "failed"
    assert outcome.error == {"error": "StaleResult", "message": message, "retryable": True}


def test_a_result_json_of_another_dataset_is_rejected(tmp_path: Path) -> None:
    job = result_job(tmp_path, dataset_id="2026-11-21-def")  # the day was rebuilt on other data
    with pytest.raises(
        StaleResultError,
        match="belongs to dataset '2026-11-20-abc', not to this job's dataset '2026-11-21-def'",
    ):
        run_local(job)
    [outcome] = read_outcomes([job.to_dict()])
    assert outcome.error["error"] == "StaleResult"
    assert "dataset '2026-11-20-abc'" in outcome.error["message"]


@pytest.mark.parametrize(
    ("result", "stale"),
    [
        ({"attempt_id": "try-2", "dataset_id": "d1"}, False),
        ({}, False),  # a job run by hand, or an older job image: nothing to check
        ({"attempt_id": "try-1", "dataset_id": "d1"}, True),
        ({"attempt_id": "try-2", "dataset_id": "d0"}, True),
        ({"attempt_id": None}, True),
    ],
)
def test_only_a_result_that_names_another_attempt_or_dataset_is_stale(result: dict, stale: bool) -> None:
    if stale:
        with pytest.raises(StaleResultError):
            check_result(result, where="job x", attempt_id="try-2", dataset_id="d1")
    else:
        check_result(result, where="job x", attempt_id="try-2", dataset_id="d1")
    check_result(result, where="job x")  # ids that are not known are not checked


def test_planned_jobs_carry_their_dataset_id(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    workload = config.workload("customer_support_router")
    job = train_job(
        config,
        workload,
        workload.training.candidates[0],
        dataset_uri="s3://b/datasets/customer_support_router/2026-11-20-0123456789/",
        day=date(2026, 11, 20),
        dag_run_id="r",
    )
    assert job.dataset_id == "2026-11-20-0123456789"
    assert JobSpec.from_dict(job.to_dict()) == job


def test_a_local_job_gets_an_allow_listed_environment_not_the_workers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel.storage import STORAGE_SECRET_OPTIONS_ENV

    planted = "PLANTED-worker-secret"
    monkeypatch.setenv("AIRFLOW_CONN_METADATA_DB", f"postgresql://flywheel:{planted}@db/flywheel")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"postgresql://airflow:{planted}@db/airflow")
    monkeypatch.setenv("SOME_OTHER_TOKEN", planted)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("FLYWHEEL_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("EVAL_API_KEY", "needed-by-the-job")
    seen = tmp_path / "env.json"
    code = f"import json, os; open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ)))"
    job = python_job(tmp_path / "out", code)
    secret = {STORAGE_SECRET_OPTIONS_ENV: json.dumps({"secret": "store-secret"})}

    run_local(job, pass_env=["EVAL_API_KEY"], secret_env=secret)

    env = json.loads(seen.read_text())
    assert planted not in json.dumps(env)
    assert not [name for name in env if name.startswith("AIRFLOW")]
    assert "SOME_OTHER_TOKEN" not in env
    assert (env["HF_HUB_OFFLINE"], env["OMP_NUM_THREADS"], env["FLYWHEEL_LOG_LEVEL"]) == ("1", "2", "DEBUG")
    assert env["EVAL_API_KEY"] == "needed-by-the-job"  # a variable the job needs, passed by name
    assert env[STORAGE_SECRET_OPTIONS_ENV] == secret[STORAGE_SECRET_OPTIONS_ENV]  # in the process only
    assert "store-secret" not in json.dumps(job.to_dict())
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_the_local_backend_passes_the_stores_credentials_and_named_variables(tmp_path: Path) -> None:
    from flywheel.compute.local import job_environment, job_pass_env
    from flywheel.config import ArtifactStoreConfig

    config = load_config(write_config(tmp_path, compute={"pass_env": ["MY_TOOL_*", "EXTRA"]}))
    s3 = config.model_copy(update={"artifact_store": ArtifactStoreConfig(root="s3://bucket/flywheel")})

    assert job_pass_env(config) == ["MY_TOOL_*", "EXTRA"]
    assert job_pass_env(s3)[:1] == ["AWS_*"]
    worker = {"AWS_ACCESS_KEY_ID": "a", "MY_TOOL_HOME": "b", "EXTRA": "c", "EXTRA2": "d", "PATH": "/bin"}
    assert job_environment(worker, job_pass_env(s3)) == {
        "AWS_ACCESS_KEY_ID": "a",
        "MY_TOOL_HOME": "b",
        "EXTRA": "c",
        "PATH": "/bin",
    }
    assert "AWS_ACCESS_KEY_ID" not in job_environment(worker, job_pass_env(config))
