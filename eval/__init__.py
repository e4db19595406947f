"""Evaluation of frozen encoders: features, linear probe, kNN, classical baselines, reports."""
