"""Evaluation of frozen encoders: features, linear probe, kNN, classical baselines, benchmarks, reports."""
