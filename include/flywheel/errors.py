"""Errors a stage raises on purpose, importable without its heavy dependencies (DAG files use them)."""


class DataQualityError(RuntimeError):
    """A day's batch failed its expectations; its partitions and evidence are committed for inspection."""


class AccountingError(RuntimeError):
    """Records were lost or invented between extraction and validation; nothing was committed."""


class JobFailedError(RuntimeError):
    """A job (``flywheel train`` ...) exited non-zero; a retry may help (a lost node, a storage hiccup).

    ``error`` is the job's own ``error.json`` when it wrote one.
    """

    def __init__(self, message: str, *, exit_code: int | None, error: dict | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.error = error


class NonRetryableJobError(JobFailedError):
    """A job failed in a way the same job cannot fix on retry: bad configuration or inputs, out of memory."""


class TrainingFailedError(RuntimeError):
    """No candidate of the run produced an adapter."""


class EvaluationFailedError(RuntimeError):
    """No evaluation of the run produced a result."""


class AlertDeliveryError(RuntimeError):
    """One or more alert channels failed after every channel was tried.

    ``deliveries`` holds one record per channel (``channel``, ``conn_id``, ``status``, ``error``).
    """

    def __init__(self, message: str, *, deliveries: list[dict]) -> None:
        super().__init__(message)
        self.deliveries = deliveries


class DeployError(RuntimeError):
    """Promoting a model to serving failed; the message names the target, the HTTP status and the reply.

    ``http_status`` is the last HTTP status received (None: no answer, or refused before any request).
    """

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class PromotionFailedError(RuntimeError):
    """The promote branch could not move the champion alias (the deploy hook failed, or the champion
    moved during the run); the registry is unchanged and an alert went out."""
