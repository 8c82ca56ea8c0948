"""Bodies of the DAG's ``promote``, ``alert`` and ``no_change`` tasks: the decision delivered."""

from __future__ import annotations

import logging
from typing import Any

from flywheel.context import RunContext

log = logging.getLogger(__name__)


def promote(
    ctx: RunContext, decision: dict[str, Any], approval: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Move the champion alias to the run's challenger, deploy it, and notify.

    ``approval``: a person's approval of the promotion (the ``approve`` task's response, with
    ``decision.approval: required``; :mod:`flywheel.deliver.approval`): the approver becomes the audit
    row's actor and their comment joins its reason, and the promotion record keeps both. A dry run's
    decision (``dry_run``) moves nothing: the promotion is recorded as ``dry_run`` and notified as one.

    The alias moves in one transaction with its audit row, and the deploy hook runs inside it: a hook
    failure, or an adapter that no longer matches its registered digest, leaves the registry as it
    was, records why, raises an alert and fails the task (PromotionFailedError). A deploy whose answer
    was lost (serving may have applied it) is taken back first (:func:`~flywheel.deliver.deploy.
    deploy_hook`); it is recorded as ``deploy_uncertain`` and the ``deploy_uncertain`` alert says
    whether serving agrees with the registry. A concurrent
    promotion of the same version (a duplicate run of this task) that won the race is "already the
    champion", not a failure.

    A decision is **superseded**, recorded with its evidence and the task succeeds, when the champion
    was chosen on data newer than this run's interval (a backfill that re-processes old days, or one
    that overlaps the scheduled run), or when the champion moved while this run evaluated the old
    one: a run never replaces a champion on older evidence.
    """
    from flywheel.deliver.deploy import deploy_hook
    from flywheel.deliver.registry import AlreadyPromotedError, RegistryError, champion, chosen_on
    from flywheel.deliver.registry import promote as move_alias
    from flywheel.errors import DeployError, DeployUncertainError
    from flywheel.storage import ArtifactStore

    if decision.get("dry_run"):
        return _dry_run(ctx, decision)
    metadata = ctx.config.metadata
    current = champion(metadata, ctx.workload_id)
    if current is not None and current.version == decision["challenger_version"]:
        # A retry or re-run of a promotion that already happened: nothing to move, nothing to notify.
        log.info("%s: version %s already is the champion", ctx.workload_id, current.version)
        return _record(
            ctx, decision, {"status": "already_champion", "version": current.version}, replace=False
        )
    if current is not None:
        newer = chosen_on(metadata, current)
        if newer is not None and newer > ctx.interval_end:
            return _superseded(
                ctx,
                decision,
                current.version,
                f"the champion, version {current.version}, was chosen on data up to {newer.isoformat()}, "
                f"newer than this run's interval (up to {ctx.interval_end.isoformat()})",
            )
    deployment: dict[str, Any] = {}
    reason = "; ".join(r["message"] for r in decision["reasons"])
    actor = f"{ctx.workload.dag_id}/{ctx.dag_run_id}"
    approved = None
    if approval is not None:
        from flywheel.deliver.approval import approval_record, approver_name

        approved = approval_record(approval)
        # The person who approved is who moved the alias; the DAG run is how.
        actor = f"{approver_name(approved['by'])} (approved {actor})"[:250]
        reason += f"; approved by {approver_name(approved['by'])}" + (
            f": {approved['comment']}" if approved["comment"] else ""
        )
    try:
        move = move_alias(
            metadata,
            ctx.workload_id,
            decision["challenger_version"],
            actor=actor,
            reason=reason,
            decision_id=decision["decision_id"],
            expected_champion=decision["champion_version"],
            before_commit=deploy_hook(
                ctx.workload.deploy,
                decision_id=decision["decision_id"],
                dag_run_id=ctx.dag_run_id,
                results=deployment,
            ),
            store=ArtifactStore(ctx.config.artifact_store.root, ctx.config.artifact_store.storage_options),
        )
    except AlreadyPromotedError as exc:
        if exc.champion != decision["challenger_version"]:
            return _superseded(
                ctx,
                decision,
                exc.champion,
                f"the champion moved to version {exc.champion} while this run evaluated version "
                f"{decision['champion_version']}",
            )
        log.info("%s: version %s already is the champion (%s)", ctx.workload_id, exc.champion, exc)
        return _record(ctx, decision, {"status": "already_champion", "version": exc.champion}, replace=False)
    except DeployUncertainError as exc:
        raise _promotion_failed(ctx, decision, exc, deployment) from exc
    except (DeployError, RegistryError) as exc:
        raise _promotion_failed(ctx, decision, exc) from exc
    promotion = {
        "status": "promoted",
        "version": move.version,
        "previous_version": move.previous_version,
        "alias_event_id": move.id,
        "deployment": deployment or None,
    }
    if approved is not None:
        promotion["approval"] = approved
    _record(ctx, decision, promotion)
    log.info(
        "%s: version %s is the champion (was %s); deployment: %s",
        ctx.workload_id,
        move.version,
        move.previous_version,
        deployment or "none",
    )
    _notify(ctx, "promote", decision)
    return promotion


def _dry_run(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """A dry run's promote decision: recorded and notified as a dry run; the alias does not move."""
    promotion = {
        "status": "dry_run",
        "version": decision["champion_version"],
        "challenger_version": decision["challenger_version"],
        "reason": "a dry run (param dry_run): the champion alias did not move",
    }
    log.info(
        "%s: dry run: version %s would have replaced version %s as the champion; nothing moved",
        ctx.workload_id,
        decision["challenger_version"],
        decision["champion_version"],
    )
    _record(ctx, decision, promotion)
    _notify(ctx, "promote", decision)
    return promotion


def not_approved(ctx: RunContext, decision: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """Record and notify that a person rejected the promotion, or nobody answered in time: the champion
    stays (``promotion: {"status": "not_approved", "reason": "rejected" | "timed out", ...}``).

    ``response``: the human-in-the-loop response the ``approve`` task received (a timeout answers with
    its default, Reject, and no responder).
    """
    from flywheel.deliver.approval import approval_record, approver_name
    from flywheel.errors import AlertDeliveryError

    record = approval_record(response)
    timed_out = record["status"] == "timed_out"
    promotion = {
        "status": "not_approved",
        "reason": "timed out" if timed_out else "rejected",
        "version": decision["champion_version"],
        "challenger_version": decision["challenger_version"],
        "approval": record,
    }
    if timed_out:
        hours = ctx.workload.decision.approval_timeout_hours
        message = f"nobody approved the promotion within {hours:g} hours (decision.approval_timeout_hours)"
    else:
        message = f"{approver_name(record['by'])} rejected the promotion" + (
            f": {record['comment']}" if record["comment"] else ""
        )
    log.warning(
        "%s: %s; the champion is unchanged (version %s)",
        ctx.workload_id,
        message,
        decision["champion_version"] or "none",
    )
    _record(ctx, decision, promotion)
    reason = {"code": "not_approved", "message": f"{message}; the champion is unchanged"}
    try:
        _notify(ctx, "not_approved", decision | {"reasons": [reason, *decision["reasons"]]})
    except AlertDeliveryError as exc:
        # Recorded already; a retry of `approve` would ask the person again, so the task goes on.
        log.error("%s: the not_approved notification was not fully delivered: %s", ctx.workload_id, exc)
    return promotion


def _superseded(ctx: RunContext, decision: dict[str, Any], held: int | None, why: str) -> dict[str, Any]:
    """Record that newer evidence holds the champion: nothing moves, and the run stays green."""
    log.warning(
        "%s: decision %s is superseded, version %s stays the champion: %s",
        ctx.workload_id,
        decision["decision_id"],
        held,
        why,
    )
    return _record(
        ctx,
        decision,
        {
            "status": "superseded",
            "version": held,
            "challenger_version": decision["challenger_version"],
            "reason": why,
        },
    )


def _record(
    ctx: RunContext, decision: dict[str, Any], promotion: dict[str, Any], *, replace: bool = True
) -> dict[str, Any]:
    """``promotion`` kept on the decision's row (what the ``promote`` task did), and returned."""
    from flywheel.tracking import record_promotion

    record_promotion(ctx.config.metadata, decision["decision_id"], promotion, replace=replace)
    return promotion


def _promotion_failed(
    ctx: RunContext, decision: dict[str, Any], exc: Exception, deployment: dict[str, Any] | None = None
) -> Exception:
    """Record why the promotion failed and alert; the PromotionFailedError that fails the task.

    ``deployment``: the deploy hook's record of a deploy that serving may have applied (``status:
    uncertain``); the promotion is then ``deploy_uncertain``, and the alert says where serving stands.
    """
    from flywheel.errors import PromotionFailedError

    if deployment is None:
        _record(ctx, decision, {"status": "failed", "error": str(exc)[:2000]})
        failure = {
            "code": "promotion_failed",
            "message": f"promotion failed, the champion is unchanged: {exc}",
        }
    else:
        held, challenger = decision["champion_version"], decision["challenger_version"]
        promotion = {
            "status": "deploy_uncertain",
            "version": held,
            "challenger_version": challenger,
            "error": str(exc)[:2000],
            "deployment": deployment,
        }
        _record(ctx, decision, promotion)
        where = "the champion is unchanged"
        if not deployment.get("serving_agrees"):
            where = f"the registry keeps version {held}, but SERVING MAY RUN version {challenger}"
        failure = {"code": "deploy_uncertain", "message": f"promotion failed, {where}: {exc}"}
    _notify(ctx, "alert", decision | {"reasons": [failure, *decision["reasons"]]})
    return PromotionFailedError(str(failure["message"]))


def notify_outcome(ctx: RunContext, event: str, decision: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``alert`` and ``no_change`` branches: notify the workload's channels of the decision."""
    log.log(
        logging.WARNING if event == "alert" else logging.INFO,
        "%s: %s: %s",
        ctx.workload_id,
        event,
        "; ".join(r["message"] for r in decision["reasons"]),
    )
    return _notify(ctx, event, decision)


def _notify(ctx: RunContext, event: str, decision: dict[str, Any]) -> list[dict[str, Any]]:
    from flywheel.deliver.alerts import decision_notification, notify

    return notify(ctx.config, decision_notification(ctx.workload, event, decision, ctx.dag_run_id))
