"""Stage 6, decide: the champion against the best challenger on the same examples, paired."""
