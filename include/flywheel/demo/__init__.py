"""Production-like demo traffic for the flywheel: teacher logs of two tool-calling workloads, with noise."""
