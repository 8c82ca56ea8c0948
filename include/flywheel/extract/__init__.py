"""Stage 1, extract: one data interval of a workload's logs, read from a log source into the raw partition."""
