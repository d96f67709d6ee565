"""Weights load as safetensors only: no pickle from a model folder is ever unpickled; and a
local model is checked when the config is read, so that a damaged one is named there, not
by a library's traceback at the stage that loads it.

Unpickling runs code, and every library here falls back to a pickle when a folder has no
safetensors file (open_clip's `local-dir:` takes `*.bin`, sentence-transformers and
transformers take `pytorch_model.bin`, timm takes `.pth`), each with its own switch or
none. So a local model folder is checked when the config is read (a folder of weights
with no safetensors file is refused, naming the setting and the file), and while any
model loads, `torch.load` (the one door to a pickle in these libraries) refuses.

The same check reads the header of every weights file (never its tensors: a model folder
can hold many GB), and refuses what would fail to load: a Git LFS pointer where the file
should be, a pickle renamed `.safetensors`, a download cut short, a web page saved in place
of the file; for a diffusers pipeline folder, a component folder missing or without its
weights, and a config file that is not a JSON object.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from diversynth.data.userfiles import MB, UserFileError, read_user_bytes
from diversynth.errors import DiversynthError, UsageError, shown

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE_SUFFIXES = (".safetensors",)
# safetensors' own bound on its JSON header (its MAX_HEADER_SIZE): past it, the library
# refuses the file, and nothing this large is read here either
MAX_HEADER_BYTES = 100_000_000
JSON_BYTES = 8 * MB  # a config file of a model folder (they are a few KB)
INDEX_BYTES = 64 * MB  # a sharded model's weight map (DeepSeek-V3's is 9 MB)
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
HEAD_BYTES = 1024  # what is read to tell what a file is (a Git LFS pointer is less)
GGUF_MAGIC = b"GGUF"
GGUF_HEADER_BYTES = 24  # magic, version, tensor count, metadata count
# Components of a pipeline that hold no weights, by the end of their class name: they save
# a tokenizer_config.json, a scheduler_config.json or a preprocessor_config.json instead
WEIGHTLESS_CLASSES = ("Tokenizer", "TokenizerFast", "Scheduler", "Processor", "FeatureExtractor")
WEIGHTLESS_CONFIGS = ("tokenizer_config.json", "scheduler_config.json", "preprocessor_config.json")
# Components the generate stage leaves out unless asked (generate.safety_checker: false):
# their folder need not be there
LEFT_OUT_BY_DEFAULT = ("safety_checker",)


class WeightsError(UsageError, ValueError):
    """A local model that cannot load (a ValueError too: a config validator's refusal)."""


class UnsafeWeightsError(WeightsError):
    """Weights that would have to be unpickled."""


class DamagedWeightsError(WeightsError):
    """A weights file that is not what its name says: a Git LFS pointer, a renamed pickle,
    a download cut short."""


class ModelFolderError(WeightsError):
    """A model folder with a part missing, or a config file in it that does not parse."""


def _where(setting: str) -> str:
    return f"{setting}: " if setting else ""


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n:,} bytes"


def _lfs_problem(path: Path, head: bytes) -> str | None:
    """A Git LFS pointer (a clone without `git lfs`, or `git lfs` told to skip the file)."""
    if not head.startswith(LFS_POINTER):
        return None
    stands_for = ""
    for line in head.decode("utf-8", "replace").splitlines():
        if line.startswith("size ") and line[5:].strip().isdigit():
            stands_for = f" (the {_size(int(line[5:]))} file it stands for is not here)"
    return (f"{str(path)!r} is a Git LFS pointer, not the weights{stands_for}: run "
            f"'git lfs pull' in {str(path.parent)!r}")  # fmt: skip


def _content_problem(path: Path, head: bytes, expected: str) -> str:
    """What a weights file that is not `expected` holds instead, from its first bytes."""
    lfs = _lfs_problem(path, head)
    if lfs:
        return lfs
    name = repr(str(path))
    if head.startswith(b"PK\x03\x04"):
        return (f"{name} is a zip archive (what torch.save writes: a pickle), not {expected}: "
                "diversynth loads weights as safetensors only (convert it with safetensors' "
                "save_file, or save the model with safe_serialization=True)")  # fmt: skip
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return (f"{name} is a pickle, not {expected}: diversynth loads weights as "
                "safetensors only (convert it with safetensors' save_file, or save the "
                "model with safe_serialization=True)")  # fmt: skip
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return (f"{name} is a web page (HTML), not {expected}: the download saved a page "
                "instead of the file (on the Hugging Face hub, a /resolve/ link gives the "
                "file, a /blob/ link a page)")  # fmt: skip
    if head.startswith(GGUF_MAGIC) and expected != "a GGUF file":
        return f"{name} is a GGUF file (for llama.cpp), not {expected}"
    return f"{name} is not {expected} (it starts with {shown(head[:16])})"


def _read_head(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def safetensors_problem(path: Path) -> str | None:
    """Why a `.safetensors` file would not load (None: it would), read from its 8-byte
    header length and its JSON header only; the message names the file."""
    name = repr(str(path))
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
            if size == 0:
                return f"{name} is empty (0 bytes): download it again"
            if len(head) < 8:
                return f"{name} is {_bytes(size)}, too short for a safetensors file"
            (length,) = struct.unpack("<Q", head[:8])
            # a JSON object right after the length, as safetensors asks: anything else is
            # some other file (a length of 640 starts b"\x80\x02", as a pickle does)
            if length > MAX_HEADER_BYTES or head[8:9] != b"{":
                return _content_problem(path, head, "a safetensors file")
            if 8 + length > size:
                return (f"{name} is cut short: its header alone is {_size(length)}, the "
                        f"file {_size(size)} (a download that did not finish? download it "
                        "again)")  # fmt: skip
            handle.seek(8)
            header_bytes = handle.read(length)
    except OSError as exc:
        return f"{name} cannot be read ({exc.strerror or exc})"
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{name} is not a safetensors file: its header is not JSON ({exc})"
    if not isinstance(header, dict):
        return f"{name} is not a safetensors file: its header is not a JSON object"
    return _tensor_span_problem(name, header, size - 8 - length)


def _tensor_span_problem(name: str, header: dict[str, Any], data_bytes: int) -> str | None:
    """Whether the tensors the header describes tile the data after it exactly (what
    safetensors itself asks): one past the end is a file cut short."""
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return (f"{name} is not a safetensors file: its header's entry {shown(key)} has "
                    "no data_offsets [begin, end]")  # fmt: skip
        spans.append((offsets[0], offsets[1], key))
    spans.sort()
    end = 0
    for begin, stop, key in spans:
        if begin != end:
            return (f"{name} is damaged: its tensor {shown(key)} starts at byte {begin:,} of "
                    f"the data, where the one before it ends at {end:,}")  # fmt: skip
        end = stop
    if end > data_bytes:
        return (f"{name} is cut short: its header describes {_bytes(end)} of tensors, the "
                f"file holds {_bytes(data_bytes)} (a download that did not finish? download "
                "it again)")  # fmt: skip
    if end < data_bytes:
        return (f"{name} is damaged: it holds {_bytes(data_bytes - end)} more than the "
                f"{_bytes(end)} of tensors its header describes (download it again)")  # fmt: skip
    return None


def gguf_problem(path: Path) -> str | None:
    """Why a `.gguf` file would not load in llama.cpp, from its first bytes (None: it
    starts as a GGUF file does; a file cut short inside is not seen)."""
    try:
        head = _read_head(path, HEAD_BYTES)
    except OSError as exc:
        return f"{str(path)!r} cannot be read ({exc.strerror or exc})"
    if not head.startswith(GGUF_MAGIC):
        if not head:
            return f"{str(path)!r} is empty (0 bytes): download it again"
        return _content_problem(path, head, "a GGUF file")
    if len(head) < GGUF_HEADER_BYTES:
        return f"{str(path)!r} is cut short: {_bytes(len(head))}, less than a GGUF header"
    return None


def weights_problem(path: Path) -> str | None:
    """Why a weights file would not load, by its suffix (None: it would, as far as its
    header tells; suffixes with no check here pass)."""
    if path.is_symlink() and not path.exists():
        return f"{str(path)!r} is a link to a file that is not there"
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if path.suffix == ".gguf":
        return gguf_problem(path)
    return None


# Files a model folder holds at most: a sharded LLM has a few hundred; a folder with more
# is not a model (`generate.model: /` walked the whole file system)
MAX_MODEL_FILES = 10_000


def _model_files(setting: str, folder: Path) -> dict[Path, list[Path]]:
    """Each folder of a model's tree and its files, sorted; WeightsError past
    MAX_MODEL_FILES (folders that cannot be read are left out, as the loaders would fail
    on them with their own message)."""
    tree: dict[Path, list[Path]] = {}
    count = 0
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        count += len(files) + len(dirs)
        if count > MAX_MODEL_FILES:
            raise ModelFolderError(f"{_where(setting)}{str(folder)!r} holds more than "
                                   f"{MAX_MODEL_FILES:,} files: not a model folder")  # fmt: skip
        base = Path(parent)
        tree[base] = sorted(base / name for name in files if os.path.isfile(base / name))
    return tree


def _pickle_weights(tree: dict[Path, list[Path]]) -> list[Path]:
    """Pickle weight files in folders of the tree that hold no safetensors file beside them
    (where both are there, the loaders take the safetensors)."""
    found = []
    for files in tree.values():
        if not any(p.suffix in SAFE_SUFFIXES for p in files):
            found += [p for p in files if p.suffix in PICKLE_SUFFIXES]
    return found


def _index_problem(index: Path) -> str | None:
    """A sharded model's `*.safetensors.index.json`: every shard its weight map names is
    beside it (a download stopped between shards leaves some out)."""
    try:
        data = read_json_object(index, limit=INDEX_BYTES)
    except ModelFolderError as exc:
        return str(exc)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):
        return f"{str(index)!r} has no weight_map (tensor -> shard file)"
    for shard in sorted({str(v) for v in weight_map.values()}):
        if not (index.parent / shard).is_file():
            return (f"{str(index.parent / shard)!r} is missing: {index.name} names it as a "
                    "shard of the weights (a download that did not finish?)")  # fmt: skip
    return None


def check_local_weights(setting: str, path: str | Path, also: tuple[str, ...] = ()) -> None:
    """Refuse a local model (a folder, or a weights file) whose weights are pickles, or
    would not load: every `.safetensors` file in the tree has its header read, every
    sharded weight map its shards. `also`: other suffixes allowed for a single file
    (".gguf" for llama.cpp, whose first bytes are checked). The message starts with
    `setting` (config validation leaves it out: it names the field itself)."""
    path = Path(path)
    where = _where(setting)
    if path.is_file():
        if path.suffix not in (*SAFE_SUFFIXES, *also):
            raise UnsafeWeightsError(
                f"{where}{str(path)!r} is not a safetensors file"
                + (" (nor " + ", ".join(also) + ")" if also else "")
                + ": diversynth loads weights as safetensors only"
            )
        problem = weights_problem(path)
        if problem:
            raise DamagedWeightsError(where + problem)
        return
    if path.is_dir():
        tree = _model_files(setting, path)
        files = [file for group in tree.values() for file in group]
        pickles = _pickle_weights(tree)
        if pickles:
            raise UnsafeWeightsError(
                f"{where}{str(pickles[0])!r} is a pickle, and its folder has no "
                "safetensors file: diversynth loads weights as safetensors only (convert "
                "it with safetensors' save_file, or save the model with "
                "safe_serialization=True)"
            )
        for file in (f for f in files if f.name.endswith(".safetensors")):
            problem = weights_problem(file)
            if problem:
                raise DamagedWeightsError(where + problem)
        for index in (f for f in files if f.name.endswith(".safetensors.index.json")):
            problem = _index_problem(index)
            if problem:
                raise DamagedWeightsError(where + problem)


def read_json_object(path: Path, setting: str = "", limit: int = JSON_BYTES) -> dict[str, Any]:
    """A JSON object from a model folder's config file, read only when it is a regular
    file within `limit` bytes; ModelFolderError names the file and what is wrong."""
    where, name = _where(setting), repr(str(path))
    try:
        data = read_user_bytes(path, setting, limit)
    except UserFileError as exc:
        raise ModelFolderError(str(exc)) from None
    lfs = _lfs_problem(path, data)
    if lfs:
        raise ModelFolderError(where + lfs)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelFolderError(
            f"{where}{name} is not JSON: not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    except json.JSONDecodeError as exc:
        what = "empty" if not data.strip() else f"not JSON ({exc})"
        raise ModelFolderError(f"{where}{name} is {what}") from None
    if not isinstance(value, dict):
        kind = {"list": "an array", "str": "a string"}.get(type(value).__name__, "a value")
        raise ModelFolderError(f"{where}{name} holds {kind}, not a JSON object")
    return value


def _component_problem(folder: Path, name: str, entry: list[Any], setting: str) -> str | None:
    """Whether the component folder `name` of a pipeline is there, and a model's holds its
    config and its weights (tokenizers, schedulers and processors have no weights)."""
    library, cls = entry
    component = folder / name
    what = f"model_index.json names {name} a {library} {cls}"
    if not component.is_dir():
        return (f"{str(component)!r} is missing ({what}): download it (or, for a component "
                "the pipeline can do without, write [null, null] for it there)")  # fmt: skip
    if not any(component.iterdir()):  # a tokenizer too has its files
        return f"{str(component)!r} is empty ({what}): download it"
    for config in ("config.json", *WEIGHTLESS_CONFIGS):
        if (component / config).exists() or (component / config).is_symlink():
            read_json_object(component / config, setting)  # raises, naming the file
    weightless = str(cls).endswith(WEIGHTLESS_CLASSES) or (
        not (component / "config.json").exists()
        and any((component / c).exists() for c in WEIGHTLESS_CONFIGS)
    )
    if weightless:
        return None
    if library in ("diffusers", "transformers") and not (component / "config.json").exists():
        return f"{str(component)!r} has no config.json ({what}): download it"
    if not any(p.suffix in SAFE_SUFFIXES for p in component.iterdir()):
        return (f"{str(component)!r} holds no weights (no .safetensors file; {what}): "
                "download them")  # fmt: skip
    return None


def check_pipeline_folder(path: str | Path, setting: str = "",
                          left_out: Collection[str] = LEFT_OUT_BY_DEFAULT) -> None:  # fmt: skip
    """Refuse a local diffusers pipeline folder that cannot load: a model_index.json that
    is not a JSON object or an entry in it that is not [library, class]; a component
    folder it names that is missing; a model component's folder without its config.json
    or its weights; a component config that does not parse. Components saved as left out
    (null in model_index.json), and those in `left_out` (not loaded: no folder needed),
    pass. A folder with no model_index.json passes: the generate stage's model check says
    it is no pipeline. Weights files themselves: check_local_weights."""
    folder = Path(path)
    index_file = folder / "model_index.json"
    if not (index_file.exists() or index_file.is_symlink()):
        return
    index = read_json_object(index_file, setting)
    where = _where(setting)
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list):
            continue  # settings (requires_safety_checker: false), _class_name, ...
        if len(entry) != 2 or not all(e is None or isinstance(e, str) for e in entry):
            raise ModelFolderError(f"{where}{str(index_file)!r}: the entry for {shown(name)} "
                                   f"is not [library, class] (got {shown(entry)})")  # fmt: skip
        if None in entry or name in left_out:
            continue  # saved as left out, or not loaded
        problem = _component_problem(folder, name, entry, setting)
        if problem:
            raise ModelFolderError(where + problem)


class ModelLoadError(DiversynthError):
    """A library could not build a model from the files it was given (exit 1)."""


@contextlib.contextmanager
def loading(setting: str, ref: str,
            error: type[DiversynthError] = ModelLoadError) -> Iterator[None]:  # fmt: skip
    """The one way a model is loaded: pickles refused (refusing_pickles), and whatever else
    the library's loader raises (a config value it cannot take, a class it does not know,
    a tokenizer it cannot convert, a hub it cannot reach) as one `error` line naming the
    setting, the model and the library's own last words."""
    with refusing_pickles(setting):
        try:
            yield
        except (DiversynthError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - every library has its own error classes
            words = " ".join(str(exc).split())
            raise error(f"{setting}: cannot load {shown(ref)}: {type(exc).__name__}: "
                        f"{shown(words, 300)[1:-1]}") from exc  # fmt: skip


@contextlib.contextmanager
def refusing_pickles(setting: str) -> Iterator[None]:
    """Within the block, a library reaching for `torch.load` gets UnsafeWeightsError
    naming `setting` and the file (hub downloads included, whatever the library's own
    fallbacks are)."""
    import torch
    import torch.serialization

    original = torch.load

    def refuse(f: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(f, "name", f)
        raise UnsafeWeightsError(
            f"{setting}: {str(name)!r} is a pickle: diversynth loads weights as safetensors only"
        )

    torch.load = torch.serialization.load = refuse
    try:
        yield
    finally:
        torch.load = torch.serialization.load = original
