"""Errors meant for the user: the CLI prints their message on one line, without a traceback."""


class DiversynthError(Exception):
    """A problem with the input or the environment that the user can fix."""


class PartialStage(Exception):  # noqa: N818 - an outcome, not a failure
    """Raised by a stage that stopped early on purpose (`--max-shards`): its finished work
    is kept, no state is written, and the stages after it do not run."""
