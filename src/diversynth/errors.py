"""Errors meant for the user: the CLI prints their message on one line, without a traceback."""


class DiversynthError(Exception):
    """A problem with the input or the environment that the user can fix."""
