"""Evaluation: references, metrics, baselines, the harness, suites, reports and the SIMULATED oracle."""
