"""The errors the flywheel raises on purpose, in one hierarchy (importable without heavy dependencies).

Every error a DAG task lets out is either a :class:`RetryableError` (a retry may succeed: a lost node,
a storage or network hiccup, logs that arrive late) or a :class:`PermanentError` (retrying the same
task cannot fix it: a bad configuration or input, a batch that failed its expectations, a job that ran
out of memory). The DAG's retry policy has one rule per kind.
"""


class FlywheelError(Exception):
    """Base of every error the flywheel raises on purpose."""


class RetryableError(FlywheelError):
    """A retry of the same task may succeed."""


class PermanentError(FlywheelError):
    """Retrying the same task cannot fix it: the task fails at once."""


class ConfigError(PermanentError, ValueError):
    """The configuration file is missing, unreadable or invalid; the message says where and why."""


class DataQualityError(PermanentError):
    """A day's batch failed its expectations; its partitions and evidence are committed for inspection."""


class AccountingError(RetryableError):
    """Records were lost or invented between extraction and validation; nothing was committed."""


class JobFailedError(FlywheelError):
    """A job (``flywheel train`` ...) exited non-zero; its subclass says whether a retry may help.

    ``error`` is the job's own ``error.json`` when it wrote one.
    """

    def __init__(self, message: str, *, exit_code: int | None, error: dict | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.error = error


class TransientJobError(JobFailedError, RetryableError):
    """A job failed in a way a retry may fix (a lost node, a storage hiccup)."""


class JobTimeoutError(TransientJobError):
    """A job ran past its time limit and was killed with every process it started.

    Retried, like a pod killed at its ``activeDeadlineSeconds``: a hung job (a stuck read, a deadlock)
    may finish on the next try; one that is merely slow needs a longer ``compute.<kind>_timeout_minutes``.
    """


class StaleResultError(TransientJobError):
    """A job's ``result.json`` belongs to another attempt or another dataset (a job left running by a
    killed worker wrote it over this attempt's), so it is not this job's outcome. A retry runs the job
    again, in a clean output directory."""


class NonRetryableJobError(JobFailedError, PermanentError):
    """A job failed in a way the same job cannot fix on retry: bad configuration or inputs, out of memory."""


class OutOfMemoryJobError(NonRetryableJobError):
    """A job ran out of memory: it caught an out-of-memory error (exit code 3), or the kernel's OOM
    killer ended it (a local process killed by SIGKILL that wrote no ``error.json``, a pod ``OOMKilled``).

    The same job runs out again on a retry: it needs a smaller batch or sequence length, or more memory.
    """


class TrainingFailedError(PermanentError):
    """No candidate of the run produced an adapter."""


class EvaluationFailedError(PermanentError):
    """No evaluation of the run produced a result."""


class AlertDeliveryError(RetryableError):
    """One or more alert channels failed after every channel was tried.

    ``deliveries`` holds one record per channel (``channel``, ``conn_id``, ``status``, ``error``).
    """

    def __init__(self, message: str, *, deliveries: list[dict]) -> None:
        super().__init__(message)
        self.deliveries = deliveries


class DeployError(RetryableError):
    """Promoting a model to serving failed; the message names the target, the HTTP status and the reply.

    ``http_status`` is the last HTTP status received (None: no answer, or refused before any request).
    """

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class DeployUncertainError(DeployError):
    """A deploy request was sent but its answer was lost (a read timeout, a dropped connection, a
    gateway's 504): serving may have applied it. ``sent`` is what was sent (URL and body, no credentials).

    A hook raises it instead of a plain DeployError; :func:`flywheel.deliver.deploy.deploy_hook` then
    takes the deploy back (:meth:`~flywheel.deliver.deploy.DeployHook.undeploy`) and raises it again with
    the outcome.
    """

    def __init__(self, message: str, *, sent: dict, http_status: int | None = None) -> None:
        super().__init__(message, http_status=http_status)
        self.sent = sent


class PromotionFailedError(PermanentError):
    """The promote branch could not move the champion alias (the deploy hook failed, or the champion
    moved during the run); the registry is unchanged and an alert went out."""


class RunParamError(PermanentError, ValueError):
    """A manual run's parameter (the DAG's ``params``) does not fit the workload; the message names it."""
