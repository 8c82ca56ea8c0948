"""The champion/challenger decision: paired comparisons of two models on the same evaluation examples."""
