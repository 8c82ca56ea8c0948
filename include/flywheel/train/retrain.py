"""Whether a run trains: the workload's retrain policy (``training.retrain``), applied by ``plan_training``.

The policy is applied before any model of the run is evaluated, to what is known then: the registry's
champion, the earlier nights' decisions and evaluations in the metadata database, and the manifests
of this run's dataset and of the dataset the champion was registered with.

- ``always``: every run trains.
- ``on_trigger``: a run trains when one of these holds (each is checked and reported):

  - ``no_champion``: the registry holds no champion (a configured ``evaluation.champion`` endpoint
    counts as none: a trained challenger is what would replace it);
  - ``previous_alert``: the latest earlier night's decision was an alert for the champion's drift
    (``champion_drift``), the data's quality (``data_quality_failed``) or a shift of its tool-call
    distribution (``tool_shift``);
  - ``champion_below_floor``: the champion's latest score on fresh data (its latest evaluation as the
    champion, else the one it was promoted on) is below its floor (``decision.champion_floor``, else
    ``decision.floor``);
  - ``tool_set_changed``: this run's dataset offers a tool definition (a new name, or a known name
    with another schema) that the champion's dataset did not;
  - ``tool_shift``: this run's validation flagged the day's tool-call distribution as shifted beyond
    ``data_quality.max_tool_shift`` (the clean partition's ``tool_shift_exceeded``), even when every
    tool is a known one (the traffic moved to other tools).

- ``every_n_days``: a run trains when there is no champion, or no earlier night trained an adapter
  in the last ``every_n_days`` days.

A manual run with the DAG's ``champion_only`` param does not train, whatever the policy
(``champion_only``). A run that does not train still evaluates the champion on its fresh data, and
``decide`` alerts the same night when the champion is below its floor; the next night then trains
(``previous_alert``). An API change, the usual cause of a sudden drop, shows as a tool-set change
and triggers training the night it reaches the data, and usually as a tool shift as well; that
night's candidates train a fresh LoRA (:func:`flywheel.train.tasks.warm_start`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from flywheel import artifacts
from flywheel.db.engine import session_scope
from flywheel.db.models import Dataset, Decision, Run, RunStage, as_utc
from flywheel.decide.policy import Reason, tool_shift_reason
from flywheel.intervals import partition_day
from flywheel.storage import PartitionNotFound

if TYPE_CHECKING:
    from flywheel.context import RunContext
    from flywheel.deliver.registry import VersionInfo

log = logging.getLogger(__name__)

TRIGGERING_ALERTS = ("champion_drift", "data_quality_failed", "tool_shift")
"""Reason codes of an earlier night's alert that make an ``on_trigger`` run train."""


@dataclass(frozen=True)
class RetrainPlan:
    """Whether the run trains, under which policy, and why: the triggers that fired when it trains,
    every condition checked (and why it did not fire) when it does not."""

    train: bool
    policy: str
    reasons: list[Reason]

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train, "policy": self.policy, "reasons": [r.to_dict() for r in self.reasons]}


def plan_retrain(ctx: RunContext, dataset: dict[str, Any], champion: VersionInfo | None) -> RetrainPlan:
    """Apply the workload's retraining policy to this run (``dataset``: ``build_dataset``'s summary;
    ``champion``: the registry's) and write the plan to ``runs/<workload>/<day>/retrain.json``."""
    plan = _plan(ctx, dataset, champion)
    ctx.store.write_json_atomic(
        ctx.store.path(artifacts.retrain_path(ctx.workload_id, ctx.day)), plan.to_dict()
    )
    log.info(
        "%s %s: %s under retrain policy %s (%s)",
        ctx.workload_id,
        ctx.day,
        "trains" if plan.train else "does not train",
        plan.policy,
        "; ".join(r.message for r in plan.reasons),
    )
    return plan


def read_retrain(ctx: RunContext) -> dict[str, Any] | None:
    """The plan :func:`plan_retrain` wrote for this run; None when there is none."""
    path = ctx.store.path(artifacts.retrain_path(ctx.workload_id, ctx.day))
    if not ctx.store.fs.exists(path):
        return None
    with ctx.store.fs.open(path, "rb") as handle:
        return json.load(handle)


def _plan(ctx: RunContext, dataset: dict[str, Any], champion: VersionInfo | None) -> RetrainPlan:
    policy = ctx.workload.training.retrain
    if ctx.options.champion_only:  # a manual run's param overrides the policy
        message = (
            "a manual run asked to re-evaluate the champion only (param champion_only): nothing trains, "
            f"whatever the retrain policy {policy.policy} says"
        )
        return RetrainPlan(False, policy.policy, [Reason("champion_only", message)])
    if policy.policy == "always":
        return RetrainPlan(True, "always", [Reason("policy_always", "the retrain policy is always")])
    if champion is None:
        message = "the registry holds no champion: a trained challenger may become one"
        return RetrainPlan(True, policy.policy, [Reason("no_champion", message)])
    if policy.policy == "every_n_days":
        assert policy.every_n_days is not None  # the config requires it with this policy
        due, reason = _training_due(ctx, policy.every_n_days)
        return RetrainPlan(due, policy.policy, [reason])
    checks = [
        _previous_alert(ctx),
        _champion_score(ctx, champion),
        tool_set_change(ctx, dataset, champion),
        _tool_shift(ctx),
    ]
    fired = [reason for triggered, reason in checks if triggered]
    return RetrainPlan(bool(fired), policy.policy, fired or [reason for _, reason in checks])


def _previous_alert(ctx: RunContext) -> tuple[bool, Reason]:
    """Whether the latest earlier night's decision alerted for drift (of the champion or of the tools) or
    data quality."""
    with session_scope(ctx.config.metadata) as session:
        row = session.execute(
            select(Decision.outcome, Decision.reasons, Run.interval_start)
            .join(Run, Run.id == Decision.run_id)
            .where(Decision.workload_id == ctx.workload_id, Run.interval_end < ctx.interval_end)
            .order_by(Run.interval_end.desc(), Decision.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return False, Reason("no_previous_alert", "no earlier night has a decision")
    outcome, reasons, start = row
    day = partition_day(as_utc(start))
    codes = [r.get("code") for r in reasons or []]
    triggering = [code for code in codes if code in TRIGGERING_ALERTS]
    if outcome == "alert" and triggering:
        return True, Reason("previous_alert", f"the night of {day} alerted: {', '.join(triggering)}")
    what = f"alert ({', '.join(map(str, codes))})" if outcome == "alert" else outcome
    return False, Reason(
        "no_previous_alert", f"the night of {day} decided {what}, no drift or data-quality alert"
    )


def _champion_score(ctx: RunContext, champion: VersionInfo) -> tuple[bool, Reason]:
    """Whether the champion's latest score on fresh data is below its floor."""
    from flywheel.evaluate.metrics import get_metric

    policy = ctx.workload.decision
    metric = get_metric(policy.primary_metric).name
    name = f"champion v{champion.version}"
    with session_scope(ctx.config.metadata) as session:
        evaluated = session.execute(
            select(Decision.champion, Run.interval_start)
            .join(Run, Run.id == Decision.run_id)
            .where(Decision.champion_version_id == champion.id, Run.interval_end < ctx.interval_end)
            .order_by(Run.interval_end.desc(), Decision.id.desc())
            .limit(1)
        ).first()
        promoted_on = session.scalar(select(Run.interval_start).where(Run.id == champion.run_id))
    # Its latest evaluation as the champion; before any, its evaluation as the challenger it was.
    scores = [(evaluated[0], evaluated[1], "as the champion")] if evaluated is not None else []
    if promoted_on is not None:
        scores.append(({"metrics": champion.metrics}, promoted_on, "as a challenger"))
    found = [
        (value, start, how) for side, start, how in scores if (value := _score(side, metric)) is not None
    ]
    if not found:
        return False, Reason("champion_score_unknown", f"no score of {name} on fresh data is recorded")
    value, start, how = found[0]
    scored = f"{name} scored {metric} {value:.3f} {how} on the data of {partition_day(as_utc(start))}"
    if value < policy.drift_floor:
        return True, Reason("champion_below_floor", f"{scored}, below its floor {policy.drift_floor}")
    return False, Reason("champion_above_floor", f"{scored}, at or above its floor {policy.drift_floor}")


def _score(side: dict[str, Any] | None, metric: str) -> float | None:
    """``metric``'s value in an evaluated side's ``metrics`` (name to value), when it is a number."""
    value = ((side or {}).get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def tool_set_change(ctx: RunContext, dataset: dict[str, Any], champion: VersionInfo) -> tuple[bool, Reason]:
    """Whether this run's dataset offers tools that the champion's dataset did not, and the reason that
    says which (``tool_set_changed``) or why not."""
    name = f"champion v{champion.version}"
    with session_scope(ctx.config.metadata) as session:
        manifest_uri = (
            session.scalar(select(Dataset.manifest_uri).where(Dataset.dataset_id == champion.dataset_id))
            if champion.dataset_id
            else None
        )
    theirs = _manifest_tools(ctx, manifest_uri) if manifest_uri else None
    ours = _manifest_tools(ctx, artifacts.manifest_uri(dataset["uri"]))
    if theirs is None or ours is None:
        missing = "its dataset" if theirs is None else "this run's dataset"
        return False, Reason("tool_set_unknown", f"cannot compare tools with {name}: {missing} records none")
    known_names = set(theirs.values())
    new = sorted(
        {(tool, "changed" if tool in known_names else "new") for d, tool in ours.items() if d not in theirs}
    )
    if new:
        listed = ", ".join(f"{tool} ({how})" for tool, how in new)
        return True, Reason(
            "tool_set_changed",
            f"the dataset offers tools {name}'s dataset {champion.dataset_id} did not: {listed}",
        )
    return False, Reason(
        "tool_set_unchanged", f"every tool the dataset offers was in {name}'s dataset {champion.dataset_id}"
    )


def _tool_shift(ctx: RunContext) -> tuple[bool, Reason]:
    """Whether this run's validation flagged the day's tool-call distribution as shifted."""
    limit = ctx.workload.data_quality.max_tool_shift
    try:
        record = ctx.store.read_partition_record(ctx.workload_id, ctx.day, "clean")
    except PartitionNotFound:
        return False, Reason("tool_shift_unknown", f"the data of {ctx.day} has no validated partition")
    shift = record.get("tool_shift")
    if record.get("tool_shift_exceeded"):
        return True, tool_shift_reason(ctx.day, shift, limit)
    if shift is None:
        return False, Reason("tool_shift_unknown", f"the tool shift of {ctx.day} was not measured")
    return False, Reason(
        "tool_shift_within",
        f"the tool-call distribution of {ctx.day} is within max_tool_shift {limit} of the previous days' "
        f"(KL divergence {shift:.3f})",
    )


def _manifest_tools(ctx: RunContext, manifest_uri: str) -> dict[str, str] | None:
    """A dataset manifest's ``tools`` (digest to name); None when the manifest or the key is missing."""
    import fsspec

    try:
        with fsspec.open(manifest_uri, "rb", **ctx.config.artifact_store.storage_options) as handle:
            return json.load(handle).get("tools")
    except FileNotFoundError:
        return None


def _training_due(ctx: RunContext, every_n_days: int) -> tuple[bool, Reason]:
    """Whether no earlier night trained an adapter in the last ``every_n_days`` days."""
    last = _last_training_day(ctx)
    if last is None:
        return True, Reason("training_due", "no earlier night trained an adapter")
    days = (ctx.day - last).days
    said = f"the last training was on {last}, {days} day(s) ago; every_n_days is {every_n_days}"
    if days >= every_n_days:
        return True, Reason("training_due", said)
    return False, Reason("training_not_due", said)


def _last_training_day(ctx: RunContext) -> date | None:
    """The day of the latest earlier night whose ``train`` stage produced at least one adapter."""
    with session_scope(ctx.config.metadata) as session:
        rows = session.execute(
            select(Run.interval_start, RunStage.summary)
            .join(RunStage, RunStage.run_id == Run.id)
            .where(
                Run.workload_id == ctx.workload_id,
                Run.interval_end < ctx.interval_end,
                RunStage.stage == "train",
                RunStage.status == "succeeded",
            )
            .order_by(Run.interval_end.desc())
        )
        for start, summary in rows:
            if (summary or {}).get("succeeded"):
                return partition_day(as_utc(start))
    return None
