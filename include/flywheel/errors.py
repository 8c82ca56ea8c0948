"""Errors a stage raises on purpose, importable without its heavy dependencies (DAG files use them)."""


class DataQualityError(RuntimeError):
    """A day's batch failed its expectations; its partitions and evidence are committed for inspection."""


class AccountingError(RuntimeError):
    """Records were lost or invented between extraction and validation; nothing was committed."""
