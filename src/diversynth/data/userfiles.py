"""Files the user names (a config, a class list, a subset list) are read only when they are
regular files below a size: a FIFO with no writer would block for ever, and a link to
/dev/zero would fill the memory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from diversynth.errors import UsageError

MB = 1 << 20
LIST_BYTES = 256 * MB  # a list of every ImageNet training image is ~60 MB
CLASS_LIST_BYTES = 32 * MB  # 100,000 classes (the bound) with descriptions: ~20 MB
# YAML is read at about 2 MB/s into up to 250 times its size in memory (a flow list of
# one-letter items): 4 MB holds a config, or a list of 21,843 classes with their WordNet
# glosses (~3 MB), in well under 2 GB
YAML_BYTES = 4 * MB
CONFIG_BYTES = YAML_BYTES  # a config with every ImageNet class written out inline: 0.2 MB

_KINDS = {
    stat.S_ISDIR: "a folder",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


class UserFileError(UsageError, ValueError):
    """A named file that is missing, not a regular file, or too large to read."""


def file_problem(path: Path, limit: int) -> str | None:
    """Why `path` cannot be read as a file of at most `limit` bytes (None: it can). Links
    are followed: what counts is what they point to."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS.items() if test(info.st_mode)), "not a file")
        return f"is {kind}, not a regular file"
    if info.st_size > limit:
        return f"is {info.st_size / MB:,.1f} MB, above the bound of {limit // MB} MB"
    return None


def read_user_bytes(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a file the user named as `what` (the setting or argument), checked
    first; never more than `limit` bytes are read, even from a file that grows meanwhile."""
    where = f"{what}: " if what else ""
    problem = file_problem(path, limit)
    if problem:
        raise UserFileError(f"{where}{str(path)!r} {problem}")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UserFileError(f"{where}{str(path)!r} grew past the bound of {limit // MB} MB "
                            "while being read")  # fmt: skip
    return data


def read_user_text(path: Path, what: str, limit: int) -> str:
    """A UTF-8 text file the user named (see read_user_bytes)."""
    data = read_user_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserFileError(
            f"{what}: {str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None


def folder_problem(path: Path) -> str | None:
    """Why `path`, to be made or written, cannot have its folders made: the nearest of its
    parents that exists is not a folder (None: it is one)."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else f"{str(parent)!r} is a file, not a folder"
    return None


def first_entries(folder: Path, count: int = 3) -> str:
    """The first `count` names in a folder, sorted ("a, b, c, ..."); "" for an empty one:
    what a refusal to write into a folder of the user's shows of it."""
    present = sorted(entry.name for entry in os.scandir(folder))
    return ", ".join(present[:count]) + (", ..." if len(present) > count else "")
