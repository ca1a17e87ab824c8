"""On-disk plumbing shared by every file and folder format simsearch writes.

This is the only module in ``simsearch/`` that calls ``os.fsync``,
``os.replace`` or ``os.rename``. Every format (index files, the CLI index
folder, sharded manifests, dedup state, saved matchers, exported encoders,
caches, tables) writes through these helpers, so each gets the same
guarantees:

- **Atomic files.** :func:`atomic_write` / :func:`atomic_write_bytes` /
  :func:`atomic_write_path` write beside the destination under a unique
  temporary name (``mkstemp``: ``O_EXCL``, so two writers never share one),
  flush and ``fsync`` it, ``os.replace`` it over the destination and ``fsync``
  the folder. A reader sees the old file or the whole new one; with two
  concurrent writers the last rename wins with a whole file.
- **Atomic folders.** :func:`atomic_dir` builds a folder under a temporary
  name and :func:`swap_dir` puts it in place of the old one.
- **Manifests.** :func:`write_manifest` / :func:`read_manifest` keep a JSON
  file naming the format, its version and the sha256 of each member file, and
  read it back with errors that name the problem (:class:`CorruptFileError`,
  :class:`FormatVersionError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from simsearch.errors import CorruptFileError, FormatVersionError, SignatureError

try:  # POSIX only; elsewhere concurrent writers just do the work twice.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "fsync_file",
    "fsync_dir",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_path",
    "publish",
    "atomic_dir",
    "swap_dir",
    "recover_dir",
    "sha256_file",
    "exclusive_lock",
    "write_json",
    "read_json",
    "write_manifest",
    "read_manifest",
    "check_version",
    "cache_dir",
    "signing_key",
    "sign_file",
    "verify_signature",
    "move",
    "safe_member",
]

_HASH_CHUNK = 1 << 20
# (path, size, mtime_ns) -> sha256 hex; hashing 90 MB of weights costs ~0.2 s,
# and an encoder is often built several times per process.
_hash_memo: dict[tuple[int, ...], str] = {}
_HASH_MEMO_SIZE = 4096  # digests kept; the oldest goes first
_hash_lock = threading.Lock()

PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------ durability
def fsync_file(f: IO[Any] | int) -> None:
    """Flush (for file objects) and ``fsync`` an open file or file descriptor."""
    if isinstance(f, int):
        os.fsync(f)
        return
    f.flush()
    os.fsync(f.fileno())


def fsync_dir(path: PathLike) -> None:
    """``fsync`` a folder so that new names and renames inside it survive a crash.

    A no-op where the platform cannot open folders (Windows).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def _fsync_path(path: PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _tmp_beside(path: Path, suffix: str = ".tmp") -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return tmp


# --------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The destination. Its folder must exist.
    mode : {"wb", "w"}
        Binary or text.
    encoding : str, optional
        For text mode (default UTF-8).

    Yields
    ------
    file object
        Write the whole content to it. If the block raises, the temporary file
        is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            fsync_file(f)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); creates the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_path(path: PathLike, write: Callable[[str], Any], *, suffix: str = ".tmp") -> None:
    """Atomically produce ``path`` with a writer that only takes a file name.

    For writers that open the file themselves (``pyarrow.parquet.write_table``,
    ``onnx.save``, the native index's ``save``): ``write(tmp_name)`` writes a
    unique temporary file beside ``path``, which is then fsync-ed and renamed
    over ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The destination; its folder must exist.
    write : callable
        ``write(tmp_name)``; whatever it returns is ignored.
    suffix : str
        Suffix of the temporary name, for writers that look at it.
    """
    dest = Path(path)
    tmp = _tmp_beside(dest, suffix)
    try:
        write(tmp)
        publish(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish(tmp: PathLike, target: PathLike) -> None:
    """``fsync`` the finished file ``tmp`` and rename it over ``target`` (same folder)."""
    _fsync_path(tmp)
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


# ------------------------------------------------------------- atomic folders
@contextlib.contextmanager
def atomic_dir(dest: PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``dest``; on a clean exit it becomes ``dest``.

    Every file written into the yielded folder is fsync-ed, then the folder
    is swapped in with :func:`swap_dir`. If the block raises, the temporary
    folder is removed and ``dest`` is untouched.

    Parameters
    ----------
    dest : str or os.PathLike
        The folder to create or replace.
    replace : bool
        If False and ``dest`` exists, raise ``FileExistsError`` at the end
        instead of replacing it.
    """
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                _fsync_path(os.path.join(root, name))
            fsync_dir(root)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private to this user
        if not replace and dest.exists():
            raise FileExistsError(f"{str(dest)!r} exists")
        swap_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_dir(tmp: PathLike, dest: PathLike) -> None:
    """Put the folder ``tmp`` in place of ``dest`` (created if absent); the old ``dest`` is deleted.

    On Linux the two folders are exchanged in one ``renameat2(RENAME_EXCHANGE)``
    call, so ``dest`` names the old folder or the new one at every moment.
    Elsewhere the old folder is first renamed aside to ``.NAME.old-*``; a crash
    between the two renames leaves ``dest`` absent, and :func:`recover_dir`
    (which every folder reader calls) puts the old folder back.
    """
    tmp, dest = Path(tmp), Path(dest)
    if not dest.exists():
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
        return
    if _exchange(tmp, dest):
        fsync_dir(dest.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rmdir(old)
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux's renameat2; False where it is unavailable."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
            except (OSError, AttributeError):  # old glibc, or no libc symbol
                pass
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False  # EINVAL/ENOSYS (file system or kernel without it): use the two renames


def recover_dir(dest: PathLike) -> None:
    """Finish a folder swap that a crash interrupted: if ``dest`` is absent, restore its ``.NAME.old-*`` copy.

    Called by folder readers before they look at ``dest``; a no-op when
    ``dest`` exists or nothing is left to restore.
    """
    dest = Path(dest)
    if dest.exists() or not dest.parent.is_dir():
        return
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds:
        if old.is_dir():
            with contextlib.suppress(FileExistsError, OSError):
                os.rename(old, dest)
                fsync_dir(dest.parent)
                return


def move(src: PathLike, dst: PathLike) -> None:
    """Rename ``src`` over ``dst`` (same file system) and make the rename durable."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


# ------------------------------------------------------------ scratch files
@contextlib.contextmanager
def scratch_path(suffix: str = "", data: Any = None) -> Iterator[str]:
    """Yield a unique temporary file name for a library that reads or writes only by path.

    For hand-offs such as hnswlib's ``save_index(path)`` / ``load_index(path)``:
    the file lives in the system's temporary folder and is removed when the
    block ends, so nothing is fsync-ed. Never publish it; use
    :func:`atomic_write_path` for files that must survive.

    Parameters
    ----------
    suffix : str
        Suffix of the temporary name.
    data : bytes-like, optional
        Written to the file before it is yielded.

    Yields
    ------
    str
        The file's path.
    """
    fd, tmp = tempfile.mkstemp(prefix="simsearch-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            if data is not None:
                f.write(memoryview(data).cast("B"))
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -------------------------------------------------------------- hashing, locks
def sha256_file(path: PathLike) -> str:
    """Return the sha256 hex digest of a file, memoised by its inode, size, mtime and ctime.

    The key is the file's identity, not its name: hard links and copies made
    by ``link`` share one digest, and any write (which moves ``ctime``, a
    time no caller can set back) makes a new one.
    """
    p = Path(path)
    st = p.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _hash_lock:
        cached = _hash_memo.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_memo[key] = value
        while len(_hash_memo) > _HASH_MEMO_SIZE:
            del _hash_memo[next(iter(_hash_memo))]
    return value


@contextlib.contextmanager
def exclusive_lock(directory: PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory/.lock`` (between processes and threads)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------- JSON and manifests
def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: PathLike, what: str, *, max_bytes: int = 64 << 20) -> dict[str, Any]:
    """Read a JSON object from ``path``; anything else is a :class:`CorruptFileError` naming ``what``.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    what : str
        What the file is, for the message ("the sharded index manifest").
    max_bytes : int
        Larger files are refused before they are read.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CorruptFileError
        If it is too large, not UTF-8, not JSON, or not a JSON object.
    """
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise CorruptFileError(f"{what} {str(p)!r} is {size} bytes, more than the {max_bytes} allowed")
    try:
        obj = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CorruptFileError(f"{what} {str(p)!r} is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{what} {str(p)!r} is not a JSON object")
    return obj


def check_version(found: Any, supported: Collection[int], what: str, where: PathLike) -> int:
    """Return ``found`` if it is a supported format version, else raise :class:`FormatVersionError`."""
    if not isinstance(found, int) or isinstance(found, bool):
        raise CorruptFileError(f"{what} {str(where)!r} has no valid format_version (got {found!r})")
    if found not in supported:
        newest = max(supported)
        hint = " (written by a newer simsearch: upgrade)" if found > newest else ""
        raise FormatVersionError(
            f"{what} {str(where)!r} has format_version {found}; this simsearch reads {sorted(supported)}{hint}"
        )
    return found


def write_manifest(
    directory: PathLike,
    name: str,
    *,
    format: str,
    version: int,
    fields: Mapping[str, Any],
    files: Collection[str] = (),
) -> None:
    """Write ``directory/name``: ``format``, ``format_version``, ``fields`` and each file's sha256.

    Parameters
    ----------
    directory : str or os.PathLike
        The folder holding the manifest and the files it lists.
    name : str
        The manifest's file name (``"manifest.json"``, ``"meta.json"``).
    format : str
        The format's name, checked by :func:`read_manifest`.
    version : int
        The format version.
    fields : mapping
        The format's own JSON-serialisable fields; ``format``,
        ``format_version`` and ``checksums`` are reserved.
    files : collection of str
        Names (relative to ``directory``) whose sha256 the manifest records.
    """
    reserved = {"format", "format_version", "checksums"} & set(fields)
    if reserved:
        raise ValueError(f"manifest fields {sorted(reserved)} are reserved")
    directory = Path(directory)
    body: dict[str, Any] = {"format": format, "format_version": version, **fields}
    if files:
        body["checksums"] = {f: sha256_file(directory / f) for f in files}
    write_json(directory / name, body)


def read_manifest(
    directory: PathLike,
    name: str,
    *,
    format: str | Collection[str],
    versions: Collection[int],
    what: str,
    verify: bool = True,
    required: Collection[str] = (),
) -> dict[str, Any]:
    """Read and check a manifest written by :func:`write_manifest`.

    Parameters
    ----------
    directory, name
        Where the manifest is.
    format : str or collection of str
        The accepted format name(s).
    versions : collection of int
        The readable format versions.
    what : str
        What the folder is, for messages.
    verify : bool
        Recompute the sha256 of every listed file and compare.
    required : collection of str
        Members the format always writes: a manifest whose checksums do not
        list one of them was edited, and is refused.

    Returns
    -------
    dict
        The manifest, ``format`` and ``format_version`` included.

    Raises
    ------
    FileNotFoundError
        If there is no manifest.
    CorruptFileError
        If the manifest is not a JSON object, names another format, lists a
        file that is missing or escapes the folder, or a checksum differs.
    FormatVersionError
        If its version is not readable here.
    """
    directory = Path(directory)
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"{str(directory)!r} is not a {what}: it has no {name}")
    body = read_json(path, f"the {what} manifest")
    accepted = {format} if isinstance(format, str) else set(format)
    if not isinstance(body.get("format"), str) or body["format"] not in accepted:  # a list is unhashable
        raise CorruptFileError(
            f"{str(path)!r} is not a {what} manifest (format {body.get('format')!r}, expected {sorted(accepted)})"
        )
    check_version(body.get("format_version"), versions, f"the {what}", directory)
    checksums = body.get("checksums", {})
    if not isinstance(checksums, dict):
        raise CorruptFileError(f"{str(path)!r}: 'checksums' is not an object")
    unlisted = [m for m in required if m not in checksums]
    if unlisted:
        raise CorruptFileError(f"{str(path)!r} lists no checksum for {unlisted}: the {what} manifest was edited")
    for member, digest in checksums.items():
        member_path = safe_member(directory, member, what)
        if not member_path.is_file():
            raise CorruptFileError(f"the {what} {str(directory)!r} lists {member!r}, which is missing")
        if verify and sha256_file(member_path) != digest:
            raise CorruptFileError(f"{str(member_path)!r} does not match its checksum in {name}: the {what} is damaged")
    return body


def safe_member(directory: PathLike, member: Any, what: str) -> Path:
    """Return ``directory/member`` if ``member`` is a plain relative name inside it, else raise CorruptFileError."""
    if not isinstance(member, str) or not member or os.path.isabs(member) or ".." in Path(member).parts:
        raise CorruptFileError(f"the {what} {str(directory)!r} names a file outside it: {member!r}")
    return Path(directory) / member


# ------------------------------------------------------------------ locations
def cache_dir() -> Path:
    """Return the root folder of simsearch's caches: ``$SIMSEARCH_CACHE``, else the user cache folder.

    Exported models, image graphs and the default embedding cache live below
    it; it is not created here.
    """
    env = os.environ.get("SIMSEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("simsearch"))


# ------------------------------------------------------------------ signing
SIGNATURE_SUFFIX = ".sig"
_SIGNATURE_FORMAT = "simsearch.signature"
SIGNING_KEY_ENV = "SIMSEARCH_SIGNING_KEY"


def signing_key(key: str | bytes | None) -> bytes | None:
    """The HMAC key to use: ``key`` if given, else ``$SIMSEARCH_SIGNING_KEY``, else None (unsigned).

    Raises
    ------
    ValueError
        If the key is empty.
    TypeError
        If it is neither str nor bytes.
    """
    if key is None:
        env = os.environ.get(SIGNING_KEY_ENV)
        if not env:
            return None
        key = env
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"signing_key must be str or bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("signing_key is empty")
    return bytes(key)


def _file_hmac(path: PathLike, key: bytes) -> tuple[str, int]:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            mac.update(chunk)
            size += len(chunk)
    return mac.hexdigest(), size


def sign_file(path: PathLike, key: bytes) -> None:
    """Write ``path + ".sig"``: an HMAC-SHA256 of the file's bytes under ``key`` (atomic).

    The signature sits beside the file so the file's own format is unchanged
    and unsigned readers keep working; :func:`verify_signature` refuses a file
    whose signature is missing or does not match before anything parses it.
    """
    digest, size = _file_hmac(path, key)
    write_json(os.fspath(path) + SIGNATURE_SUFFIX, {"format": _SIGNATURE_FORMAT, "alg": "hmac-sha256", "size": size, "hmac": digest})


def verify_signature(path: PathLike, key: bytes) -> None:
    """Raise :class:`~simsearch.errors.SignatureError` unless ``path`` carries a valid signature under ``key``.

    Run before the file is parsed: a file not written by a holder of the key
    never reaches a parser. (A file replaced between this check and its
    parsing is not covered: replace signed files only by rename, as the
    library does.)
    """
    sig_path = os.fspath(path) + SIGNATURE_SUFFIX
    if not os.path.isfile(sig_path):
        raise SignatureError(f"{os.fspath(path)!r} is not signed (no {os.path.basename(sig_path)}), and a signing key is set")
    try:
        body = read_json(sig_path, "the signature", max_bytes=4096)
    except CorruptFileError as err:
        raise SignatureError(str(err)) from None
    if body.get("format") != _SIGNATURE_FORMAT or body.get("alg") != "hmac-sha256" or not isinstance(body.get("hmac"), str):
        raise SignatureError(f"{sig_path!r} is not a simsearch HMAC-SHA256 signature")
    digest, size = _file_hmac(path, key)
    if body.get("size") != size or not hmac.compare_digest(digest, body["hmac"]):
        raise SignatureError(f"{os.fspath(path)!r} does not match its signature: it was changed, or signed with another key")
