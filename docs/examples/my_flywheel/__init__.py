"""A user's own flywheel extensions, named in the config by dotted path: the worked examples of
docs/extending.md (a metric, a log source, a deploy hook, an alert channel and a compute backend).

The tests import and run every one of them, so the documentation cannot go stale.
"""
