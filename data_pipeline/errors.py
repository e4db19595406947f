"""The one exception class for mistakes in the user's input or environment (a path, a file, a config value, a
run name, a shard): the CLI prints its message as one line and exits with code 2 (a traceback only with
``--debug``). Every layer raises it or a subclass; it lives here because data_pipeline is imported by all."""

from __future__ import annotations


class UserInputError(ValueError):
    """A mistake of the user's: the message names the input and what is wrong with it."""
