"""Reading one image safely (bounded size, one clear line on failure, even from a
DataLoader worker) and matching class folders to a class list: what the real datasets
and the layout checks both use."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from diversynth.config import ConfigError
from diversynth.errors import shown

if TYPE_CHECKING:
    from PIL import Image

    from diversynth.run.artifacts.records import ClassIdentity

    # the mixin below is only ever combined with an exception class: the type checker is
    # told so (at run time it derives from object, as it always has)
    _ExceptionMixin = Exception
else:
    _ExceptionMixin = object


# what torchvision's ImageFolder lists (torchvision.datasets.folder.IMG_EXTENSIONS; a test
# keeps the two the same)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def own_line(cls: type, message: str) -> str:
    """The error's own message out of torch's re-raise of it: an exception raised in a
    DataLoader worker reaches the training process as `cls(text)`, where text is "Caught
    X in DataLoader worker process 0." and the worker's whole traceback, which ends with
    "module.X: <the message>"."""
    if not message.startswith("Caught ") or "\nOriginal Traceback" not in message:
        return message
    prefix = f"\n{cls.__module__}.{cls.__qualname__}: "
    _, found, rest = message.rpartition(prefix)
    return rest.strip().splitlines()[0] if found and rest.strip() else message


class OneLineFromWorkers(_ExceptionMixin):
    """A mixin for errors a DataLoader worker may raise (an image that cannot be read):
    what reaches the user is the error's own line, not the worker's traceback."""

    def __init__(self, message: object = "") -> None:
        super().__init__(own_line(type(self), str(message)))


class ImageReadError(Exception):
    """An image file that cannot be opened or decoded; the message says why, briefly."""


def read_problem(exc: BaseException) -> str:
    """Why an image could not be read, in one short line (PIL's messages name a BytesIO's
    address or the absolute path; the caller names the file)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can identify"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if text == "Truncated File Read" or text.startswith("image file is truncated"):
        return "truncated: the file ends before the image does"
    if not isinstance(exc, OSError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 160 else text[:160] + "..."


# Pixels of a real image at most: decoded, 13000 x 13000 took 3.2 GB a picture (a PNG of
# it is 160 KB); the largest photos of common datasets are near 20 megapixels
MAX_PIXELS = 64_000_000


def open_rgb(path: Path, draft: bool = False) -> Image.Image:
    """The image at `path` as RGB pixels, as torchvision's loader reads it; raise
    ImageReadError for a file that is not a regular file (a FIFO would block the loader
    for ever), cannot be opened, or does not decode. `draft`: JPEGs decoded at 1/8 scale,
    which reads every byte as a full decode does (a truncated or cut file fails the same
    way) in a fraction of the time."""
    from PIL import Image

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ImageReadError(f"cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageReadError("is not a regular file")
        try:
            with Image.open(handle) as image:
                width, height = image.size  # from the header alone
                if width * height > MAX_PIXELS:
                    bound = MAX_PIXELS // 10**6
                    raise ImageReadError(f"is {width} x {height} pixels, above the bound of "
                                         f"{bound} megapixels")  # fmt: skip
                if draft:
                    image.draft("RGB", (1, 1))
                return image.convert("RGB")
        except (MemoryError, ImageReadError):
            raise
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
            raise ImageReadError(read_problem(exc)) from None


def decode_problem(path: Path) -> str | None:
    """Why the image at `path` cannot be read (None: it can)."""
    try:
        open_rgb(path, draft=True)
    except ImageReadError as exc:
        return str(exc)
    return None


class FolderClashError(ConfigError):
    """Two classes that one folder matches: found with the config's other problems."""


def match_class_folders(directory: Path, classes: Sequence[ClassIdentity],
                        field: str = "data.root") -> dict[str, int]:  # fmt: skip
    """Folder name -> class index: a folder matches a class by its wnid (ImageNet's
    `n01440764`), its name (any case), or its index (ImageNet-V2's `0` ... `999`). Two
    classes matching one folder (`Cat` and `cat`) are refused: its images would all go
    to one of them, and the other's accuracy would be measured on none."""
    folders = {e.name.casefold(): e.name for e in os.scandir(directory) if e.is_dir()}
    mapping: dict[str, int] = {}
    names = {cls["index"]: cls["raw_name"] for cls in classes}
    for cls in classes:
        for key in (cls.get("wnid"), cls["raw_name"], str(cls["index"])):
            if key and key.casefold() in folders:
                folder = folders[key.casefold()]
                other = mapping.setdefault(folder, cls["index"])
                if other != cls["index"]:
                    raise FolderClashError(
                        f"{field}: classes {other} ({shown(names[other], 60)}) and "
                        f"{cls['index']} ({shown(cls['raw_name'], 60)}) both match the folder "
                        f"{shown(folder, 60)} (names match in any case): rename one class, "
                        "or give each its wnid"
                    )
                break
    return mapping


def count_images(folder: Path, stop: int | None = None) -> int:
    """Image files under `folder` as ImageFolder lists them (by extension, subfolders and
    links followed), counted up to `stop`."""
    count = 0
    for _, _, names in os.walk(folder, followlinks=True):
        count += sum(1 for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
        if stop is not None and count >= stop:
            break
    return count


def has_image(folder: Path, depth: int = 16) -> bool:
    """Whether ImageFolder would list an image under `folder`: the directory read only up
    to its first image (subfolders only when it holds none; `depth` bounds a link loop)."""
    below = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    below.append(Path(entry.path))
                elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    return True
    except OSError:
        return False
    return depth > 0 and any(has_image(sub, depth - 1) for sub in below)
