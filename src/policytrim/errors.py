"""Errors that mean "the user gave bad input" (the CLI reports them in one line, exit code 2)."""


class InputError(ValueError):
    """Bad user input: a config value, a checkpoint, a dataset, a path. The message says what was
    wrong and what is accepted."""
