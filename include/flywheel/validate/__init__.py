"""Stage 2, validate: record rules, PII scrubbing and batch expectations turn a raw day into clean and
quarantine partitions."""
