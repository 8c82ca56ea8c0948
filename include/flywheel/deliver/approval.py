"""A person's approval before a promotion: the DAG's ``approve`` task when ``decision.approval`` is
``required`` (docs/decision-delivery.md, "Approval before promotion").

:class:`PromotionApproval` is the standard provider's human-in-the-loop ``ApprovalOperator`` between
``branch``'s promote path and ``promote``. When a run decides ``promote`` it renders the run report,
asks in the Airflow UI (**Required actions**, or ``PATCH .../taskInstances/approve/-1/hitlDetails``
of the REST API) with the decision's evidence in the request's body, and sends the request to the
workload's alert channels (``approval_requested``). Then the task waits without a worker slot. With
``decision.approvers`` only those users may answer: they are the request's assigned users, and
Airflow's API server refuses an answer from anyone else.

- **Approve**: ``promote`` runs; the approver and their comment go into the alias's audit row
  (:func:`flywheel.deliver.tasks.promote`).
- **Reject**, or no answer within ``decision.approval_timeout_hours`` (the timeout answers Reject
  for nobody): ``promote`` is skipped, the champion stays, the decision records
  ``promotion: {"status": "not_approved", "reason": "rejected" | "timed out", ...}`` with who and
  why, ``not_approved`` notifies, and the run stays green: a human decision is not a failure.

A dry run asks nobody: ``promote`` records the dry run. This module is imported by the DAG file, so
the flywheel's heavier modules are imported when a run asks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, ParamsDict

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.execution_time.hitl import HITLUser

    from flywheel.config import ApproverConfig
    from flywheel.context import RunContext

log = logging.getLogger(__name__)

COMMENT = "comment"
"""The request's one form field: why the person approves or rejects (kept in the audit trail)."""


class PromotionApproval(ApprovalOperator):
    """Ask a person to approve the run's promotion (see the module's docstring).

    Returns (XCom) the response: ``chosen_options``, ``params_input`` (the comment), ``responded_at``
    and ``responded_by_user``; a dry run returns None without asking.
    """

    def __init__(
        self,
        *,
        workload_id: str,
        timeout: timedelta,
        approvers: Sequence[ApproverConfig] = (),
        params: ParamsDict | None = None,
        **kwargs: Any,
    ) -> None:
        # `params` are the DAG's (Airflow merges them in); the request's form shows only the task's own.
        params = params if isinstance(params, ParamsDict) else ParamsDict(params or {})
        params[COMMENT] = Param(
            "",
            source="task",
            type="string",
            maxLength=1000,
            description="Why you approve or reject; kept in the champion's audit trail.",
        )
        super().__init__(
            # Replaced by the decision's own subject and evidence when a run asks (execute).
            subject=f"Promote the challenger of {workload_id}?",
            body=None,
            # What the scheduler answers when nobody did in time: no promotion.
            defaults=self.REJECT,
            response_timeout=timeout,
            # Empty: anyone the auth manager lets answer the DAG's required actions.
            assigned_users=assigned_users(approvers),
            params=params,
            **kwargs,
        )
        self.workload_id = workload_id

    def execute(self, context: Context) -> Any:
        from flywheel.context import RunContext

        decision = context["ti"].xcom_pull(task_ids="decide")
        if decision.get("dry_run"):
            log.info("%s: a dry run asks nobody; promote records the dry run", self.workload_id)
            return None
        ctx = RunContext.current(self.workload_id)
        try:
            action_url = self.generate_link_to_ui_from_context(context=context)
        except ValueError:  # no [api] base_url: the request is still in the UI's Required actions
            action_url = None
        self.subject, self.body = request_approval(ctx, decision, action_url=action_url)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if "error" not in event and event.get("chosen_options") != [self.APPROVE]:
            from flywheel.context import RunContext
            from flywheel.deliver.tasks import not_approved

            # Recorded before the parent skips `promote` (which ends this call with an exception).
            decision = context["ti"].xcom_pull(task_ids="decide")
            not_approved(RunContext.current(self.workload_id), decision, event)
        return super().execute_complete(context, event)


def request_approval(
    ctx: RunContext, decision: dict[str, Any], *, action_url: str | None = None
) -> tuple[str, str]:
    """Render the run report, send ``approval_requested`` to the workload's channels, and return the
    request's subject and Markdown body (the decision's evidence)."""
    from flywheel.deliver.alerts import decision_notification, notify
    from flywheel.report.tasks import report

    report_uri = report(ctx) or decision["report_uri"]
    subject, body = approval_request(ctx, decision, report_url=report_url(report_uri, relative=True))
    notify(
        ctx.config,
        decision_notification(
            ctx.workload,
            "approval_requested",
            decision,
            ctx.dag_run_id,
            action_url=action_url,
            report_url=report_url(report_uri),
        ),
    )
    log.info("%s: waiting for an answer (%s)", subject, action_url or "the UI's Required actions")
    return subject, body


def approval_request(ctx: RunContext, decision: dict[str, Any], *, report_url: str | None) -> tuple[str, str]:
    """The subject and Markdown body of the request: the outcome and its reasons, the champion and the
    challenger on every compared metric (each side's value with its 95% interval, the paired difference
    with its interval, the test or the guardrail's verdict), what each answer does, and the report."""
    from sqlalchemy import select

    from flywheel.db.engine import session_scope
    from flywheel.db.models import Decision, Evaluation

    with session_scope(ctx.config.metadata) as session:
        row = session.get_one(Decision, decision["decision_id"])
        comparisons, sides = row.comparisons or {}, {"champion": row.champion, "challenger": row.challenger}
        ids = [side["evaluation_id"] for side in sides.values() if side and side.get("evaluation_id")]
        measured = dict(
            session.execute(select(Evaluation.id, Evaluation.metrics).where(Evaluation.id.in_(ids))).all()
        )
    metrics = {
        role: (measured.get(side.get("evaluation_id")) or {}) if side else {} for role, side in sides.items()
    }
    champion = decision["champion"] or "none yet"
    if decision["champion_version"] is not None:
        champion += f" (version {decision['champion_version']})"
    challenger = f"{decision['challenger']} (version {decision['challenger_version']})"
    hours = ctx.workload.decision.approval_timeout_hours
    approvers = who_may_answer(ctx.workload.decision.approvers)
    lines = [
        f"The run `{ctx.dag_run_id}` of workload **{ctx.workload_id}** decided **promote** on the data of "
        f"{ctx.interval_start:%Y-%m-%d %H:%M} to {ctx.interval_end:%Y-%m-%d %H:%M} UTC "
        f"(decision {decision['decision_id']}, {decision['examples']} paired examples).",
        "",
        f"- Champion: {champion}",
        f"- Challenger: {challenger}",
        "",
        "**Why**",
        "",
        *[f"- `{r['code']}`: {r['message']}" for r in decision["reasons"]],
        "",
        "| metric | champion | challenger | challenger - champion | verdict |",
        "|---|---|---|---|---|",
        *[_row(name, entry, metrics) for name, entry in comparisons.items()],
        "",
        f"**Approve** moves the champion alias to version {decision['challenger_version']} now and tells "
        f"serving (deploy: {ctx.workload.deploy.type}). **Reject**, or no answer within {hours:g} hours, "
        "keeps the champion. Your comment goes into the champion's audit trail.",
    ]
    if approvers:
        lines += ["", f"Only {approvers} may answer (decision.approvers)."]
    if report_url:
        lines += ["", f"[Run report]({report_url}) (every figure and plot of the run)"]
    subject = f"{ctx.workload_id}: promote {challenger} to champion?"
    return subject, "\n".join(lines)


def assigned_users(approvers: Sequence[ApproverConfig]) -> list[HITLUser]:
    """``decision.approvers`` as the request's assigned users: ``{id, name}``, the name the id by default."""
    return [{"id": approver.id, "name": approver.name or approver.id} for approver in approvers]


def who_may_answer(approvers: Sequence[ApproverConfig]) -> str | None:
    """``decision.approvers`` named for people (``alice, Bob (id 7)``); None when anyone may answer."""
    return ", ".join(approver_name(user) for user in assigned_users(approvers)) or None


def report_url(report_uri: str, *, relative: bool = False) -> str:
    """The run report's address in the Flywheel UI: absolute with ``[api] base_url`` (for channels), else
    (or with ``relative``) relative to the UI, which resolves it in the request's page; the store's URI
    when it is not a run report's."""
    from airflow.configuration import conf

    from flywheel.ui import report_link

    link = report_link(report_uri)
    if link is None:
        return report_uri
    base = conf.get("api", "base_url", fallback=None)
    return link if relative or not base else f"{base.rstrip('/')}/{link}"


def approval_record(response: dict[str, Any]) -> dict[str, Any]:
    """What the audit trail keeps of a human-in-the-loop response: ``status`` (approved, rejected or
    timed_out: the timeout's default answer has no responder), ``by`` ({id, name} or None), ``comment``
    and ``responded_at`` (ISO)."""
    by = response.get("responded_by_user")
    chosen = response.get("chosen_options") or []
    if response.get("timedout") or by is None:
        status = "timed_out"
    else:
        status = "approved" if chosen == [ApprovalOperator.APPROVE] else "rejected"
    at = response.get("responded_at")
    comment = ((response.get("params_input") or {}).get(COMMENT) or "").strip()
    return {
        "status": status,
        "by": {"id": str(by["id"]), "name": str(by["name"])} if by else None,
        "comment": comment or None,
        "responded_at": at.isoformat() if isinstance(at, datetime) else at,
    }


def approver_name(by: dict[str, str] | None) -> str:
    """How the audit trail names a responder: their name, with their id when it differs."""
    if by is None:
        return "nobody"
    return by["name"] if by["name"] == by["id"] else f"{by['name']} (id {by['id']})"


def _row(name: str, entry: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> str:
    def side(role: str) -> str:
        measured = metrics[role].get(name) or {}
        value = entry.get(role)
        if value is None:
            return "-"
        low, high = measured.get("ci_low"), measured.get("ci_high")
        return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")

    difference = entry.get("difference")
    delta = "-"
    if difference is not None:
        delta = f"{difference:+.3f}"
        if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
            delta += f" [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"
    if entry.get("role") == "primary" and entry.get("p_value") is not None:
        verdict = f"McNemar p = {entry['p_value']:.3g} (needs < {entry['threshold']:.3g})"
    elif entry.get("role") == "primary":
        verdict = "no champion to compare" if entry.get("champion") is None else "-"
    else:
        verdict = {True: "passed", False: "failed", None: "not judged"}[entry.get("passed")]
        if entry.get("note"):
            verdict += f": {entry['note']}"
    role = "primary" if entry.get("role") == "primary" else "guardrail"
    return f"| {name} ({role}) | {side('champion')} | {side('challenger')} | {delta} | {verdict} |"
