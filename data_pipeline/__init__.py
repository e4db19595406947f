"""Streaming image data: sources → WebDataset tar shards + manifest → per-rank streams of augmented views."""
