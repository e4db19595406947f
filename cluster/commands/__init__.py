"""Subcommands of the `bigbatch` CLI; each module exposes register(subparsers)."""
