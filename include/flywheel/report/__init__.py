"""Stage 8, report: the run's HTML report, assembled from what the run recorded."""
