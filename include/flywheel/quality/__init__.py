"""Data quality: record rules, PII scrubbing, de-duplication keys, splits, batch expectations."""
