"""JSON for the frozen dataclasses that travel between stages.

``to_dict`` turns a dataclass tree into plain JSON values (tuples become lists);
``from_dict`` rebuilds it from the type hints, turning lists back into tuples. ``dump_json``
writes sorted, indented JSON atomically, so the same artifact gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from autoseg.errors import AutosegError

T = TypeVar("T")
_ASCII_INT = re.compile(r"[+-]?[0-9]+")


def ascii_int(text: str) -> int | None:
    """The integer ``text`` spells with ASCII digits (an optional sign, spaces around), else None.

    The one rule for numbers written as text: fold names, dataset.json and plans.json keys.
    ``str.isdigit`` accepts superscripts such as '²' that ``int`` refuses (a traceback), and
    ``int`` accepts Arabic-Indic and other Unicode digits that no autoseg name holds.
    """
    text = text.strip()
    return int(text) if _ASCII_INT.fullmatch(text) else None


def to_dict(obj: Any) -> Any:
    """Plain JSON value of a dataclass tree (dicts keep their keys, as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def _build(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or value is None:
        return value
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for candidate in non_none:
            try:
                return _build(candidate, value)
            except (TypeError, ValueError, KeyError) as exc:
                errors.append(exc)
        raise TypeError(f"{value!r} matches none of {non_none}: {errors}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in value)
        if args:
            return tuple(_build(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if origin in (list,):
        return [_build(args[0], v) for v in value]
    if origin in (dict, typing.Mapping) or tp is dict:
        kt, vt = args if args else (str, Any)
        return {_build(kt, k): _build(vt, v) for k, v in value.items()}
    if tp is float:
        if not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, str) and ascii_int(value) is None:
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true/false, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild dataclass ``cls`` from ``to_dict`` output; unknown keys are ignored.

    Raises:
        TypeError / KeyError: the data does not have the dataclass's shape.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _build(hints[f.name], data[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KeyError(f"{cls.__name__}: missing key '{f.name}'")
    return cls(**kwargs)


def dumps(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(to_dict(obj), indent=2, sort_keys=True) + "\n"


NAME_MAX = 255  # bytes in one file name on the common file systems (ext4, xfs, btrfs, APFS)
_TEMP_EXTRA = len(".") + len(".XXXXXXXX.part")


def temp_stem(name: str) -> str:
    """The ``NAME`` of the temp files ``.NAME.XXXXXXXX.part`` of a file named ``name``.

    ``name`` itself when the temp name fits in ``NAME_MAX`` bytes; else its start, cut to fit,
    with ``~`` and 8 hex digits of its hash (so two long names still get different stems).
    """
    room = NAME_MAX - _TEMP_EXTRA
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= room:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:8]
    start = raw[: room - len(digest) - 1].decode("utf-8", "ignore")  # no half characters
    return f"{start}~{digest}"


def temp_files(path: str | Path) -> list[Path]:
    """The temp files of ``path`` that a killed run left (``atomic_output``'s names)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(temp_stem(path.name))}.*.part"))


def remove_temp_files(*paths: str | Path) -> None:
    """Remove what a killed run left while writing ``paths``: their temp files, and staging
    folders named like them (``.NAME.XXXXXXXX.part``). Call before writing them again."""
    for path in paths:
        for stale in temp_files(path):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def check_output_folder(folder: str | Path, option: str = "") -> None:
    """Refuse an output folder that is a file, or lies under one (instead of ``File exists``
    or ``Not a directory`` from the first write).

    Args:
        folder: the folder that will be created or written into.
        option: the option that named it (``-o``), for the message.

    Raises:
        AutosegError: ``folder`` or its nearest existing parent is not a folder.
    """
    folder = Path(folder)
    there = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if there is not None and not there.is_dir():
        named = f" ({option} names a folder)" if option else ""
        raise AutosegError(f"{there}: is a file, not a folder{named}")


@contextlib.contextmanager
def folder_for_output(folder: str | Path) -> Iterator[Path]:
    """Create ``folder`` and its missing parents for the block; if the block fails, remove
    again those it created that are still empty, so a refused command leaves no folders.

    Raises:
        AutosegError: ``folder`` or one of its parents is a file.
    """
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    check_output_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for created in missing:  # deepest first
            try:
                created.rmdir()
            except OSError:  # not empty (or gone): leave it and its parents
                break
        raise


def _open_temp(path: Path) -> tuple[int, str]:
    """Create and open a new temp file beside ``path``: ``.NAME.XXXXXXXX.part``.

    ``NAME`` is ``temp_stem(path.name)``: a name near the file-system limit gets a shortened
    temp name. Unlike ``tempfile.mkstemp`` (always mode 0600), the file gets the permissions a
    plain ``open`` gives (0666 less the umask), and keeps them when renamed to ``path``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    stem = temp_stem(path.name)
    while True:
        tmp = path.parent / f".{stem}.{secrets.token_hex(4)}.part"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
        except OSError as exc:  # read-only or full folder: name the file the user asked for
            exc.filename = str(path)
            raise


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[tuple[int, str]]:
    """Write ``path`` through a temp file beside it, so that it is never seen half written.

    Yields ``(fd, temp path)``: write through ``fd`` (and close it) or through the path. On
    success the temp file is renamed to ``path``; on any error it is removed. An ``OSError``
    (disk full, read-only folder) names ``path``, not the temp file. The folder must exist.
    """
    path = Path(path)
    tmp = ""
    try:
        fd, tmp = _open_temp(path)
        yield fd, tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename in (None, tmp):
            exc.filename = str(path)
        raise
    finally:
        if tmp and os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as (fd, _), os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def dump_json(obj: Any, path: str | Path) -> None:
    """Write a dataclass (or plain value) as deterministic JSON, atomically."""
    atomic_write_text(path, dumps(obj))


class InvalidJsonFile(AutosegError, ValueError):
    """A JSON file autoseg reads is not valid JSON or lacks what it must hold.

    Also a ``ValueError``, so callers that treat damaged files as missing keep doing so.
    """


def load_json(cls: type[T], path: str | Path) -> T:
    """Read a dataclass written by ``dump_json``.

    Raises:
        OSError: the file cannot be opened.
        InvalidJsonFile: the file is not JSON or does not have the dataclass's shape; the
            message names the file.
    """
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise InvalidJsonFile(f"{path}: not valid JSON ({exc})") from exc
        except RecursionError as exc:
            raise InvalidJsonFile(f"{path}: nested too deeply; refused") from exc
    try:
        return from_dict(cls, data)
    except RecursionError as exc:
        raise InvalidJsonFile(f"{path}: nested too deeply; refused") from exc
    except (TypeError, ValueError, KeyError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise InvalidJsonFile(f"{path}: not a valid {cls.__name__} file ({reason})") from exc


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
