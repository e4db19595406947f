"""Encoders, heads, losses, methods, optimisers and the per-worker train loop (Ray only in train_loop.py)."""
