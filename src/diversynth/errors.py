"""Errors meant for the user: the CLI prints their message on one line, without a traceback,
and exits with their code: 2 for a mistake in what was asked, 1 for a fault met on the way."""

import reprlib


class DiversynthError(Exception):
    """A problem with the input or the environment that the user can fix."""

    exit_code = 1  # a fault: a server that died, a damaged file, a version change


class UsageError(DiversynthError):
    """A mistake in what the user asked for: a setting, a path, a file they named."""

    exit_code = 2


class PartialStage(Exception):  # noqa: N818 - an outcome, not a failure
    """Raised by a stage that stopped early on purpose (`--max-shards`): its finished work
    is kept, no state is written, and the stages after it do not run."""


# How much of a value an error line shows: a 40 MB class list or a YAML alias bomb would
# otherwise make the message itself the problem.
SHOWN_CHARS = 200


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` for an error message, at most about `limit` characters. reprlib
    abbreviates nested containers as it goes, so a huge value is never turned into text
    whole; the length of a long string or container is said."""
    short = reprlib.Repr()  # keywords only from Python 3.12
    short.maxlevel, short.maxstring, short.maxother = 3, limit, limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 8
    text = short.repr(value)
    size = len(value) if isinstance(value, str | list | tuple | dict | set) else 0
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.endswith("...") or "..." in text and size > 8:
        unit = "characters" if isinstance(value, str) else "items"
        text += f" ({size:,} {unit})"
    return text
