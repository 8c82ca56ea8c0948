"""A user's own flywheel extensions, named in the config by dotted path (the worked examples of
docs/extending.md): a deploy hook, an alert channel and a compute backend."""
