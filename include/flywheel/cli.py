"""The ``flywheel`` command line: config checks, migrations, the model registry, extraction, demo, benchmarks.

It is also the entrypoint of the job image, so every stage a pod runs is a sub-command here.
Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from flywheel.config import EVAL_TYPES, TrainingConfig, load_config
from flywheel.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The Elasticsearch client logs every HTTP request at INFO; Alembic, Airflow and GX narrate every step.
    for noisy in ("elastic_transport", "alembic", "airflow", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="configuration file (default: $FLYWHEEL_CONFIG or the project's)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="configuration file").add_subparsers(required=True)
    check = config.add_parser("check", help="validate a configuration file and list its workloads")
    check.add_argument("file", nargs="?", help="file to check (default: the active configuration)")
    check.set_defaults(handler=_config_check)
    reference = config.add_parser(
        "reference", help="the configuration reference (every key) generated from the models, as Markdown"
    )
    written = reference.add_mutually_exclusive_group()
    written.add_argument("--output", help="write it to this file (docs/configuration-reference.md)")
    written.add_argument(
        "--check", metavar="FILE", help="exit 1 when FILE differs from what the models generate"
    )
    reference.set_defaults(handler=_config_reference)

    db = commands.add_parser("db", help="metadata database").add_subparsers(required=True)
    db.add_parser("upgrade", help="apply the migrations to the metadata database").set_defaults(
        handler=_db_upgrade
    )

    registry = commands.add_parser(
        "registry", help="the model registry: champion history, rollback, promotion"
    )
    registry_commands = registry.add_subparsers(required=True)
    show = registry_commands.add_parser("show", help="the champion, its history and the registered versions")
    show.add_argument("--workload", required=True, help="workload id")
    show.add_argument("--json", action="store_true", help="print JSON instead of tables")
    show.set_defaults(handler=_registry_show)
    rollback = registry_commands.add_parser(
        "rollback", help="give the champion alias back to the previous one"
    )
    rollback.add_argument("--workload", required=True, help="workload id")
    rollback.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    rollback.add_argument("--actor", help="who (default: the login name)")
    rollback.add_argument(
        "--no-deploy", action="store_true", help="move the alias only, skip the deploy hook"
    )
    rollback.set_defaults(handler=_registry_rollback)
    promote = registry_commands.add_parser("promote", help="make a registered version the champion, by hand")
    promote.add_argument("--workload", required=True, help="workload id")
    promote.add_argument("--version", required=True, type=int, help="model version number (see `show`)")
    promote.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    promote.add_argument("--actor", help="who (default: the login name)")
    promote.add_argument("--no-deploy", action="store_true", help="move the alias only, skip the deploy hook")
    promote.set_defaults(handler=_registry_promote)

    extract = commands.add_parser("extract", help="extract one workload's logs of one interval into Parquet")
    extract.add_argument("workload_id")
    extract.add_argument("--start", required=True, type=_aware_datetime, help="interval start, ISO 8601")
    extract.add_argument(
        "--end", required=True, type=_aware_datetime, help="interval end (excluded), ISO 8601"
    )
    extract.add_argument("--page-size", type=int)
    extract.add_argument(
        "--client-id", action="append", dest="client_ids", help="repeatable; default: config"
    )
    extract.set_defaults(handler=_extract)

    validate = commands.add_parser(
        "validate",
        help="validate and scrub a JSONL file of log records (one _source per line) without Airflow",
    )
    validate.add_argument("--input", required=True, help="JSONL file, one Elasticsearch _source per line")
    validate.add_argument("--start", required=True, type=_aware_datetime, help="interval start, ISO 8601")
    validate.add_argument("--end", required=True, type=_aware_datetime, help="interval end (excluded)")
    validate.add_argument("--out", required=True, help="output directory (clean, quarantine, manifest.json)")
    validate.add_argument("--workload", help="workload whose rules apply (default: the first configured)")
    validate.add_argument("--no-docs", action="store_true", help="skip building Data Docs")
    validate.set_defaults(handler=_validate)

    train = commands.add_parser(
        "train", help="fine-tune a LoRA adapter on a dataset (the job image's entrypoint)"
    )
    train.add_argument(
        "--dataset", required=True, help="dataset URI (directory with train.jsonl, validation.jsonl)"
    )
    train.add_argument("--base-model", required=True, help="local dir, fsspec URL or 'smollm2-135m-instruct'")
    train.add_argument(
        "--output", required=True, help="output URI for the adapter, result.json, loss_curve.json"
    )
    train.add_argument(
        "--training-config",
        help="training settings: a YAML/JSON file, or a JSON object inline (default: the defaults)",
    )
    train.add_argument("--max-steps", type=int, help="override max_steps")
    train.add_argument(
        "--init-adapter",
        metavar="URI",
        help="start from this LoRA adapter (the champion's: a warm start) instead of a fresh one",
    )
    train.add_argument(
        "--parent-version",
        metavar="N",
        type=int,
        help="the registry version of the champion whose adapter --init-adapter is (for lineage)",
    )
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate one model on a dataset's evaluation split (the job image's entrypoint)"
    )
    evaluate.add_argument(
        "--dataset", required=True, help="dataset URI (directory with evaluation.jsonl, train.jsonl)"
    )
    evaluate.add_argument("--output", required=True, help="output URI (examples.jsonl, result.json)")
    evaluate.add_argument("--eval-type", required=True, choices=EVAL_TYPES, help="what is evaluated")
    model = evaluate.add_mutually_exclusive_group(required=True)
    model.add_argument("--base-model", help="local dir, fsspec URL, hub id or 'smollm2-135m-instruct'")
    model.add_argument(
        "--endpoint", help="an OpenAI-compatible endpoint: a YAML/JSON file or an inline JSON object"
    )
    evaluate.add_argument("--adapter", help="LoRA adapter dir or fsspec URL (with --base-model)")
    evaluate.add_argument(
        "--few-shot",
        action="store_true",
        help="answer with ICL shots whatever the eval type (an icl champion)",
    )
    evaluate.add_argument("--candidate-id", help="the candidate this evaluation belongs to (recorded)")
    evaluate.add_argument(
        "--evaluation-config",
        help="evaluation settings: a YAML/JSON file, or a JSON object inline (default: the defaults)",
    )
    evaluate.set_defaults(handler=_evaluate)

    demo = commands.add_parser("demo", help="the embedded default: demo traffic and the one-command demo")
    demo_commands = demo.add_subparsers(required=True)
    seed = demo_commands.add_parser("seed", help="write demo traffic into the log store")
    seed.add_argument("--days", type=int, default=7)
    seed.add_argument("--records-per-day", type=int, default=2000)
    seed.add_argument("--seed", type=int, default=0)
    seed.add_argument("--now", type=_aware_datetime, help="pretend it is this moment (default: now)")
    seed.add_argument(
        "--workload", action="append", dest="workloads", help="repeatable; default: all demo ones"
    )
    seed.add_argument(
        "--drift-day",
        type=int,
        help="the seeded day (1 = the oldest) from which the router's backend API has changed "
        "(a tool renamed, a required parameter added, a new tool); default: no change",
    )
    seed.add_argument(
        "--pii-rate",
        type=float,
        help="share of conversations with a planted e-mail address, phone, card number or IP address, "
        "which validation scrubs (default: flywheel.demo.traffic.PII_RATE, 0.05)",
    )
    seed.set_defaults(handler=_demo_seed)
    run = demo_commands.add_parser("run", help="start local services, seed, run the nightly DAGs, summarise")
    run.add_argument("--days", type=int, default=7)
    run.add_argument("--records-per-day", type=int, default=2000)
    run.add_argument(
        "--nights", type=int, default=2, help="DAG runs, one per night, ending with the latest (default: 2)"
    )
    run.add_argument("--now", type=_aware_datetime, help="pretend it is this moment (default: now)")
    run.add_argument(
        "--workload",
        action="append",
        dest="workloads",
        help="repeatable; default: customer_support_router (bfcl_live_assistant has demo traffic too)",
    )
    run.set_defaults(handler=_demo_run)
    scenario = demo_commands.add_parser(
        "scenario",
        help="two weeks of router traffic with an API change, replayed by a real Airflow (backfill); "
        "writes the timeline report",
    )
    scenario.add_argument("--days", type=int, default=14, help="nights seeded and run (default: 14)")
    scenario.add_argument(
        "--drift-day",
        type=int,
        default=8,
        help="the seeded day (1 = the oldest) from which the router's backend API has changed (default: 8)",
    )
    scenario.add_argument("--records-per-day", type=int, default=2000)
    scenario.add_argument(
        "--model",
        choices=["smollm2", "tiny"],
        default="smollm2",
        help="smollm2: the real SmolLM2-135M (up to an hour); tiny: a tiny random model, to see the "
        "mechanics in minutes",
    )
    scenario.add_argument(
        "--timeout-minutes", type=float, default=120, help="how long to wait for every night (default: 120)"
    )
    scenario.add_argument(
        "--parallelism",
        type=int,
        default=3,
        help="task processes Airflow's executor runs at once (default: 3)",
    )
    scenario.set_defaults(handler=_demo_scenario)

    bench = commands.add_parser("bench", help="benchmarks that print JSON").add_subparsers(required=True)
    etl = bench.add_parser("etl", help="seed N records into a fresh local log store and time extraction")
    etl.add_argument("--records", type=int, required=True)
    etl.add_argument("--page-size", type=int, default=1000)
    etl.add_argument("--json", action="store_true", help="print only the JSON result")
    etl.set_defaults(handler=_bench_etl)
    data = bench.add_parser("data", help="time validation, scrubbing, de-duplication and splits on N records")
    data.add_argument("--records", type=int, required=True)
    data.add_argument("--json", action="store_true", help="print only the JSON result")
    data.set_defaults(handler=_bench_data)
    day = bench.add_parser(
        "day",
        help="a day of N demo records through the files log source: time and peak RSS of generating, "
        "extracting and validating it, each stage in its own process",
    )
    day.add_argument("--records", type=int, required=True, help="records the day holds (e.g. 1000000)")
    day.add_argument("--page-size", type=int, default=1000, help="records per extraction page")
    day.add_argument("--json", action="store_true", help="print only the JSON result")
    day.set_defaults(handler=_bench_day)
    bench_train = bench.add_parser(
        "train", help="time our LoRA trainer (and with prefix gradients) against a plain transformers Trainer"
    )
    bench_train.add_argument("--model", required=True, help="local checkpoint dir or 'smollm2-135m-instruct'")
    bench_train.add_argument(
        "--dataset", required=True, help="dataset URI (directory with train.jsonl, validation.jsonl)"
    )
    bench_train.add_argument("--steps", type=int, default=2, help="optimizer steps per side (default: 2)")
    bench_train.add_argument("--batch-size", type=int, default=16, help="sequences per step (default: 16)")
    bench_train.add_argument(
        "--micro-batch-size", type=int, default=4, help="sequences per forward/backward pass (default: 4)"
    )
    bench_train.add_argument(
        "--max-seq-length", type=int, default=2048, help="tokens per example at most (default: 2048)"
    )
    bench_train.add_argument(
        "--peak-tflops", type=float, default=989.0, help="accelerator peak for the MFU (default: H100 bf16)"
    )
    bench_train.add_argument("--json", action="store_true", help="print only the JSON result")
    bench_train.set_defaults(handler=_bench_train)
    bench_decision = bench.add_parser(
        "decision", help="simulate the decision policy: A/A false promotions and the power of +5 points"
    )
    bench_decision.add_argument("--workload", help="whose decision policy (default: the first configured)")
    bench_decision.add_argument("--trials", type=int, default=2000, help="simulated comparisons per scenario")
    bench_decision.add_argument("--seed", type=int, default=0)
    bench_decision.add_argument("--json", action="store_true", help="print only the JSON result")
    bench_decision.set_defaults(handler=_bench_decision)
    bench_eval = bench.add_parser(
        "eval", help="time our evaluator against one-at-a-time model.generate on one dataset"
    )
    bench_eval.add_argument("--model", required=True, help="local checkpoint dir or 'smollm2-135m-instruct'")
    bench_eval.add_argument("--adapter", help="LoRA adapter dir or fsspec URL (optional)")
    bench_eval.add_argument("--dataset", required=True, help="dataset URI (directory with evaluation.jsonl)")
    bench_eval.add_argument("--examples", type=int, default=32, help="evaluation examples (default: 32)")
    bench_eval.add_argument("--max-new-tokens", type=int, default=64, help="answer limit (default: 64)")
    bench_eval.add_argument("--batch-size", type=int, default=8, help="our batch size (default: 8)")
    bench_eval.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="the weights' dtype, both sides (evaluation's generation.precision; default: auto)",
    )
    bench_eval.add_argument("--json", action="store_true", help="print only the JSON result")
    bench_eval.set_defaults(handler=_bench_eval)
    return parser


def _aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _config_check(args: argparse.Namespace) -> int:
    from flywheel.config import default_config_path
    from flywheel.evaluate.runner import describe

    path = args.file or args.config or default_config_path()
    config = load_config(path)
    print(f"{path}: compute backend {config.compute.backend}")
    for workload in config.workloads:
        clients = ",".join(workload.client_ids) if workload.client_ids else "all clients"
        candidates = ", ".join(f"{c.candidate_id}={c.base_model}" for c in workload.training.candidates)
        where = workload.log_source.location
        print(f"  {workload.dag_id}: {where} ({clients}), schedule {workload.schedule!r}")
        print(f"    candidates: {candidates}")
        champion = workload.evaluation.champion
        shown = "none" if champion is None else describe(champion)
        print(f"    evaluation: {', '.join(workload.evaluation.eval_types)} per candidate; champion: {shown}")
        policy = workload.decision
        channels = ["local sink"] * workload.alerts.local_sink + [c.type for c in workload.alerts.channels]
        print(
            f"    decision: {policy.primary_metric}, alpha {policy.alpha}, floor {policy.floor}, "
            f"min {policy.min_examples} examples; deploy: {workload.deploy.type}; "
            f"alerts: {', '.join(channels) or 'none'}"
        )
    print(f"OK: {len(config.workloads)} workload(s)")
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flywheel.config_reference import COMMAND, render_reference

    text = render_reference()
    if args.check:
        if Path(args.check).read_text(encoding="utf-8") != text:
            print(
                f"{args.check} is out of date with the configuration models: run `{COMMAND}`", file=sys.stderr
            )
            return 1
        print(f"{args.check}: up to date")
    elif args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from flywheel.db.engine import get_engine
    from flywheel.db.migrate import upgrade

    engine = get_engine(load_config(args.config).metadata)
    revision = upgrade(engine)
    print(f"metadata database {engine.url.render_as_string(hide_password=True)} at revision {revision}")
    return 0


def _registry_show(args: argparse.Namespace) -> int:
    from flywheel.deliver import registry

    config = load_config(args.config)
    workload_id = config.workload(args.workload).workload_id
    current = registry.champion(config.metadata, workload_id)
    moves = registry.history(config.metadata, workload_id)
    known = registry.versions(config.metadata, workload_id)
    if args.json:
        _print_json(
            {
                "workload_id": workload_id,
                "champion": current.to_dict() if current else None,
                "history": [m.to_dict() for m in moves],
                "versions": [v.to_dict() for v in known],
            }
        )
        return 0
    print(f"{workload_id}: champion {_describe_version(current) if current else 'none yet'}")
    print("\nhistory of the champion alias (each version held it until the next row):")
    if not moves:
        print("  (no moves)")
    for move in moves:
        previous = f"v{move.previous_version}" if move.previous_version else "none"
        skipped = (
            (move.deployment or {}).get("by") if (move.deployment or {}).get("status") == "skipped" else None
        )
        print(
            f"  {move.created_at:%Y-%m-%d %H:%M:%S} UTC  {move.action:<14} v{move.version} (was {previous})  "
            f"by {move.actor}: {move.reason}" + (f"  [not deployed: {skipped}]" if skipped else "")
        )
    print("\nregistered versions:")
    if not known:
        print("  (none)")
    for version in known:
        marker = "*" if current and version.id == current.id else " "
        created = f"{version.created_at:%Y-%m-%d}"
        print(f" {marker}{_describe_version(version)}  dataset {version.dataset_id}, {created}")
    return 0


def _registry_rollback(args: argparse.Namespace) -> int:
    from flywheel.deliver import registry

    config = load_config(args.config)
    workload = config.workload(args.workload)
    move = _registry_call(
        lambda hook: registry.rollback(
            config.metadata,
            workload.workload_id,
            actor=_actor(args),
            reason=args.reason,
            before_commit=hook,
            store=_store(config),
        ),
        workload,
        args,
    )
    if move is None:
        return 1
    print(f"{workload.workload_id}: champion is v{move.version} again (was v{move.previous_version})")
    return 0


def _registry_promote(args: argparse.Namespace) -> int:
    from flywheel.deliver import registry

    config = load_config(args.config)
    workload = config.workload(args.workload)
    move = _registry_call(
        lambda hook: registry.promote(
            config.metadata,
            workload.workload_id,
            args.version,
            actor=_actor(args),
            reason=args.reason,
            action="manual_promote",
            before_commit=hook,
            store=_store(config),
        ),
        workload,
        args,
    )
    if move is None:
        return 1
    previous = f"v{move.previous_version}" if move.previous_version else "none"
    print(f"{workload.workload_id}: champion is v{move.version} (was {previous})")
    return 0


def _registry_call(move: Callable[[Any], Any], workload: Any, args: argparse.Namespace) -> Any:
    """Move an alias with the deploy hook (unless --no-deploy, which the audit row then records); print a
    failure and return None."""
    from flywheel.deliver.deploy import deploy_hook, skipped_deploy
    from flywheel.deliver.registry import RegistryError
    from flywheel.errors import DeployError

    deployment: dict[str, Any] = {}
    if args.no_deploy:
        hook = skipped_deploy(workload.deploy, "--no-deploy")
    else:
        hook = deploy_hook(workload.deploy, results=deployment)
    try:
        result = move(hook)
    except (RegistryError, DeployError) as exc:
        print(f"error: {exc} (the registry is unchanged)", file=sys.stderr)
        return None
    if deployment:
        print(f"deployed: {json.dumps(deployment, default=str)}")
    return result


def _store(config: Any) -> Any:
    """The artifact store, against which promotion checks a version's committed adapter."""
    from flywheel.storage import ArtifactStore

    return ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)


def _actor(args: argparse.Namespace) -> str:
    import getpass

    return args.actor or getpass.getuser()


def _describe_version(version: Any) -> str:
    adapter = f" + adapter {version.adapter_uri}" if version.adapter_uri else ""
    parent = f", warm-started from v{version.parent_version}" if version.parent_version is not None else ""
    model = f"{version.base_model}{adapter}{parent}"
    return f"v{version.version} ({version.candidate_id}/{version.eval_type}: {model})"


def _extract(args: argparse.Namespace) -> int:
    from flywheel.context import RunContext
    from flywheel.extract.tasks import extract

    ctx = RunContext.of(
        load_config(args.config),
        args.workload_id,
        interval_start=args.start,
        interval_end=args.end,
        dag_run_id=f"cli__{args.start.isoformat()}__{datetime.now(UTC):%Y%m%dT%H%M%S}",
    )
    summary = extract(ctx, page_size=args.page_size, client_ids=args.client_ids)
    _print_json(summary)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flywheel.storage import ArtifactStore
    from flywheel.validate.day import validate_jsonl

    config = load_config(args.config)
    workload = config.workload(args.workload) if args.workload else config.workloads[0]
    out = Path(args.out).resolve()
    result = validate_jsonl(
        Path(args.input),
        ArtifactStore(str(out)),
        workload_id=workload.workload_id,
        start=args.start,
        end=args.end,
        rules=workload.data_quality,
        source=workload.log_source,
        build_docs=not args.no_docs,
    )
    summary = result.to_dict()
    (out / "manifest.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_json(summary)
    if not result.success:
        print(f"batch failed: {', '.join(result.failed_expectations)}", file=sys.stderr)
    return 0 if result.success else 1


def _train(args: argparse.Namespace) -> int:
    from flywheel.jobs import EXIT_CONFIG, clear_outputs, load_settings, write_error
    from flywheel.train.trainer import JOB_OUTPUTS, run_training_job

    try:
        settings = load_settings(args.training_config, TrainingConfig, "--training-config")
        if args.parent_version is not None and args.init_adapter is None:
            raise ConfigError("--parent-version names the champion of an --init-adapter; none given")
    except ConfigError as exc:
        # The orchestrator reads the failure from the output URI, whatever stage it happened in, and
        # must not find an earlier attempt's result.json next to it.
        clear_outputs(args.output, JOB_OUTPUTS)
        write_error(args.output, exc, EXIT_CONFIG)
        raise
    if args.max_steps is not None:
        settings = settings.model_copy(update={"max_steps": args.max_steps})
    return run_training_job(
        args.dataset,
        args.base_model,
        settings,
        args.output,
        init_adapter=args.init_adapter,
        parent_version=args.parent_version,
    )


def _evaluate(args: argparse.Namespace) -> int:
    from flywheel.config import EndpointConfig, EvaluationConfig, ModelConfig
    from flywheel.evaluate.runner import JOB_OUTPUTS, run_evaluation_job
    from flywheel.jobs import EXIT_CONFIG, clear_outputs, load_settings, write_error

    try:
        settings = load_settings(args.evaluation_config, EvaluationConfig, "--evaluation-config")
        endpoint = load_settings(args.endpoint, EndpointConfig, "--endpoint") if args.endpoint else None
        model = _model_config(
            ModelConfig,
            base_model=args.base_model,
            adapter=args.adapter,
            endpoint=endpoint,
            few_shot=args.few_shot,
        )
    except ConfigError as exc:
        clear_outputs(args.output, JOB_OUTPUTS)
        write_error(args.output, exc, EXIT_CONFIG)
        raise
    return run_evaluation_job(
        args.dataset, model, args.eval_type, settings, args.output, candidate_id=args.candidate_id
    )


def _model_config(model_class: Any, **fields: Any) -> Any:
    from pydantic import ValidationError

    from flywheel.config import format_validation_error

    try:
        return model_class(**fields)
    except ValidationError as exc:
        raise ConfigError(f"invalid model arguments\n{format_validation_error(exc)}") from None


def _demo_seed(args: argparse.Namespace) -> int:
    from flywheel.demo.seed import SeedError, seed_logs

    try:
        report = seed_logs(
            load_config(args.config),
            days=args.days,
            records_per_day=args.records_per_day,
            now=args.now,
            seed=args.seed,
            workloads=args.workloads,
            drift_day=args.drift_day,
            **({} if args.pii_rate is None else {"pii_rate": args.pii_rate}),
        )
    except SeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_json(report.to_dict())
    return 0


def _demo_run(args: argparse.Namespace) -> int:
    from flywheel.demo.runner import run_demo

    return run_demo(
        args.config,
        days=args.days,
        records_per_day=args.records_per_day,
        now=args.now,
        workloads=args.workloads,
        nights=args.nights,
    )


def _demo_scenario(args: argparse.Namespace) -> int:
    from flywheel.demo.scenario import run_scenario

    return run_scenario(
        args.config,
        days=args.days,
        drift_day=args.drift_day,
        records_per_day=args.records_per_day,
        model=args.model,
        timeout_minutes=args.timeout_minutes,
        parallelism=args.parallelism,
    )


def _bench_etl(args: argparse.Namespace) -> int:
    from flywheel.bench import bench_etl

    result = bench_etl(records=args.records, page_size=args.page_size, quiet=args.json)
    print(json.dumps(result))
    return 0


def _bench_data(args: argparse.Namespace) -> int:
    from flywheel.bench import bench_data

    print(json.dumps(bench_data(records=args.records, quiet=args.json)))
    return 0


def _bench_day(args: argparse.Namespace) -> int:
    from flywheel.bench import bench_day

    print(json.dumps(bench_day(records=args.records, page_size=args.page_size, quiet=args.json)))
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from flywheel.train.bench import BenchSideKilledError, bench_train, summarize

    try:
        result = bench_train(
            args.model,
            args.dataset,
            steps=args.steps,
            batch_size=args.batch_size,
            micro_batch_size=args.micro_batch_size,
            max_seq_length=args.max_seq_length,
            peak_tflops=args.peak_tflops,
            quiet=args.json,
        )
    except BenchSideKilledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else summarize(result))
    return 0


def _bench_decision(args: argparse.Namespace) -> int:
    from flywheel.decide.simulation import bench_decision

    config = load_config(args.config)
    workload = config.workload(args.workload) if args.workload else config.workloads[0]
    result = {"workload_id": workload.workload_id} | bench_decision(
        workload.decision, trials=args.trials, seed=args.seed
    )
    if args.json:
        print(json.dumps(result))
        return 0
    for name, scenario in result.items():
        if isinstance(scenario, dict):
            print(
                f"{name:<34} promotion rate {scenario['promotion_rate']:.4f} "
                f"(± {scenario['standard_error']:.4f}, {scenario['trials']} trials)"
            )
    return 0


def _bench_eval(args: argparse.Namespace) -> int:
    from flywheel.evaluate.bench import bench_eval, summarize

    result = bench_eval(
        args.model,
        args.dataset,
        adapter=args.adapter,
        examples=args.examples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        precision=args.precision,
        quiet=args.json,
    )
    print(json.dumps(result) if args.json else summarize(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
