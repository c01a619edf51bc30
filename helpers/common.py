"""Helpers shared by synth.py, distill.py, zeroshot.py, bench.py and toy.py.

Nothing here is a stage of the pipeline; it is the plumbing every stage needs:
  - command lines: an `Args` dataclass becomes an argparse parser (`parse_args`), and
    `UserError` + `@entrypoint` turn bad input into one line on stderr and exit code 2;
  - reproducibility: `seed_everything`, `fingerprint`;
  - the file-system boundary: `atomic_write`, `save_json`, `save_torch` (temp file + rename, so a kill
    never leaves a half-written file), `read_json` / `read_jsonl` (encoding, type and key checks),
    `prepare_out_dir` (exists as a file, not writable, read-only), `list_images` (one extension list, one rule for
    the folders that are skipped; UNDECODABLE: what an image that cannot be read raises), and synth.py's folder
    format (`load_manifest`).
Devices, torchrun and autocast live in helpers/devices.py; models (teacher and student) in helpers/models.py.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import errno
import random
import secrets
import shutil
import sys
import tempfile
import typing
import warnings
from functools import wraps
from pathlib import Path

import numpy as np
import torch
from PIL import Image


_UMASK = os.umask(0)  # read once (os.umask is process-wide): atomic_write gives files the usual permissions
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file under the user's umask (0644 under umask 022)


# ----------------------------------------------------------------------------------------------
# command lines and errors

_LOCKS = []  # run-folder locks this process holds, newest last (helpers/run_lock.py); @entrypoint releases them


class UserError(Exception):
    """Bad input the user can fix. `@entrypoint` prints it as one line and exits with code 2."""


def entrypoint(main):
    """Decorate a script's `main(argv=None)`: a UserError becomes `error: ...` on stderr + exit 2.

    Library callers (tests, other scripts) that call the inner functions still get the exception.
    """
    @wraps(main)
    def wrapper(argv=None):
        held, ended = len(_LOCKS), False
        try:
            result = main(argv)
            ended = True
            return result
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130)
        except RuntimeError as e:  # a loader process killed for want of shared memory (Docker's 64 MB /dev/shm)
            if "shared memory" not in str(e) and "Bus error" not in str(e):
                raise
            print(f"error: a data loader process ran out of shared memory ({str(e).splitlines()[0][:120]}): give the "
                  f"container more (docker run --ipc=host or --shm-size 8g), or pass fewer --workers or a smaller "
                  f"--batch-size", file=sys.stderr)
            raise SystemExit(2)
        except OSError as e:  # the file system said no mid-run (disk full, read-only, permissions): one line
            if e.errno not in FS_ERRORS:
                raise
            where = f" ({e.filename})" if e.filename else ""
            print(f"error: {e.strerror or e}{where}: {FS_ERRORS[e.errno]}", file=sys.stderr)
            raise SystemExit(2)
        finally:  # the run-folder locks this main took (a script called in-process by another keeps the caller's);
            while len(_LOCKS) > held:  # a refused or failed run also removes the folders it made, if still empty
                _LOCKS[-1].release(undo=not ended)
    return wrapper


FS_ERRORS = {  # errno -> what to do; files are written atomically, so what was there before is intact
    errno.ENOSPC: "free some space (or choose another --out), then rerun the command (distill.py: add --resume)",
    errno.EDQUOT: "free some space under your quota, then rerun the command (distill.py: add --resume)",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "no permission: choose a folder you can write to",
    errno.EPERM: "not permitted: choose a folder you can write to",
}


def _unwrap_optional(tp):
    """Optional[int] -> (int, True); int -> (int, False)."""
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default and the script's docstring as written (its command lines intact)."""


class _Parser(argparse.ArgumentParser):
    """A bad flag or value (unknown flag, invalid choice, not a number) is one `error:` line and exit 2, as every
    other bad input; the usage block stays behind --help."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def parse_args(args_cls, argv=None, description=None):
    """Build an argparse parser from a dataclass and parse `argv` into an instance of it.

    Field `foo_bar` becomes `--foo-bar`; a bool field becomes a flag (`--x` / `--no-x`); a field's
    `metadata={"help": ..., "choices": ...}` become argparse's help and choices. Argparse itself
    prints usage and exits with code 2 on an unknown flag or a bad value.
    """
    hints = typing.get_type_hints(args_cls)
    parser = _Parser(description=description or (args_cls.__doc__ or "").strip(), formatter_class=_HelpFormatter)
    for f in dataclasses.fields(args_cls):
        tp, optional = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw = dict(default=default, help=f.metadata.get("help", " "), dest=f.name)
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) in (list, tuple):
            (item_tp, *_) = typing.get_args(tp) or (str,)
            parser.add_argument(flag, type=item_tp, nargs="+" if not optional else "*", **kw)
        else:
            parser.add_argument(flag, type=tp, **kw)
    ns = parser.parse_args(argv)
    return args_cls(**vars(ns))


def first_line(e, n=200):
    """An exception's first message line (its type's name when it has none), cut to n characters: what a one-line
    error or a log line quotes of it."""
    return (str(e).splitlines() or [type(e).__name__])[0][:n]


def require(condition, message):
    """`assert` for user input: raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)


def require_numbers(args, positive=(), non_negative=(), finite=()):
    """The Args checks every script makes on its numeric flags, one line naming the flag: `positive` fields must
    be > 0 (and finite), `non_negative` >= 0, `finite` not nan or inf."""
    for name in (*positive, *non_negative, *finite):
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        require(isinstance(value, (int, float)) and math.isfinite(value), f"{flag} must be a number, not {value}")
        require(name not in positive or value > 0, f"{flag} must be > 0, not {value}")
        require(name not in non_negative or value >= 0, f"{flag} must be >= 0, not {value}")


# ----------------------------------------------------------------------------------------------
# reproducibility

def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices). Explicit Generators are still used where bytes
    must repeat independently of what else consumed the global streams."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fingerprint(obj, n=16):
    """Short stable hex digest of a JSON-serialisable object (cache keys, data digests)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]

# ----------------------------------------------------------------------------------------------
# files

@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Write `path` through a temp file in the same folder, renamed into place on success.

    A kill or an exception leaves either the old file or the new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600 files; outputs should be readable like any other
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file: name the one we write
            e.filename = str(path)
        raise


def move_into_place(tmp, folder):
    """Rename the finished folder `tmp` to `folder`; an existing folder (--overwrite) is renamed aside first, then
    removed, so `folder` is at every moment the old one or the new one, whole."""
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.old"
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old)


def honour_umask(folder):
    """Give every file below `folder` the mode a plain open() would (FILE_MODE): for files written by libraries
    that create them through temp files of their own (0600), such as safetensors."""
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, FILE_MODE)


def save_json(obj, path):
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False, default=str)
        f.write("\n")


def append_jsonl(obj, path):
    """One JSON line at the end of a log file (a kill loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


def save_torch(obj, path):
    """torch.save, atomically. Serialised in memory first: torch's zip writer reports a failed write (a full disk)
    as a RuntimeError without the OS error, the plain file write below reports it as the OSError it is."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getbuffer())


def prepare_out_dir(path, flag="--out", create=True):
    """Check that the output folder `path` can be written, and create it (with its parents) unless create=False,
    or fail with one line: it exists as a file, a parent is a file, it cannot be created, or it is not writable
    (permissions, a read-only file system). Returns the Path."""
    path = Path(path).expanduser()
    require(not path.exists() or path.is_dir(), f"{flag} {path} is a file, not a folder: pass a folder path")
    probe = path
    while not create and not probe.exists():  # without creating anything: the nearest existing parent decides
        probe = probe.parent
    require(probe.is_dir() or create, f"{flag} {path}: {probe} is a file, not a folder: pass a folder path")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=probe).close()  # os.access misses read-only mounts and ACLs: try a real write
    except OSError as e:
        raise UserError(f"{flag} {path} is not a writable folder ({e.strerror or type(e).__name__}): choose "
                        f"another folder") from None
    return path


def read_text(path, what="file"):
    """A UTF-8 text file, or one line naming the path and what is wrong with it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}): rewrite it, or remove it to start "
                        f"afresh") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({e.strerror or type(e).__name__})") from None


def read_json(path, what="file", kind=dict, keys=()):
    """Parse a JSON file that must hold a `kind` (dict or list) with the given top-level `keys`."""
    text = read_text(path, what)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e})") from None
    require(isinstance(obj, kind), f"{what} {path} holds a JSON {type(obj).__name__}, not a "
                                   f"{'JSON object' if kind is dict else kind.__name__}")
    missing = [k for k in keys if k not in obj]
    require(not missing, f"{what} {path} lacks {', '.join(map(repr, missing))}: it was not written by this "
                         f"version, or was edited; remove it to start afresh")
    return obj


def read_jsonl(path, what="file"):
    """[(line number, JSON value)] of a JSON-lines file, blank lines skipped; a bad line is one UserError."""
    rows = []
    for lineno, line in enumerate(read_text(path, what).splitlines(), 1):
        if line.strip():
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno} is not valid JSON") from None
    return rows


def cache_root():
    """Where derived artefacts that are cheap to rebuild live (e.g. text classifiers)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zeroshot-distill"


# ----------------------------------------------------------------------------------------------
# image folders and synth.py's folder format, read by distill.py and zeroshot.py

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# What opening or decoding an image that cannot be used raises (PIL: truncated, unidentified, bad header; the file
# missing). A decompression bomb too: PIL refuses an image whose header claims more than 2 x Image.MAX_IMAGE_PIXELS
# (89,478,485) pixels and only warns above 1 x; we make the warning an error, so every image above 89.5 megapixels
# (about 9459 x 9459) is skipped and named like any undecodable image, never decoded into gigabytes of memory.
UNDECODABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)
warnings.simplefilter("error", Image.DecompressionBombWarning)


def skipped_folder(name):
    """Folders no image list descends into: hidden ones, and <data>/cache (the teacher cache and image store)."""
    return name.startswith(".") or name == "cache"


def list_images(folder):
    """Sorted paths (relative, posix) of the image files below `folder`, outside skipped folders."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                  and not any(skipped_folder(q) for q in p.relative_to(folder).parts[:-1]))


def class_folders(folder):
    """The class subfolders of a class_name/*.jpg folder, sorted (their index is the label)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not skipped_folder(p.name))


def load_manifest(folder):
    """Read a synth.py output folder (the format: docs/synth.md).

    folder/manifest.jsonl: one JSON object per image with keys path (relative to folder), label (class
    index), classname, prompt, seed, generator. folder/synth.json: the resolved run settings, with
    "dataset" (a helpers/domains.py name or null) and "classnames" (index -> name).
    Returns (items: list of (relative path, label), classnames, info dict from synth.json).
    """
    folder = Path(folder)
    manifest = folder / "manifest.jsonl"
    require(manifest.is_file(), f"{folder} has no manifest.jsonl, so it is not a synth.py folder")
    info = read_json(folder / "synth.json", "synth.json") if (folder / "synth.json").is_file() else {}
    require(info.get("classnames") is None or (isinstance(info["classnames"], list) and all(
        isinstance(c, str) for c in info["classnames"])), f"{folder / 'synth.json'}: classnames is not a list of names")
    items, names = [], {}
    for lineno, rec in read_jsonl(manifest, "manifest"):
        try:
            items.append((str(rec["path"]), int(rec["label"])))
            names.setdefault(int(rec["label"]), rec.get("classname"))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{manifest}:{lineno} is not a valid manifest line (need JSON with path and "
                            f"label)") from None
    classnames = info.get("classnames")
    if not classnames:
        num = max(names) + 1 if names else 0
        classnames = [names.get(i) or f"class {i}" for i in range(num)]
    require(all(0 <= y < len(classnames) for _, y in items),
            f"{manifest} has labels outside 0..{len(classnames) - 1} (synth.json's classnames)")
    return items, list(classnames), info
