"""Stage 7, deliver: the model registry and its champion alias, deploy hooks and alert channels."""
