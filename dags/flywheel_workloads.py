"""The nightly data flywheel: one DAG per workload in ``include/config/flywheel.yaml``.

Each DAG ``flywheel_<workload_id>`` runs daily on a ``CronDataIntervalTimetable``: the run that fires
at 02:00 UTC owns the 24 hours that ended then, and every output is keyed by that data interval, so
re-running or backfilling a day replaces that day's outputs. Each task's body is
``flywheel.<stage>.tasks.<task_id>``; this file only wires them.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from airflow.sdk import (
    DAG,
    CronDataIntervalTimetable,
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    TriggerRule,
    task,
)

from flywheel import assets
from flywheel.compute.backend import compute_backend
from flywheel.config import FlywheelConfig, WorkloadConfig, load_config
from flywheel.context import RunContext
from flywheel.decide.order import PreviousNightWait
from flywheel.deliver.alerts import FlywheelNotifier
from flywheel.deliver.approval import PromotionApproval, who_may_answer
from flywheel.errors import PermanentError, RetryableError
from flywheel.extract.settle import SettleWait
from flywheel.report.links import RunReportLink

DOC_MD = """
### Data flywheel: `{workload_id}`

{description}

**Schedule** `{schedule}` (UTC) on a data-interval timetable: each run processes the logs of its
data interval `[data_interval_start, data_interval_end)`, the 24 hours before it fired.

Tasks, in order:

0. `settle`: waits until the interval ended **{settle} minutes** ago (`log_source.settle_minutes`), so
   that logs indexed late are read too; deferred (no worker slot), and over at once in a backfill.
   Then `recount` counts the previous {recount_days} day(s)' windows in the log source again and
   alerts, with the backfill command that re-runs the day, when a count moved since extraction
   (late logs); the recount is in `runs/{workload_id}/<day>/recount.json`.
1. `extract`: the interval's logs into the `raw/{workload_id}/<day>/` Parquet partition
   (`raw_partitions` row); asset `flywheel.{workload_id}.raw_day`, partition key the day. Then
   `previous_night` waits (`depends_on_past`, reschedule mode, no worker slot) until the previous
   night has decided and delivered, at most {previous_night_wait} minutes: nights validate (the tool
   shift compares with the days before), build their datasets (the last days' clean data), train,
   evaluate and decide **in interval order**, so a backfill replays history with the champion carried
   from night to night, even next to the scheduled run; extraction runs side by side.
2. `validate`: record rules, PII scrubbing and batch expectations; the day's `clean/` and
   `quarantine/` partitions, the GX result and Data Docs under `reports/{workload_id}/<day>/`
   (`validated_partitions` row); asset `flywheel.{workload_id}.clean_day`, partition key the day. Fails
   when a batch expectation fails.
3. `build_dataset`: the last {window} validated days de-duplicated and split into train, validation
   and evaluation files with a manifest under `datasets/{workload_id}/<dataset_id>/` (`datasets` row);
   asset `flywheel.{workload_id}.dataset`.
4. `plan_training`: one training job per candidate base model
   ({candidates}) when the retrain policy `{retrain}` says this run trains (none otherwise: the
   champion is still evaluated); why, in `runs/{workload_id}/<day>/retrain.json` and the `train`
   stage summary.
5. `train` (mapped, one task per candidate, labelled with its candidate id): `flywheel train` on the
   **{backend}** compute backend ({backend_doc}); the adapter, `result.json` and the loss curve land
   under `runs/{workload_id}/<day>/train/<candidate_id>/`. A job that fails with a bad configuration
   or out of memory is not retried.
6. `collect_training`: reads every candidate's `result.json` / `error.json` from the artifact store
   (never XCom) and records the `train` stage; fails only when jobs ran and none produced an adapter.
7. `plan_evaluation`: one evaluation job per model variant ({variants}), all on the dataset's
   evaluation split, the same examples for every model.
8. `evaluate` (mapped, labelled `<candidate_id>/<eval_type>`): `flywheel evaluate` on the same
   backend; per-example `examples.jsonl` and the metric summary `result.json` (each metric with its
   95% interval, per-tool breakdown) under `runs/{workload_id}/<day>/evaluate/<candidate_id>/<eval_type>/`.
9. `collect_evaluation`: records each evaluation in the `evaluations` table and the `evaluate`
   stage; fails only when no evaluation succeeded.
10. `decide` (runs whatever happened upstream): the champion against the run's best challenger on
   the same examples under the workload's policy ({policy}); a failed stage is itself the
   evidence. The decision, every figure and the reasons go to the `decisions` table; the challenger
   becomes a model version in the registry.
11. `branch` follows the decision to exactly one of: {approval}`promote` (the `champion` alias moves
   in one audited transaction with the deploy hook, **{deploy}**; a hook failure leaves the old
   champion and alerts; a champion chosen on newer data, or one that moved during the run, stays,
   and the decision is recorded as superseded; asset `flywheel.{workload_id}.champion` when the
   alias moved), `alert` (drift, a regressed challenger, a failed stage) or `no_change`.
12. `report`: the run's HTML report with plots, `reports/{workload_id}/<day>/run-report.html`.
13. `watcher`: runs only when a task failed, and fails the DAG run so it shows red.

Notifications ({channels}) go out on promotion, alerts and task failures; `flywheel registry show
--workload {workload_id}` prints the champion's history, `flywheel registry rollback` restores the
previous one.

**Log source**: `{source_type}`, reading `{source_location}`{clients}.
**Artifact store**: `{artifact_root}`. Every run and stage is recorded in the metadata database
(`runs`, `run_stages`).

**Manual runs** take these params (the trigger form validates them; a scheduled run uses the
defaults):

- `page_size`, `client_ids`: how the run reads the log source, and which clients.
- `champion_only` (default false): re-evaluate the champion only. Nothing trains, whatever the retrain
  policy says (the train stage records `champion_only`), and no candidate is evaluated: the decision
  judges the champion on the run's fresh data (`no_change`, or `alert` when it is below its floor).
  Fails at `plan_training` when there is no champion to evaluate.
- `dry_run` (default false): decide, record and notify as a **dry run**. The decision is recorded with
  `dry_run` set, `promote` records `promotion: {{"status": "dry_run"}}` and notifies "would be
  promoted"; the champion alias, serving and the champion asset do not move, and no approval is asked.
- `candidates` (default null: all of {candidate_ids}): train and evaluate only these candidates. An id
  that is not a candidate of this workload is refused, naming the param.

**Backfill** a range of days (each one replaces that day's partition):

```
airflow backfill create --dag-id {dag_id} --from-date 2026-11-01 --to-date 2026-11-08 \\
    --reprocess-behavior completed --dry-run
```

The dates select interval *starts* (02:00 UTC): this range covers the days 11-01 to 11-07.
Drop `--dry-run` once the listed logical dates are the ones you want. A manual run owns the
interval that ends at its logical date (or, without one, the latest complete interval).
"""

# One rule per kind of error (flywheel.errors): a permanent one fails the task at once.
RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=PermanentError,
            action=RetryAction.FAIL,
            reason="retrying cannot fix it (configuration, input, data quality, a job that failed for good)",
        ),
        RetryRule(exception=RetryableError, action=RetryAction.RETRY, reason="a retry may succeed"),
    ]
)


def build_dag(config: FlywheelConfig, workload: WorkloadConfig) -> DAG:
    """The flywheel DAG of one workload."""
    workload_id = workload.workload_id
    source = workload.log_source
    defaults = config.airflow
    backend = compute_backend(config)
    approvers = who_may_answer(workload.decision.approvers)
    approver = f"one of {approvers}" if approvers else "a person"
    with DAG(
        dag_id=workload.dag_id,
        description=f"Nightly data flywheel for workload {workload_id}",
        schedule=CronDataIntervalTimetable(workload.schedule, timezone="UTC"),
        start_date=datetime.combine(workload.start_date, time(), tzinfo=UTC),
        catchup=workload.catchup,
        max_active_runs=workload.max_active_runs,
        tags=sorted({*defaults.tags, *workload.tags, f"workload:{workload_id}"}),
        doc_md=DOC_MD.format(
            workload_id=workload_id,
            dag_id=workload.dag_id,
            description=workload.description.strip() or "(no description)",
            schedule=workload.schedule,
            source_type=source.type,
            source_location=source.location,
            settle=source.settle_minutes,
            recount_days=source.recount_days,
            clients=f", clients {', '.join(workload.client_ids)}" if workload.client_ids else ", all clients",
            artifact_root=config.artifact_store.root,
            window=workload.training_window_days,
            previous_night_wait=workload.decision.previous_night_wait_minutes,
            candidates=", ".join(
                f"`{c.candidate_id}`: `{c.base_model}`" for c in workload.training.candidates
            ),
            backend=config.compute.backend,
            retrain=workload.training.retrain.policy,
            variants=", ".join(
                (["`champion`"] if workload.evaluation.champion else [])
                + [f"`{t}`" for t in workload.evaluation.eval_types]
            ),
            backend_doc=backend.doc,
            policy=f"primary metric `{workload.decision.primary_metric}`, alpha {workload.decision.alpha}, "
            f"floor {workload.decision.floor}, at least {workload.decision.min_examples} examples",
            deploy=workload.deploy.type,
            approval=(
                f"`approve` ({approver} approves within {workload.decision.approval_timeout_hours:g} hours, "
                "in the UI's Required actions; a rejection or no answer keeps the champion, recorded as "
                "`not_approved`), then "
                if workload.decision.approval == "required"
                else ""
            ),
            candidate_ids=", ".join(f"`{c.candidate_id}`" for c in workload.training.candidates),
            channels=", ".join(
                ["local sink"] * workload.alerts.local_sink + [c.type for c in workload.alerts.channels]
            )
            or "none",
        ),
        default_args={
            "owner": defaults.owner,
            "retries": defaults.retries,
            "retry_delay": timedelta(minutes=defaults.retry_delay_minutes),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=defaults.max_retry_delay_minutes),
            # The train and evaluate tasks get their job's time limit instead (ComputeBackend.task_timeout).
            "execution_timeout": timedelta(minutes=defaults.execution_timeout_minutes),
            "retry_policy": RETRY_POLICY,
            "on_failure_callback": [FlywheelNotifier(workload_id)],
        },
        params={
            "page_size": Param(
                source.page_size,
                type="integer",
                minimum=10,
                maximum=10_000,
                description="Log records per page read from the log source for this run.",
            ),
            "client_ids": Param(
                workload.client_ids,
                type=["null", "array"],
                items={"type": "string", "minLength": 1},
                uniqueItems=True,
                minItems=1,
                description="Extract only these client_id values (null: the workload's configured filter).",
            ),
            "champion_only": Param(
                False,
                type="boolean",
                description="Re-evaluate the champion only: train nothing, whatever the retrain policy says, "
                "and evaluate no candidate.",
            ),
            "dry_run": Param(
                False,
                type="boolean",
                description="Decide, record and notify as a dry run: the champion alias never moves and no "
                "approval is asked for.",
            ),
            "candidates": Param(
                None,
                type=["null", "array"],
                items={"type": "string", "enum": [c.candidate_id for c in workload.training.candidates]},
                uniqueItems=True,
                minItems=1,
                description="Train and evaluate only these candidates (null: every candidate).",
            ),
        },
        render_template_as_native_obj=True,
    ) as dag:
        raw_day, clean_day = assets.raw_day(workload_id), assets.clean_day(workload_id)
        dataset_asset = assets.dataset(workload_id)

        @task(
            task_id="extract",
            outlets=[raw_day],
            doc_md="Stream the data interval's logs from the log source into Parquet.",
        )
        def extract(params: dict, outlet_events=None) -> dict:
            from flywheel.extract import tasks

            ctx = RunContext.current(workload_id)
            summary = tasks.extract(ctx, page_size=params["page_size"], client_ids=params["client_ids"])
            assets.emit_day(outlet_events, raw_day, ctx.day, summary)
            return summary

        @task(
            task_id="recount",
            doc_md="Count the previous days' windows in the log source again; alert when a count moved "
            "since extraction (late logs), naming the day and the backfill that re-runs it.",
        )
        def recount() -> dict:
            from flywheel.extract import tasks

            return tasks.recount(RunContext.current(workload_id))

        @task(
            task_id="validate",
            outlets=[clean_day],
            doc_md="Record rules, PII scrubbing and batch expectations of the day.",
        )
        def validate(outlet_events=None) -> dict:
            from flywheel.validate import tasks

            ctx = RunContext.current(workload_id)
            summary = tasks.validate(ctx)
            assets.emit_day(outlet_events, clean_day, ctx.day, summary)
            return summary

        @task(
            task_id="build_dataset",
            outlets=[dataset_asset],
            doc_md="De-duplicate the training window and split it.",
        )
        def build_dataset(outlet_events=None) -> dict:
            from flywheel.dataset import tasks

            summary = tasks.build_dataset(RunContext.current(workload_id))
            assets.emit_dataset(outlet_events, dataset_asset, summary)
            return summary

        @task(
            task_id="plan_training",
            doc_md="One training job per candidate base model, or none when the retrain policy says so.",
        )
        def plan_training(dataset: dict) -> list[dict]:
            from flywheel.train import tasks

            return tasks.plan_training(RunContext.current(workload_id), dataset)

        @task(
            task_id="collect_training",
            # All done, skipped included: `train` is skipped when the retrain policy planned no job.
            trigger_rule=TriggerRule.ALL_DONE,
            doc_md="Read and record every candidate's training result from the artifact store, and why "
            "the run trained or not.",
        )
        def collect_training(dataset: dict | None, jobs: list[dict] | None) -> dict:
            from flywheel.train import tasks

            if dataset is None or jobs is None:  # no XCom: the dataset or the plan failed upstream
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException("nothing to collect: no training was planned")
            return tasks.collect_training(RunContext.current(workload_id), dataset, jobs)

        @task(
            task_id="plan_evaluation",
            trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
            doc_md="One evaluation job per model variant: the champion, and base / icl / customized per "
            "candidate (customized only where training produced an adapter).",
        )
        def plan_evaluation(dataset: dict, train_jobs: list[dict]) -> list[dict]:
            from flywheel.evaluate import tasks

            return tasks.plan_evaluation(RunContext.current(workload_id), dataset, train_jobs)

        @task(
            task_id="collect_evaluation",
            trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
            doc_md="Read and record every evaluation's result from the artifact store.",
        )
        def collect_evaluation(dataset: dict, jobs: list[dict]) -> dict:
            from flywheel.evaluate import tasks

            return tasks.collect_evaluation(RunContext.current(workload_id), dataset, jobs)

        @task(
            task_id="decide",
            trigger_rule=TriggerRule.ALL_DONE,
            doc_md="Champion vs best challenger on the same examples (or the upstream failure): the decision "
            "and its evidence in the `decisions` table; the challenger registered as a model version.",
        )
        def decide() -> dict:
            from flywheel.decide import tasks

            return tasks.decide(RunContext.current(workload_id))

        approval = workload.decision.approval == "required"

        @task.branch(
            task_id="branch",
            doc_md="Follow the decision: `promote` (through `approve` when approval is required), `alert` "
            "or `no_change`.",
        )
        def branch(decision: dict) -> str:
            if decision["outcome"] == "promote" and approval:
                return "approve"
            return decision["outcome"]

        @task(
            task_id="promote",
            outlets=[assets.promotions(workload_id)],
            doc_md="Move the champion alias (one transaction, audited), deploy, notify; the champion's "
            "asset event when the alias moved.",
        )
        def promote(decision: dict, approved: dict | None, outlet_events=None) -> dict:
            from flywheel.deliver import tasks

            promotion = tasks.promote(RunContext.current(workload_id), decision, approved)
            assets.emit_champion(outlet_events, workload_id, promotion)
            return promotion

        @task(task_id="alert", doc_md="Notify the workload's channels: drift, regression or a failed stage.")
        def alert(decision: dict) -> None:
            from flywheel.deliver import tasks

            tasks.notify_outcome(RunContext.current(workload_id), "alert", decision)

        @task(task_id="no_change", doc_md="The champion stays; the reasons are in the decision.")
        def no_change(decision: dict) -> None:
            from flywheel.deliver import tasks

            tasks.notify_outcome(RunContext.current(workload_id), "no_change", decision)

        @task(
            task_id="report",
            trigger_rule=TriggerRule.ALL_DONE,
            doc_md="The run's HTML report with plots: `reports/<workload>/<day>/run-report.html`.",
        )
        def report() -> str | None:
            from flywheel.report import tasks

            return tasks.report(RunContext.current(workload_id))

        # Extraction reads the window once it has settled (late logs); the earlier days are recounted.
        settle = SettleWait(
            task_id="settle",
            schedule=workload.schedule,
            settle_minutes=source.settle_minutes,
            execution_timeout=timedelta(minutes=source.settle_minutes + defaults.execution_timeout_minutes),
            doc_md="Wait, deferred, until the data interval ended `log_source.settle_minutes` ago.",
        )
        dataset = build_dataset()
        extracted = settle >> extract()
        # From validation on, a night starts from the days, and the champion, the nights before left.
        previous_night = PreviousNightWait(
            task_id="previous_night",
            workload_id=workload_id,
            wait_minutes=workload.decision.previous_night_wait_minutes,
            trigger_rule=TriggerRule.ALL_DONE,
            doc_md="Wait until the previous night has decided and delivered (nights in interval order).",
        )
        validated = validate()
        extracted >> previous_night >> validated
        extracted >> validated >> dataset
        train_plan = plan_training(dataset)
        # The compute backend makes the mapped job tasks: one `train` / `evaluate` instance per planned job.
        training = backend.mapped_task("train", train_plan, doc_md=JOB_DOCS["train"])
        trained = training >> collect_training(dataset, train_plan)
        evaluation_plan = plan_evaluation(dataset, train_plan)
        trained >> evaluation_plan
        evaluation = backend.mapped_task("evaluate", evaluation_plan, doc_md=JOB_DOCS["evaluate"])
        evaluated = evaluation >> collect_evaluation(dataset, evaluation_plan)
        decision = decide()
        evaluated >> decision
        # With approval required, a person approves between the decision and the promotion
        # (flywheel.deliver.approval); `promote` then also waits for the answer (its XCom).
        approve = (
            PromotionApproval(
                task_id="approve",
                workload_id=workload_id,
                timeout=timedelta(hours=workload.decision.approval_timeout_hours),
                approvers=workload.decision.approvers,
                doc_md="Ask a person to approve the promotion (Required actions): the decision's evidence, "
                "sent to the alert channels too. Reject or no answer in time: no promotion, recorded.",
            )
            if approval
            else None
        )
        outcomes = [
            promote(decision, approve.output if approve else None),
            alert(decision),
            no_change(decision),
        ]
        branch(decision) >> ([approve, *outcomes[1:]] if approve else outcomes)
        report_task = report()
        report_task.operator.operator_extra_links = (RunReportLink(),)
        outcomes >> report_task
        if source.recount_days:
            settle >> recount() >> report_task
        # The leaves succeed even when a stage failed (the decision alerts instead): fail the run then.
        # Not downstream of `branch` nor `approve`, which skip every direct downstream task they do not
        # follow (a rejection skips `promote`).
        [t for t in dag.tasks if t.task_id not in ("branch", "approve")] >> watcher()
    return dag


@task(
    task_id="watcher",
    trigger_rule=TriggerRule.ONE_FAILED,
    retries=0,
    on_failure_callback=None,
    doc_md="Fails the DAG run when any task failed; runs only then (the failure was already notified).",
)
def watcher() -> None:
    raise RuntimeError("a task of this run failed: see the failed task's log and the run report")


JOB_DOCS = {
    "train": "Fine-tune one candidate's LoRA adapter (`flywheel train`); results go to the artifact store.",
    "evaluate": "Evaluate one model variant on the evaluation split (`flywheel evaluate`); results go to "
    "the artifact store.",
}


_config = load_config()
for _workload in _config.workloads:
    globals()[_workload.dag_id] = build_dag(_config, _workload)
