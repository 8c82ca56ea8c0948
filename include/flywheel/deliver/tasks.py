"""Bodies of the DAG's ``promote``, ``alert`` and ``no_change`` tasks: the decision delivered."""

from __future__ import annotations

import logging
from typing import Any

from flywheel.context import RunContext

log = logging.getLogger(__name__)


def promote(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """Move the champion alias to the run's challenger, deploy it, and notify.

    The alias moves in one transaction with its audit row, and the deploy hook runs inside it: a hook
    failure, an adapter that no longer matches its registered digest, or a champion that moved while
    the run evaluated the old one, leaves the registry as it was, records why, raises an alert and
    fails the task (PromotionFailedError). A concurrent promotion of the same version (a duplicate run
    of this task) that won the race is "already the champion", not a failure.
    """
    from flywheel.deliver.deploy import deploy_hook
    from flywheel.deliver.registry import AlreadyPromotedError, RegistryError, champion
    from flywheel.deliver.registry import promote as move_alias
    from flywheel.errors import DeployError
    from flywheel.storage import ArtifactStore
    from flywheel.tracking import record_promotion

    metadata = ctx.config.metadata
    current = champion(metadata, ctx.workload_id)
    if current is not None and current.version == decision["challenger_version"]:
        # A retry or re-run of a promotion that already happened: nothing to move, nothing to notify.
        log.info("%s: version %s already is the champion", ctx.workload_id, current.version)
        return {"status": "already_champion", "version": current.version}
    deployment: dict[str, Any] = {}
    reason = "; ".join(r["message"] for r in decision["reasons"])
    try:
        move = move_alias(
            metadata,
            ctx.workload_id,
            decision["challenger_version"],
            actor=f"{ctx.workload.dag_id}/{ctx.dag_run_id}",
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
            raise _promotion_failed(ctx, decision, exc) from exc
        log.info("%s: version %s already is the champion (%s)", ctx.workload_id, exc.champion, exc)
        return {"status": "already_champion", "version": exc.champion}
    except (DeployError, RegistryError) as exc:
        raise _promotion_failed(ctx, decision, exc) from exc
    promotion = {
        "status": "promoted",
        "version": move.version,
        "previous_version": move.previous_version,
        "alias_event_id": move.id,
        "deployment": deployment or None,
    }
    record_promotion(metadata, decision["decision_id"], promotion)
    log.info(
        "%s: version %s is the champion (was %s); deployment: %s",
        ctx.workload_id,
        move.version,
        move.previous_version,
        deployment or "none",
    )
    _notify(ctx, "promote", decision)
    return promotion


def _promotion_failed(ctx: RunContext, decision: dict[str, Any], exc: Exception) -> Exception:
    """Record why the promotion failed and alert; the PromotionFailedError that fails the task."""
    from flywheel.errors import PromotionFailedError
    from flywheel.tracking import record_promotion

    record_promotion(
        ctx.config.metadata, decision["decision_id"], {"status": "failed", "error": str(exc)[:2000]}
    )
    failure = {
        "code": "promotion_failed",
        "message": f"promotion failed, the champion is unchanged: {exc}",
    }
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
