"""Log sources the extract stage reads from."""
