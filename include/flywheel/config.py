"""Typed configuration of the flywheel: one YAML file describes every workload.

The file is data, not code: adding a workload means adding a block under ``workloads``, and the DAG
factory in ``dags/`` turns each block into its own DAG. Values may reference environment variables
as ``${NAME}`` or ``${NAME:-default}``; ``FLYWHEEL_HOME`` defaults to ``<project root>/.flywheel``.

Loading never raises a raw pydantic or YAML traceback: :func:`load_config` raises
:class:`ConfigError` whose message names the file, the offending key and the reason.
"""

from __future__ import annotations

import itertools
import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from flywheel.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (``include/flywheel/config.py`` -> ``.``); the package is installed editable."""

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "include" / "config" / "flywheel.yaml"

WORKLOAD_ID_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
"""Workload ids become DAG ids and path segments: lower-case letters, digits and underscores."""

# A reference whose default holds no further reference; nested ones expand innermost first.
_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>(?:[^${}]|\$(?!\{))*))?\}")

# The digest of an image reference (`name@sha256:...`), as registries report it.
_IMAGE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def _refuse_url_credentials(url: str, instead: str) -> None:
    """ValueError when ``url`` carries credentials (``user:password@``, a token in its query)."""
    from flywheel.redact import url_credentials

    found = url_credentials(url)
    if found:
        raise ValueError(
            f"must not carry credentials ({', '.join(found)}): URLs are written to logs, error.json, "
            f"reports and alerts; {instead} (an Airflow connection or a Kubernetes secret)"
        )


class _Strict(BaseModel):
    """Base for config blocks: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginConfig(_Strict):
    """A block whose ``type`` picks its implementation from a registry (:mod:`flywheel.plugins`).

    The implementation subclasses this model and declares its own options as fields, beside its code
    (a deploy hook, an alert channel): the block is validated by the model that ``type`` names, so a
    user's own implementation, named by dotted path, checks its own options.
    """

    # Validators are built on first use: a config names one implementation of the several defined.
    model_config = ConfigDict(defer_build=True)

    type: str


def by_type(registry: str) -> WrapValidator:
    """Validation of a :class:`PluginConfig` block by the model its ``type`` names in ``registry``.

    ``registry`` is the import path of the :class:`~flywheel.plugins.Registry`, imported when a config
    is validated (its implementations import this module); its built-ins live in modules that import
    nothing heavy. Errors name the key: ``<block>.type`` for an unknown type, ``<block>.<option>`` for
    a bad option.
    """

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> PluginConfig:
        if not isinstance(value, dict):
            return handler(value)  # an instance passes as it is
        kind = value.get("type")
        if not isinstance(kind, str):
            # Missing or not text: that is the error, not the options no implementation declared.
            return handler({"type": kind} if "type" in value else {})
        from flywheel.plugins import PluginNotFoundError, import_object

        try:
            model = import_object(registry).resolve(kind)
        except PluginNotFoundError as exc:
            error = InitErrorDetails(type="value_error", loc=("type",), input=kind, ctx={"error": exc})
            raise ValidationError.from_exception_data(PluginConfig.__name__, [error]) from None
        return model.model_validate(value)

    validate.registry = registry  # type: ignore[attr-defined]  # how flywheel.config_reference finds it
    return WrapValidator(validate)


def _elasticsearch_by_default(value: Any) -> Any:
    # Configs written before log sources had types are Elasticsearch blocks without a ``type``.
    if isinstance(value, dict) and "type" not in value:
        return {"type": "elasticsearch", **value}
    return value


LogSourceConfig = Annotated[
    SerializeAsAny[PluginConfig],
    by_type("flywheel.extract.sources:LOG_SOURCES"),
    BeforeValidator(_elasticsearch_by_default),
]
"""A workload's ``log_source`` block: a :class:`flywheel.extract.sources.LogSource` (``elasticsearch``, the
default when ``type`` is absent, ``files`` or the dotted path of the user's own) with its options."""


class AirflowDefaults(_Strict):
    """Organisation defaults applied to every workload DAG."""

    owner: str = Field("flywheel", description="DAG owner shown in the UI.")
    retries: int = Field(2, ge=0, le=10, description="Retries per task after the first try.")
    retry_delay_minutes: float = Field(
        5.0, gt=0, description="Delay before the first retry; it doubles with every try (with jitter)."
    )
    max_retry_delay_minutes: float = Field(60.0, gt=0, description="Upper bound of the retry delay.")
    execution_timeout_minutes: float = Field(
        120.0,
        gt=0,
        description="Time limit of each task (Airflow's execution_timeout); the train and evaluate tasks "
        "get their job's time limit (compute.train_timeout_minutes, compute.evaluate_timeout_minutes) "
        "plus a margin instead.",
    )
    tags: list[str] = Field(
        default_factory=lambda: ["flywheel"], description="Tags of every DAG, besides each workload's own."
    )


class PiiConfig(_Strict):
    """PII scrubbing of clean records before they leave the ETL (on by default)."""

    enabled: bool = Field(True, description="Scrub PII from clean records before they are written.")
    kinds: list[Literal["email", "phone", "card", "ip"]] = Field(
        default_factory=lambda: ["email", "phone", "card", "ip"],
        min_length=1,
        description="Kinds replaced by placeholders consistent within a conversation (<EMAIL_1> ...).",
    )


class SplitsConfig(_Strict):
    """How de-duplicated records are split into train / validation / evaluation.

    A record's split is a function of ``salt`` and its conversation key alone: changing the salt or
    the fractions reshuffles every record, so treat them as fixed once a workload has datasets.
    """

    salt: str = Field(
        "flywheel-v1", min_length=1, description="Salt of the hash that places each conversation in a split."
    )
    evaluation_fraction: float = Field(
        0.15, gt=0, lt=0.5, description="Share of the key space that is evaluation."
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of the key space that is validation."
    )
    evaluation_target: int = Field(500, ge=1, description="Records in the fresh evaluation set at most.")
    min_evaluation_per_label: int = Field(5, ge=0, description="Per tool (and no-tool) when available.")
    min_label_examples: int = Field(20, ge=1, description="A label with fewer records is not stratified.")
    max_train_records: int | None = Field(20_000, ge=1, description="Newest records kept; null: no limit.")
    golden_size: int = Field(0, ge=0, description="Frozen golden evaluation set size; 0 disables it.")


class DataQualityConfig(_Strict):
    """Record rules, batch expectations and dataset building for one workload."""

    max_record_bytes: int = Field(256_000, ge=1_000, description="Larger records are quarantined.")
    min_clean_records: int = Field(50, ge=0, description="Fewer clean records in a day fail the batch.")
    max_quarantine_rate: float = Field(
        0.2, ge=0, le=1, description="A larger share of the day's records quarantined fails the batch."
    )
    max_duplicate_rate: float = Field(
        0.3,
        ge=0,
        le=1,
        description="A larger share of the day's records repeating an earlier conversation fails it.",
    )
    max_tool_shift: float = Field(
        0.5, gt=0, description="KL divergence of today's tool distribution from the previous days'."
    )
    tool_shift_action: Literal["alert", "fail"] = Field(
        "alert",
        description="What a tool shift above max_tool_shift does. 'alert': the batch still passes (its "
        "day enters later baselines and datasets), the day is flagged (tool_shift_exceeded), the "
        "decision alerts (tool_shift) and an on_trigger retrain policy trains: an API change is drift "
        "to learn from, and failing its days would keep it out of every dataset for "
        "shift_baseline_days days. 'fail': the shift fails the batch like any other expectation.",
    )
    shift_baseline_days: int = Field(
        7, ge=1, le=90, description="Passed days before the day whose tool distribution is the baseline."
    )
    retired_tools: Literal["keep", "exclude"] = Field(
        "keep",
        description="What a dataset does with records that offer a tool definition the window's newest "
        "day hardly offers (retired_tool_share): a tool renamed or removed, or its schema changed. "
        "'exclude': they "
        "stay out of training, validation and evaluation, the golden set's included, and the manifest "
        "counts them (retired_tools), so the champion is judged and challengers trained on the API as "
        "it is now; for agents that offer one tool catalogue. 'keep': for workloads whose requests "
        "bring their own tools.",
    )
    retired_tool_share: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="With retired_tools exclude: a tool definition offered by fewer than this share of "
        "the newest day's records is retired too, so that records logged late from before a release, "
        "or a client not yet updated, do not keep the old API current.",
    )
    pii: PiiConfig = Field(default_factory=PiiConfig)
    splits: SplitsConfig = Field(default_factory=SplitsConfig)

    @model_validator(mode="after")
    def _fractions_leave_room_for_training(self) -> DataQualityConfig:
        if self.splits.evaluation_fraction + self.splits.validation_fraction >= 0.9:
            raise ValueError("splits: evaluation_fraction + validation_fraction must stay below 0.9")
        return self


class LoraSettings(_Strict):
    """The LoRA adapter trained on top of a frozen base model."""

    r: int = Field(16, ge=1, le=512, description="Rank of the adapter's low-rank matrices.")
    alpha: int = Field(32, ge=1, description="Scaling of the adapter's update (alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt; 'all-linear' adapts every linear layer."
    )
    top_layers: int | None = Field(
        None,
        ge=1,
        description="Adapt only the last N transformer layers (null: every layer). The layers below "
        "stay frozen, so training runs no backward pass through them and a shared prefix's pass "
        "through them is computed once per job.",
    )
    loraplus_lr_ratio: float = Field(
        1.0,
        ge=1,
        description="LoRA+: the learning rate of the adapter's B matrices over its A matrices' "
        "(learning_rate); 1 trains both alike (peft's create_loraplus_optimizer).",
    )


class TrainingConfig(_Strict):
    """Hyper-parameters of one fine-tuning job (``flywheel train --config``)."""

    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; null: run `epochs` epochs.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training split when max_steps is null.")
    batch_size: int = Field(
        8, ge=1, description="Sequences per batch (one optimizer step without accumulation)."
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="At most this many sequences per forward/backward pass (gradients accumulate over "
        "a batch's micro-batches: same effective batch); null: as many as the memory budget allows.",
    )
    gradient_accumulation: int = Field(
        1, ge=1, description="Batches whose gradients make one optimizer step."
    )
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate of the schedule.")
    lr_schedule: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="Decay of the learning rate after warm-up."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_seq_length: int = Field(
        2048,
        ge=32,
        description="Tokens per training example at most; a longer prompt loses its oldest tokens.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    init_from: Literal["base", "champion"] = Field(
        "base",
        description="Where the adapter starts: a fresh LoRA, or (planned by the DAG) the champion's adapter "
        "when the champion is a fine-tuned adapter of the same base model, else a fresh LoRA.",
    )
    warm_start_steps: int | None = Field(
        None,
        ge=1,
        description="Optimizer steps of a run that starts from the champion's adapter (it only has to "
        "learn the new window's traffic); null: as many as a fresh start (max_steps or epochs).",
    )
    warm_start_learning_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Peak learning rate of a run that starts from the champion's adapter; null: "
        "learning_rate. A trained adapter restarted at a fresh start's rate can lose what it learned "
        "(docs/training.md, Warm start).",
    )
    warm_start_on_tool_change: bool = Field(
        False,
        description="Whether a run whose dataset offers tools the champion's dataset did not "
        "(tool_set_changed: an API change) starts from the champion's adapter too, for tool_change_steps "
        "at tool_change_learning_rate. false: it trains a fresh LoRA with a fresh start's steps and "
        "learning rate (docs/training.md, Warm start).",
    )
    tool_change_steps: int | None = Field(
        None,
        ge=1,
        description="Optimizer steps of a warm start after a tool-set change (warm_start_on_tool_change): "
        "the adapter relearns the changed tools, more than a night's refinement; null: warm_start_steps.",
    )
    tool_change_learning_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Peak learning rate of a warm start after a tool-set change; null: "
        "warm_start_learning_rate.",
    )
    warm_start_optimizer: Literal["resume", "fresh"] = Field(
        "resume",
        description="A run that starts from the champion's adapter: 'resume' continues the AdamW moments "
        "saved with it, so each weight moves as far as its gradients' history warrants; 'fresh' starts "
        "new moments, whose first steps move every weight by about the learning rate, noise included. "
        "An adapter saved without moments starts fresh.",
    )
    label_balance: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Each epoch draws label L (the answer's first tool, or no_call) in proportion to "
        "count(L) ** label_balance: 1 keeps the data's mix, 0 draws every label equally often; no_call is "
        "never drawn less often than the data has it.",
    )
    label_balance_by: Literal["tool", "call_shape"] = Field(
        "tool",
        description="What a label of label_balance is: 'tool', the answer's first tool (or no_call); "
        "'call_shape', that tool with the names of its arguments (track_shipment(carrier, "
        "tracking_number)), so the rarer form of a call with optional arguments is drawn as its own label.",
    )
    opening_tokens: int = Field(
        0,
        ge=0,
        description="The first N tokens of every answer (whether it calls a tool, and which: "
        '\'<tool_call>{"name": "track_shipment"\' is 14 SmolLM2 tokens) weigh opening_weight in the '
        "training loss; 0: every token weighs 1. The validation loss stays unweighted.",
    )
    opening_weight: float = Field(1.0, ge=1.0, le=100.0, description="The weight of opening_tokens.")
    seed: int = Field(0, description="Seed of the adapter's initialisation and the data order.")
    eval_every_steps: int = Field(50, ge=1, description="Validation loss every N optimizer steps.")
    max_validation_examples: int | None = Field(
        None, ge=1, description="Validation loss on the split's first N examples; null: all of them."
    )
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Stop after N evaluations without a better validation loss; null: never."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, more time."
    )
    prefix_gradient: Literal["exact", "none"] = Field(
        "exact",
        description="A batch's shared prefix (system message and tool schemas) runs once per batch. "
        "'exact': the loss's gradient flows through the prefix's keys and values too (the prefix's "
        "backward pass runs once per batch). 'none': the prefix is computed with the current adapter "
        "but held without gradients: the same loss, a gradient without the prefix's share, and no "
        "backward pass over the prefix (an approximation; docs/training.md measures it).",
    )
    prefix_refresh_steps: int = Field(
        1,
        ge=1,
        description="Under prefix_gradient 'none': recompute the shared prefix's keys and values with the "
        "current adapter every N optimizer steps and reuse them for the batches in between. 1: once per "
        "step (exact: a step's batches share one adapter). Above 1 the later batches attend to a prefix "
        "computed up to N-1 steps earlier (an approximation; docs/training.md measures it).",
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="auto: bf16 weights on a GPU; on a CPU, bf16 autocast where it has bf16 instructions "
        "(avx512_bf16, AMX), else float32. bfloat16: bf16 weights on a GPU, bf16 autocast on a CPU.",
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=256,
        description="Memory a CPU job may use; batches that would not fit run as micro-batches. "
        "null: 85% of the machine's or the container's memory.",
    )
    log_every_steps: int = Field(10, ge=1, description="Training loss logged every N optimizer steps.")

    @model_validator(mode="after")
    def _prefix_refresh_without_prefix_gradient(self) -> TrainingConfig:
        if self.prefix_refresh_steps > 1 and self.prefix_gradient == "exact":
            raise ValueError(
                "prefix_refresh_steps: above 1 needs prefix_gradient 'none' (an exact prefix gradient "
                "recomputes the prefix for every batch)"
            )
        return self

    def after_tool_change(self) -> TrainingConfig:
        """These settings for a warm start after a tool-set change: its steps and learning rate are
        ``tool_change_steps`` and ``tool_change_learning_rate`` where they are set."""
        return self.model_copy(
            update={
                "warm_start_steps": self.tool_change_steps or self.warm_start_steps,
                "warm_start_learning_rate": self.tool_change_learning_rate or self.warm_start_learning_rate,
            }
        )


CANDIDATE_ID_PATTERN = r"^[a-z0-9]([a-z0-9_.-]{0,38}[a-z0-9])?$"
"""Candidate ids become path segments, Kubernetes label values and map-index labels: 40 characters at most."""


class CandidateConfig(_Strict):
    """One candidate base model of a workload: the run trains one LoRA adapter on it (a challenger)."""

    candidate_id: Annotated[str, Field(pattern=CANDIDATE_ID_PATTERN)] = Field(
        ..., description="Unique within the workload: a path segment, a pod label and a map index."
    )
    base_model: str = Field(
        ...,
        min_length=1,
        description="Checkpoint dir, fsspec URL, hub id or alias ('smollm2-135m-instruct').",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the workload's training settings for this candidate."
    )


class RetrainConfig(_Strict):
    """When a workload's run trains its candidates (docs/training.md, "When a run trains").

    A run that does not train still evaluates the champion (and each candidate's base / icl variants)
    on its fresh data and decides; it records why it trained or not in its ``train`` stage summary.
    """

    policy: Literal["always", "on_trigger", "every_n_days"] = Field(
        "always",
        description="always: every run trains. on_trigger: only when there is no champion, the previous "
        "decision was a drift or data-quality alert, the champion's latest score on fresh data is below "
        "its floor, or the dataset has tools the champion was not trained on. every_n_days: when there "
        "is no champion or the last training is every_n_days days old.",
    )
    every_n_days: int | None = Field(
        None, ge=1, le=365, description="Days from one training to the next under policy every_n_days."
    )

    @model_validator(mode="after")
    def _every_n_days_with_its_policy(self) -> RetrainConfig:
        if self.policy == "every_n_days" and self.every_n_days is None:
            raise ValueError("every_n_days: required when policy is every_n_days")
        if self.policy != "every_n_days" and self.every_n_days is not None:
            raise ValueError(f"every_n_days: only used with policy every_n_days, not {self.policy!r}")
        return self


class WorkloadTrainingConfig(_Strict):
    """What a workload's run trains: shared settings, the candidate base models and when to train."""

    settings: TrainingConfig = Field(default_factory=TrainingConfig)
    candidates: list[CandidateConfig] = Field(
        default_factory=lambda: [
            CandidateConfig(candidate_id="smollm2-135m", base_model="smollm2-135m-instruct")
        ],
        min_length=1,
    )
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

    @model_validator(mode="after")
    def _candidates_valid(self) -> WorkloadTrainingConfig:
        seen: set[str] = set()
        for i, candidate in enumerate(self.candidates):
            if candidate.candidate_id in seen:
                raise ValueError(f"candidates[{i}].candidate_id: {candidate.candidate_id!r} is defined twice")
            if candidate.candidate_id == "champion":
                raise ValueError(f"candidates[{i}].candidate_id: 'champion' names the production model")
            seen.add(candidate.candidate_id)
            try:
                self.settings_for(candidate)
            except ValidationError as exc:
                problems = "; ".join(
                    f"candidates[{i}].settings.{_dotted(e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_url=False)
                )
                raise ValueError(problems) from None
        return self

    def settings_for(self, candidate: CandidateConfig) -> TrainingConfig:
        """The workload's settings with the candidate's overrides applied (nested blocks merged)."""
        return TrainingConfig.model_validate(deep_merge(self.settings.model_dump(), candidate.settings))

    def candidate(self, candidate_id: str) -> CandidateConfig:
        """The candidate with this id; ConfigError naming the known ids otherwise."""
        for candidate in self.candidates:
            if candidate.candidate_id == candidate_id:
                return candidate
        known = ", ".join(c.candidate_id for c in self.candidates)
        raise ConfigError(f"unknown candidate_id {candidate_id!r}; configured: {known}")


EVAL_TYPES = ("base", "icl", "customized", "champion")
"""Evaluation types: a candidate's base model zero-shot, few-shot (``icl``), with its fine-tuned adapter
(``customized``), and the production model (``champion``)."""

EvalType = Literal["base", "icl", "customized", "champion"]


class EndpointConfig(_Strict):
    """An OpenAI-compatible chat-completions endpoint (vLLM, NIM, the teacher, a judge)."""

    base_url: str = Field(
        ..., pattern=r"^https?://", description="API root, e.g. 'http://vllm:8000/v1' (ends before /chat)."
    )
    model: str = Field(..., min_length=1, description="The model name the endpoint serves.")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the API key (a Kubernetes secret in pods); null: none.",
    )
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries of a request after 429, 5xx or timeout.")
    retry_backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles per retry.")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Extra request fields (e.g. vLLM's 'top_k')."
    )

    @field_validator("base_url")
    @classmethod
    def _no_credentials_in_url(cls, value: str) -> str:
        # The URL is shown in logs, error.json, reports and alerts, and travels in job arguments.
        _refuse_url_credentials(value, "put the key in the environment variable named by api_key_env")
        return value


class GenerationConfig(_Strict):
    """How every evaluated model answers: greedy by default, the same limits for every model."""

    max_new_tokens: Literal["auto"] | Annotated[int, Field(ge=1, le=8192)] = Field(
        "auto",
        description="Tokens an answer may take. 'auto': sized from the evaluation set's longest reference "
        "answer (its token length as training formats it, x1.25 + 8), at most max_new_tokens_limit; an "
        "integer is a fixed cap.",
    )
    max_new_tokens_limit: int = Field(
        1024, ge=1, le=8192, description="The largest cap 'auto' may choose (an endpoint's cap under 'auto')."
    )
    stop_after_tool_call: Literal["auto"] | bool = Field(
        "auto",
        description="Local generation: an answer ends as soon as it completes a </tool_call> block. 'auto': "
        "when no reference answer of the evaluation set makes more than one tool call.",
    )
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy decoding.")
    tool_choice: Literal["auto", "required", "none"] = Field(
        "auto", description="Sent to endpoints; local models always choose for themselves ('auto')."
    )
    batch_size: int = Field(8, ge=1, le=512, description="Local generation: sequences decoded together.")
    prefix_cache: bool = Field(
        True, description="Local generation: compute the shared system+tools prefix once per batch group."
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Local generation: the weights' dtype. auto: bf16 on a GPU, and on a CPU with bf16 "
        "instructions (avx512_bf16, AMX), as training's bf16 autocast there; else float32. An adapter is "
        "merged in float32 first.",
    )


class IclConfig(_Strict):
    """Few-shot (ICL) examples: drawn from the training split only, per evaluation example."""

    max_shots: int = Field(3, ge=1, le=32, description="Examples shown before each question at most.")
    token_budget: int = Field(
        1024, ge=16, description="Tokens all shots may take together, counted with the model's tokenizer."
    )
    similarity: Literal["lexical", "embedding"] = Field(
        "lexical", description="How the shots closest to the question are chosen."
    )
    embedding_model: str | None = Field(
        None, description="Local directory of an embedding model; required for similarity 'embedding'."
    )
    pool_size: int = Field(5000, ge=1, description="At most this many training examples are considered.")
    seed: int = Field(0, description="Seed of the tie-breaking between equally similar shots.")
    tokenizer: str | None = Field(
        None,
        description="Model reference whose tokenizer counts the budget when the evaluated model is an "
        "endpoint (a local model always counts with its own).",
    )

    @model_validator(mode="after")
    def _embedding_model_when_used(self) -> IclConfig:
        if self.similarity == "embedding" and not self.embedding_model:
            raise ValueError("embedding_model: required when similarity is 'embedding'")
        return self


class JudgeConfig(_Strict):
    """An LLM judge that rates each answer against the reference (optional, per workload)."""

    endpoint: EndpointConfig
    max_tokens: int = Field(256, ge=8, description="Tokens the judge may write (its reason and rating).")


class EvaluationConfig(_Strict):
    """Settings of one evaluation job (``flywheel evaluate --evaluation-config``)."""

    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    icl: IclConfig = Field(default_factory=IclConfig)
    judge: JudgeConfig | None = None
    max_examples: int | None = Field(
        None, ge=1, description="Evaluate the first N examples (by example id); null: all of them."
    )
    include_golden: bool = Field(
        True, description="Evaluate the workload's frozen golden set too, besides the evaluation split."
    )
    max_generation_error_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Fail the job when more examples than this share got no answer (endpoint errors).",
    )
    metrics: list[str] = Field(
        default_factory=list,
        description="Your own per-example metrics (dotted paths, 'package.module:Name'), computed besides "
        "the built-in ones.",
    )

    @field_validator("metrics")
    @classmethod
    def _metrics_known(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            try:
                _metric(name, per_example=True)
            except ValueError as exc:
                raise ValueError(f"{i}: {exc}") from None
        if len(set(value)) != len(value):
            raise ValueError("lists a metric twice")
        return value


class ModelConfig(_Strict):
    """A model to evaluate: a base model (with an optional LoRA adapter), or an endpoint."""

    base_model: str | None = Field(
        None, min_length=1, description="A model reference, as a candidate's base_model; or set endpoint."
    )
    adapter: str | None = Field(None, min_length=1, description="Adapter directory or fsspec URL.")
    endpoint: EndpointConfig | None = Field(None, description="An endpoint that serves the model instead.")
    few_shot: bool = Field(
        False,
        description="Answer with few-shot examples from the training split, as the icl variant does (a "
        "champion promoted from an icl variant is served, and so evaluated, that way).",
    )

    @model_validator(mode="after")
    def _one_model(self) -> ModelConfig:
        if (self.base_model is None) == (self.endpoint is None):
            raise ValueError("set exactly one of base_model or endpoint")
        if self.adapter is not None and self.base_model is None:
            raise ValueError("adapter: needs base_model (an endpoint serves its adapters itself)")
        return self


class WorkloadEvaluationConfig(_Strict):
    """What a workload's run evaluates: eval types per candidate, the champion, shared settings."""

    settings: EvaluationConfig = Field(default_factory=EvaluationConfig)
    eval_types: list[Literal["base", "icl", "customized"]] = Field(
        default_factory=lambda: ["base", "icl", "customized"],
        min_length=1,
        description="Evaluated for every candidate; 'customized' needs its adapter from this run.",
    )
    eval_types_with_champion: list[Literal["base", "icl", "customized"]] | None = Field(
        None,
        min_length=1,
        description="Evaluated for every candidate instead of eval_types once the run has a champion to "
        "compare with (the registry's, or evaluation.champion); null: eval_types. base and icl tell "
        "whether fine-tuning pays at all; once a champion holds, it is the reference, and leaving them "
        "out saves two evaluations a night.",
    )
    champion: ModelConfig | None = Field(
        None,
        description="The production model while the registry holds no champion for the workload (e.g. "
        "the teacher's endpoint); the registry's champion wins once there is one.",
    )

    @field_validator("eval_types", "eval_types_with_champion")
    @classmethod
    def _eval_types_unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists an eval type twice")
        return value


def _metric(name: str, *, per_example: bool = False, higher_is_better: bool = False) -> str:
    """``name`` if it names a metric (built-in or dotted path) of the required kind; else ValueError.

    The definitions come from :mod:`flywheel.evaluate.metrics`, which is light: no ``evaluate`` import.
    """
    from flywheel.evaluate.metrics import ExampleMetric, get_metric

    metric = get_metric(name)
    if per_example and not isinstance(metric, ExampleMetric):
        raise ValueError(f"{name!r} is a run statistic, not a metric scored per example")
    if higher_is_better and not metric.higher_is_better:
        raise ValueError(f"{name!r} is lower-is-better; the primary metric must be higher-is-better")
    return name


class GuardrailConfig(_Strict):
    """Non-inferiority of the challenger on one metric: it may be worse than the champion by ``margin``.

    For the accuracies and ``parse_error_rate`` the margin is absolute (0.02 = two points) and is
    judged on the paired bootstrap bound of the per-example difference; for ``latency_p95_s`` it is
    relative when ``relative`` is true (0.25 = a p95 at most 25 % above the champion's).
    """

    margin: float = Field(..., ge=0, description="How much worse than the champion the challenger may be.")
    relative: bool = Field(False, description="Margin as a fraction of the champion's value.")


def _default_guardrails() -> dict[str, GuardrailConfig]:
    return {
        "function_name_accuracy": GuardrailConfig(margin=0.02),
        "no_call_accuracy": GuardrailConfig(margin=0.05),
        "parse_error_rate": GuardrailConfig(margin=0.02),
        "latency_p95_s": GuardrailConfig(margin=0.25, relative=True),
    }


class ApproverConfig(_Strict):
    """A person who may answer a promotion's approval request, as Airflow's auth manager knows them (a
    string in ``decision.approvers`` is the id)."""

    id: str = Field(
        ...,
        min_length=1,
        description="The user's id in Airflow's auth manager, which the API server checks the responder "
        "against: the username with the simple auth manager, the numeric user id with FAB.",
    )
    name: str | None = Field(None, min_length=1, description="How the request shows them; null: the id.")


def _approver_from_id(value: Any) -> Any:
    if isinstance(value, str):
        return {"id": value}
    if not isinstance(value, dict):
        raise ValueError(f"must be a user id or a mapping with id and name (got {value!r})")
    return value


class DecisionPolicyConfig(_Strict):
    """How a run decides between the champion and its best challenger (docs/decision.md).

    The challenger must be significantly better on ``primary_metric`` (exact McNemar test on the
    paired per-example outcomes, one-sided at ``alpha`` divided by the number of challengers
    considered) by at least ``min_effect``, reach ``floor``, and stay non-inferior on every guardrail.
    """

    primary_metric: str = Field(
        "function_name_and_args_accuracy",
        description="A higher-is-better per-example metric: a built-in name or the dotted path of your own.",
    )
    alpha: float = Field(0.05, gt=0, le=0.5, description="Significance level of the superiority test.")
    min_effect: float = Field(
        0.02, ge=0, lt=1, description="Smallest improvement of the primary metric worth a promotion."
    )
    floor: float = Field(
        0.5, ge=0, le=1, description="Primary metric a challenger must reach to be promoted."
    )
    champion_floor: float | None = Field(
        None, ge=0, le=1, description="Below this on fresh data the champion has drifted; null: floor."
    )
    min_examples: int = Field(100, ge=1, description="Fewer paired examples: no promotion.")
    guardrails: dict[str, GuardrailConfig] = Field(
        default_factory=_default_guardrails,
        description="Metric (a built-in name or the dotted path of your own) to its non-inferiority margin.",
    )
    bootstrap_resamples: int = Field(
        10_000, ge=100, le=1_000_000, description="Resamples of the paired bootstrap intervals."
    )
    challenger_eval_types: list[Literal["base", "icl", "customized"]] = Field(
        default_factory=lambda: ["base", "icl", "customized"],
        min_length=1,
        description="Variants that may become the challenger.",
    )
    previous_night_wait_minutes: float = Field(
        360,
        ge=0,
        description="How long a night waits for the previous night's decision and promotion before it "
        "trains and evaluates from the current champion anyway (docs/operations.md, nights in order).",
    )
    approval: Literal["none", "required"] = Field(
        "none",
        description="required: a promotion waits for a person to approve it in Airflow (a human-in-the-loop "
        "task between the decision and the promotion; the request goes to the alert channels as "
        "approval_requested). none: a promote decision promotes at once (docs/decision-delivery.md).",
    )
    approval_timeout_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 7,
        description="With approval required: how long a promotion waits for an answer; then it is not "
        "approved (the champion stays, the run stays green, not_approved notifies).",
    )
    approvers: list[Annotated[ApproverConfig, BeforeValidator(_approver_from_id)]] = Field(
        default_factory=list,
        description="With approval required: who may answer (Airflow's API server refuses anyone else), each "
        "a user id or {id, name}. Empty: any user the auth manager lets answer the DAG's required actions.",
    )

    @field_validator("primary_metric")
    @classmethod
    def _primary_metric_known(cls, value: str) -> str:
        return _metric(value, per_example=True, higher_is_better=True)

    @field_validator("guardrails")
    @classmethod
    def _guardrail_metrics_known(cls, value: dict[str, GuardrailConfig]) -> dict[str, GuardrailConfig]:
        for name in value:
            try:
                _metric(name)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value

    @field_validator("approvers")
    @classmethod
    def _approvers_once_each(cls, value: list[ApproverConfig]) -> list[ApproverConfig]:
        ids = [approver.id for approver in value]
        twice = sorted({id_ for id_ in ids if ids.count(id_) > 1})
        if twice:
            raise ValueError(f"listed more than once: {', '.join(twice)}")
        return value

    @model_validator(mode="after")
    def _approvers_need_approval(self) -> DecisionPolicyConfig:
        # Approvers without required approval would suggest a sign-off that never happens.
        if self.approvers and self.approval != "required":
            raise ValueError("approvers: only used when approval is required; set approval: required")
        return self

    @property
    def drift_floor(self) -> float:
        """The primary metric below which the champion counts as drifted."""
        return self.floor if self.champion_floor is None else self.champion_floor


DeployConfig = Annotated[SerializeAsAny[PluginConfig], by_type("flywheel.deliver.deploy:DEPLOY_HOOKS")]
"""A workload's ``deploy`` block: a :class:`flywheel.deliver.deploy.DeployHook` (``none``, ``webhook``,
``vllm`` or the dotted path of the user's own) with its options."""

AlertChannelConfig = Annotated[
    SerializeAsAny[PluginConfig], by_type("flywheel.deliver.channels:ALERT_CHANNELS")
]
"""One of ``alerts.channels``: a :class:`flywheel.deliver.channels.AlertChannel` (``slack``, ``email``,
``webhook`` or the dotted path of the user's own) with its options."""

NotifyEvent = Literal["promote", "alert", "no_change", "task_failure", "approval_requested", "not_approved"]


class AlertsConfig(_Strict):
    """Where a workload's notifications go: Airflow notifier channels and the local sink."""

    channels: list[AlertChannelConfig] = Field(
        default_factory=list, description="Airflow notifier channels, each picked by its type."
    )
    local_sink: bool = Field(
        True, description="Log every notification and write it as JSON under alerts/ in the artifact store."
    )
    notify_on: list[NotifyEvent] = Field(
        default_factory=lambda: ["promote", "alert", "task_failure", "approval_requested", "not_approved"],
        description="Events that notify. approval_requested and not_approved happen only with "
        "decision.approval required: a promotion waits for a person, and was rejected or timed out.",
    )


class TokenPrices(_Strict):
    """A model's price per million tokens, in ``report.prices.currency``."""

    input_per_1m: float = Field(..., ge=0, description="Price of one million input (prompt) tokens.")
    output_per_1m: float = Field(..., ge=0, description="Price of one million output (completion) tokens.")


class StudentPrices(_Strict):
    """What serving a student costs: per million tokens (a hosted endpoint), per hour of compute (your
    own GPUs), or both added up."""

    input_per_1m: float | None = Field(None, ge=0, description="Price of one million input tokens.")
    output_per_1m: float | None = Field(None, ge=0, description="Price of one million output tokens.")
    per_hour: float | None = Field(
        None,
        ge=0,
        description="Price of one hour of the student's serving compute; an evaluation's hours per request "
        "are taken from its throughput (1 / examples per second of its job).",
    )

    @model_validator(mode="after")
    def _priced(self) -> StudentPrices:
        if (self.input_per_1m is None) != (self.output_per_1m is None):
            raise ValueError("set both input_per_1m and output_per_1m, or neither")
        if self.input_per_1m is None and self.per_hour is None:
            raise ValueError("set input_per_1m and output_per_1m, per_hour, or all three")
        return self


class PricesConfig(_Strict):
    """Prices the run report turns into a cost per 1,000 requests, teacher against student."""

    currency: str = Field("USD", min_length=1, max_length=8, description="Shown next to every cost.")
    teacher: TokenPrices = Field(..., description="The teacher's price (the production model of the logs).")
    student: StudentPrices = Field(..., description="The students' price (every evaluated variant).")


class ReportConfig(_Strict):
    """What the run report reads beyond the run's own records (docs/report.md)."""

    prices: PricesConfig | None = Field(
        None, description="Prices for the cost per 1,000 requests; null: the report shows no costs."
    )
    teacher_latency_field: str | None = Field(
        "latency_ms",
        min_length=1,
        description="Top-level field of the log documents that holds the teacher's latency in milliseconds; "
        "null: the logs carry none.",
    )


class WorkloadConfig(_Strict):
    """One agent workload (an agent node, route or task) whose traffic trains its own student models."""

    workload_id: Annotated[str, Field(pattern=WORKLOAD_ID_PATTERN)] = Field(
        ..., description="Value of the workload field in the logs; DAG id flywheel_<workload_id>. Unique."
    )
    description: str = Field("", description="Shown at the top of the DAG's documentation.")
    client_ids: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, description="Only these client_id values; null or absent means every client."
    )
    log_source: LogSourceConfig = Field(..., description="Where the workload's logs are read from.")
    schedule: str = Field("0 2 * * *", description="Daily cron (UTC); each run owns the previous day.")
    start_date: date = Field(
        ..., description="Start of the first data interval the scheduler creates (catchup)."
    )
    catchup: bool = Field(
        False, description="Whether the scheduler runs every missed interval since start_date."
    )
    max_active_runs: int = Field(
        1, ge=1, le=16, description="Runs of this DAG at the same time (not backfills)."
    )
    training_window_days: int = Field(
        7, ge=1, le=365, description="Days a training dataset spans: the run's day and the days before it."
    )
    data_quality: DataQualityConfig = Field(default_factory=DataQualityConfig)
    training: WorkloadTrainingConfig = Field(default_factory=WorkloadTrainingConfig)
    evaluation: WorkloadEvaluationConfig = Field(default_factory=WorkloadEvaluationConfig)
    decision: DecisionPolicyConfig = Field(default_factory=DecisionPolicyConfig)
    deploy: DeployConfig = Field(
        {"type": "none"},
        validate_default=True,
        description="What promotion does besides moving the registry alias (tells serving).",
    )
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tags: list[str] = Field(default_factory=list, description="Extra DAG tags.")

    @field_validator("client_ids")
    @classmethod
    def _client_ids_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must list at least one client_id, or be omitted to take every client")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists a client_id twice")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_is_daily(cls, value: str) -> str:
        # Raw partitions are keyed by the day the data interval starts on: two runs on one day would
        # overwrite each other's partition, so only schedules that fire once every 24 hours are valid.
        from croniter import CroniterBadCronError, croniter

        try:
            it = croniter(value, datetime(2026, 1, 1, tzinfo=UTC))
        except (CroniterBadCronError, ValueError, KeyError) as exc:
            raise ValueError(f"{value!r} is not a cron expression ({exc})") from None
        fires = [it.get_next(datetime) for _ in range(8)]
        if any(b - a != timedelta(days=1) for a, b in itertools.pairwise(fires)):
            raise ValueError(f"{value!r} does not fire exactly once a day (e.g. '0 2 * * *')")
        return value

    @model_validator(mode="after")
    def _decision_metrics_evaluated(self) -> WorkloadConfig:
        from flywheel.evaluate.metrics import METRICS

        evaluated = set(self.evaluation.settings.metrics)
        named = {"decision.primary_metric": [self.decision.primary_metric]}
        named["decision.guardrails"] = list(self.decision.guardrails)
        for key, names in named.items():
            for name in names:
                if name not in METRICS.builtin_names and name not in evaluated:
                    raise ValueError(
                        f"{key}: {name!r} is not evaluated; add it to evaluation.settings.metrics"
                    )
        return self

    @model_validator(mode="after")
    def _approval_requests_reach_someone(self) -> WorkloadConfig:
        if self.decision.approval == "required" and "approval_requested" not in self.alerts.notify_on:
            raise ValueError(
                "alerts.notify_on: must include approval_requested when decision.approval is required, "
                "or no channel hears that a promotion waits for approval"
            )
        return self

    @property
    def dag_id(self) -> str:
        return f"flywheel_{self.workload_id}"


class ArtifactStoreConfig(_Strict):
    """Root URL of the artifact store (any fsspec URL) and its filesystem options."""

    root: str = Field(..., min_length=1, description="Local directory or fsspec URL (s3://bucket/prefix).")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options. Secret ones (key, secret, token, password...) never reach job pods or "
        "XCom: pods read their credentials from their environment (docs/artifact-store.md).",
    )

    @field_validator("root")
    @classmethod
    def _no_credentials_in_root(cls, value: str) -> str:
        # Artifact URIs under the root are written into results, the database, reports and alerts.
        _refuse_url_credentials(value, "give credentials in storage_options or the environment")
        return value


class MetadataConfig(_Strict):
    """The flywheel's own metadata database (runs, partitions, datasets, models, decisions)."""

    conn_id: str | None = Field(None, description="Airflow connection (postgres or sqlite); wins over url.")
    url: str = Field(..., min_length=1, description="SQLAlchemy URL used when conn_id is not set.")

    @field_validator("conn_id")
    @classmethod
    def _empty_conn_id_is_unset(cls, value: str | None) -> str | None:
        return value or None


class SecretEnvConfig(_Strict):
    """One environment variable of job pods read from a key of a Kubernetes Secret."""

    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = Field(
        ..., description="Name of the environment variable in the pod."
    )
    secret: str = Field(..., min_length=1, description="Name of the Kubernetes Secret.")
    key: str = Field(..., min_length=1, description="Key inside the Secret.")


class KubernetesComputeConfig(_Strict):
    """How job pods are started on Kubernetes (KubernetesPodOperator; docs: k8s_templates/README.md)."""

    conn_id: str = Field("kubernetes_default", description="Airflow connection of the cluster.")
    in_cluster: bool | None = Field(
        None, description="Use the worker's service account; null: the connection."
    )
    namespace: str = Field("flywheel", min_length=1, description="Namespace of the job pods.")
    image: str = Field(..., min_length=1, description="The job image (target `job`): version tag or digest.")
    pod_template_dir: str = Field(
        str(PROJECT_ROOT / "k8s_templates"), description="Folder of train-pod.yaml and evaluate-pod.yaml."
    )
    service_account_name: str | None = Field(
        None, description="Service account of the job pods; null: the template's (flywheel-job)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="GPU node labels, e.g. nvidia.com/gpu.product."
    )
    startup_timeout_seconds: int = Field(900, ge=30, description="Scheduled pod to running (image pull).")
    schedule_timeout_seconds: int = Field(
        3600, ge=30, description="Pending pod to scheduled (a GPU node may have to scale up)."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=60, description="Kill a job pod after this long; null: the template's value."
    )
    on_finish_action: Literal["delete_pod", "delete_succeeded_pod", "keep_pod"] = Field(
        "delete_succeeded_pod", description="Failed pods stay for inspection until cleaned up by label."
    )
    secret_env: list[SecretEnvConfig] = Field(
        default_factory=list, description="Extra environment variables from Kubernetes Secrets."
    )

    @field_validator("image")
    @classmethod
    def _image_pinned(cls, value: str) -> str:
        # Never the moving `:latest` (nor an untagged name, which means it): every pod of a night must run
        # the same build, and a rollback must be a config change. `name:tag@sha256:...` pins by digest.
        name, at, digest = value.partition("@")
        if at:
            if not _IMAGE_DIGEST.fullmatch(digest):
                raise ValueError(f"{value!r}: the digest after '@' must be sha256:<64 hex digits>")
            return value
        tag = name.rpartition("/")[2].partition(":")[2]
        if tag in ("", "latest"):
            raise ValueError(
                f"{value!r} runs the moving ':latest' image; pin a version tag (name:1.4.2) "
                "or a digest (name@sha256:...)"
            )
        return value


class ComputeConfig(_Strict):
    """Where heavy jobs (training, evaluation) run: pods on Kubernetes, local processes, or the user's own."""

    backend: str = Field(
        "local",
        description="A :class:`flywheel.compute.backend.ComputeBackend`: 'local', 'kubernetes' or the dotted "
        "path of the user's own ('package.module:Name').",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Non-secret environment of every job, on both backends (secrets: kubernetes.secret_env).",
    )
    pass_env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*\*?$")]] = Field(
        default_factory=list,
        description="Local backend: worker environment variables passed to jobs besides the built-in "
        "allow-list (PATH, HOME, PYTHON*, HF_*, FLYWHEEL_* ...); a name, or a prefix ending in '*'.",
    )
    kubernetes: KubernetesComputeConfig | None = Field(
        None, description="How job pods are started; required when backend is 'kubernetes'."
    )
    train_timeout_minutes: float = Field(
        360.0,
        gt=0,
        description="Time limit of one training job: the local backend kills the job with every process it "
        "started and fails the task as timed out; it also bounds the train task (execution_timeout).",
    )
    evaluate_timeout_minutes: float = Field(
        120.0, gt=0, description="Time limit of one evaluation job, as train_timeout_minutes."
    )
    local_parallel_jobs: int = Field(
        1,
        ge=1,
        description="Local backend: jobs of a run's train or evaluate task that run at the same time. Each "
        "job uses every core of the worker: two side by side take longer than one after the other.",
    )

    def job_timeout(self, kind: str) -> timedelta | None:
        """The time limit of a ``train`` or ``evaluate`` job; None for any other kind of job."""
        minutes = {"train": self.train_timeout_minutes, "evaluate": self.evaluate_timeout_minutes}.get(kind)
        return timedelta(minutes=minutes) if minutes is not None else None

    @field_validator("backend")
    @classmethod
    def _backend_known(cls, value: str) -> str:
        from flywheel.compute.backend import COMPUTE_BACKENDS
        from flywheel.plugins import is_dotted_path

        # A built-in is imported only when the DAG uses it (the kubernetes provider is slow to import);
        # the user's own is imported now, so that a wrong path is an error of this key.
        if is_dotted_path(value):
            COMPUTE_BACKENDS.resolve(value)
            return value
        return COMPUTE_BACKENDS.check(value)

    @model_validator(mode="after")
    def _kubernetes_block_when_used(self) -> ComputeConfig:
        if self.backend == "kubernetes" and self.kubernetes is None:
            raise ValueError("kubernetes: required when backend is 'kubernetes'")
        return self


class FlywheelConfig(_Strict):
    """The whole configuration file."""

    artifact_store: ArtifactStoreConfig
    metadata: MetadataConfig
    airflow: AirflowDefaults = Field(default_factory=AirflowDefaults)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    workloads: list[WorkloadConfig] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _workload_ids_unique(self) -> FlywheelConfig:
        seen: set[str] = set()
        for i, workload in enumerate(self.workloads):
            if workload.workload_id in seen:
                raise ValueError(f"workloads[{i}].workload_id: {workload.workload_id!r} is defined twice")
            seen.add(workload.workload_id)
        return self

    def workload(self, workload_id: str) -> WorkloadConfig:
        """The workload with this id; ConfigError naming the known ids otherwise."""
        for workload in self.workloads:
            if workload.workload_id == workload_id:
                return workload
        known = ", ".join(w.workload_id for w in self.workloads)
        raise ConfigError(f"unknown workload_id {workload_id!r}; configured: {known}")


def default_config_path() -> Path:
    """``$FLYWHEEL_CONFIG`` when set, else ``include/config/flywheel.yaml`` of this project."""
    return Path(os.environ.get("FLYWHEEL_CONFIG") or DEFAULT_CONFIG_PATH)


def flywheel_home() -> Path:
    """Local state directory of the embedded default: ``$FLYWHEEL_HOME`` or ``<project>/.flywheel``."""
    return Path(os.environ.get("FLYWHEEL_HOME") or PROJECT_ROOT / ".flywheel")


def load_config(path: str | os.PathLike[str] | None = None) -> FlywheelConfig:
    """Read, expand and validate the configuration file; raise ConfigError naming the bad key."""
    config_path = Path(path) if path is not None else default_config_path()
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read configuration file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{config_path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: top level must be a mapping, got {type(raw).__name__}")
    try:
        expanded = _expand_env(raw, ())
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    try:
        return FlywheelConfig.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(f"{config_path}: invalid configuration\n{format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``  - workloads[0].log_source.page_size: <reason> (got <value>)``."""
    lines = []
    for error in exc.errors(include_url=False):
        key = _dotted(error["loc"]) or "(top level)"
        reason = error["msg"].removeprefix("Value error, ")
        got = "" if error["type"] in ("missing", "value_error") else f" (got {error['input']!r})"
        lines.append(f"  - {key}: {reason}{got}")
    return "\n".join(lines)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; nested mappings are merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _expand_env(value: Any, loc: tuple[int | str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*loc, i)) for i, v in enumerate(value)]
    while isinstance(value, str) and "${" in value:
        expanded = _ENV_REF.sub(lambda m: _lookup_env(m, loc), value)
        if expanded == value:
            raise ConfigError(f"{_dotted(loc)}: malformed environment reference in {value!r}")
        value = expanded
    return value


def _lookup_env(match: re.Match[str], loc: tuple[int | str, ...]) -> str:
    name, default = match.group("name"), match.group("default")
    value = os.environ.get(name)
    # As in the shell: ${NAME:-default} takes the default when NAME is unset or empty.
    if value or (value is not None and default is None):
        return value
    if name == "FLYWHEEL_HOME":
        return str(flywheel_home())
    if default is not None:
        return default
    raise ConfigError(f"{_dotted(loc)}: environment variable {name} is not set and has no default")
