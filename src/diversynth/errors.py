"""Errors meant for the user: the CLI prints their message on one line, without a traceback,
and exits with their code: 2 for a mistake in what was asked, 1 for a fault met on the way."""


class DiversynthError(Exception):
    """A problem with the input or the environment that the user can fix."""

    exit_code = 1  # a fault: a server that died, a damaged file, a version change


class UsageError(DiversynthError):
    """A mistake in what the user asked for: a setting, a path, a file they named."""

    exit_code = 2


class PartialStage(Exception):  # noqa: N818 - an outcome, not a failure
    """Raised by a stage that stopped early on purpose (`--max-shards`): its finished work
    is kept, no state is written, and the stages after it do not run."""
