"""Where miningxr reads and writes: a local folder or an object-storage URL, behind one type.

Every store, prediction store, model and output folder is a :class:`Location`: a local (or
shared-filesystem) path, or a URL of object storage, ``s3://bucket/prefix``,
``gs://bucket/prefix``, ``az://container/prefix`` or ``memory://name`` (one process's memory,
for tests and notebooks). Zarr reads and writes a location through the store
:meth:`Location.zarr_store` gives (zarr's ``LocalStore`` on disk, its ``ObjectStore`` over
`obstore <https://developmentseed.org/obstore/>`_ elsewhere); the catalog, the tile index and
the metadata go through :meth:`~Location.read_bytes` and :meth:`~Location.put`, whose
``create=True`` is the one conditional write every backend offers (a rename that refuses to
replace on disk, ``If-None-Match: *`` on S3 and Azure, ``ifGenerationMatch=0`` on GCS).

Credentials come from each cloud's own chain, read by obstore: the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_ACCOUNT_NAME``...), web identity / workload identity and the instance metadata
service, and with ``AWS_PROFILE`` set, the profile through boto3. A URL that carries a secret
(``s3://key:secret@bucket``) is refused: it would end up in logs. miningxr logs URLs only.

>>> as_location("runs/s.zarr").local
PosixPath('runs/s.zarr')
>>> loc = as_location("memory://doc/s.zarr")
>>> loc.put("a/b.json", b"{}", create=True), loc.put("a/b.json", b"{}", create=True)
(True, False)
>>> [m.key for m in loc.list("a/")], loc.read_bytes("a/b.json")
(['a/b.json'], b'{}')
>>> as_location("ftp://host/s.zarr", what="the store")
Traceback (most recent call last):
...
miningxr.errors.UsageError: ftp://host/s.zarr: the store must be a local path or a URL of s3://, gs://, az:// (or abfs://) or memory:// storage, not ftp://
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ModelFileError, StoreError, UsageError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: schemes obstore reaches, and what each is
SCHEMES = {"s3": "S3", "gs": "GCS", "az": "Azure", "abfs": "Azure", "memory": "memory"}
#: parallel requests of one bulk call (conditional puts of the catalog, ranged reads)
PARALLEL = 16


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its key below the location, size and last change."""

    key: str
    size: int
    modified: float


@dataclass(frozen=True)
class Location:
    """A folder on disk or a prefix in object storage, with the few operations miningxr needs.

    Made by :func:`as_location`; ``str(loc)`` is the path or URL as given (normalized), and is
    what Dask tasks carry to the workers, which make their own store from it.
    """

    text: str

    @property
    def is_url(self) -> bool:
        return bool(_URL.match(self.text))

    @property
    def scheme(self) -> str:
        return urlsplit(self.text).scheme if self.is_url else "file"

    @property
    def local(self) -> Path:
        """The local path; a :class:`UsageError` for a URL (a local file API was asked for)."""
        if self.is_url:
            raise UsageError(f"{self.text} is in object storage; this step needs a local path")
        return Path(self.text)

    @property
    def name(self) -> str:
        return self.text.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.text

    def __truediv__(self, key: str) -> Location:
        if self.is_url:
            return Location(f"{self.text.rstrip('/')}/{key.strip('/')}")
        return Location(str(Path(self.text) / key))

    @property
    def parent(self) -> Location:
        if self.is_url:
            return Location(self.text.rstrip("/").rsplit("/", 1)[0])
        return Location(str(Path(self.text).parent))

    # ------------------------------------------------------------------ stores

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """A zarr store of this location: zarr's ``LocalStore`` on disk (the loader's fast path
        reads its shard files directly), its ``ObjectStore`` over obstore elsewhere."""
        from zarr.storage import LocalStore, ObjectStore

        if not self.is_url:
            return LocalStore(self.text, read_only=read_only)
        return ObjectStore(self.objects(), read_only=read_only)

    def objects(self) -> Any:
        """The obstore store rooted at this location (one per process and location)."""
        return _object_store(self.text if self.is_url else str(Path(self.text).resolve()))

    # ------------------------------------------------------------------ objects

    def read_bytes(self, key: str) -> bytes | None:
        """The object ``key`` below this location, or None when there is none."""
        if not self.is_url:  # a plain read: looking creates nothing
            try:
                return (Path(self.text) / key).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as e:
                raise _storage_error(self, e) from None
        import obstore
        from obstore.exceptions import BaseError, NotFoundError

        try:
            return bytes(obstore.get(self.objects(), key).bytes())
        except (NotFoundError, FileNotFoundError):
            return None
        except (BaseError, OSError) as e:
            raise _storage_error(self, e) from None

    def exists(self, key: str = "") -> bool:
        if not self.is_url:
            return (Path(self.text) / key).exists()
        if not key:
            return bool(self.list("", limit=1))
        import obstore
        from obstore.exceptions import BaseError, NotFoundError

        try:  # a HEAD: nothing of the object is read
            obstore.head(self.objects(), key)
        except (NotFoundError, FileNotFoundError):
            return False
        except (BaseError, OSError) as e:
            raise _storage_error(self, e) from None
        return True

    def put(self, key: str, data: bytes, *, create: bool = False) -> bool:
        """Write ``data`` at ``key``. With ``create``, only if no object is there (atomically,
        on every backend): False when one was."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError

        if not self.is_url:
            Path(self.text).mkdir(parents=True, exist_ok=True)  # obstore's LocalStore needs its root
        try:
            obstore.put(self.objects(), key, data, mode="create" if create else "overwrite")
        except (AlreadyExistsError, PreconditionError, FileExistsError):
            return False
        except (BaseError, OSError) as e:
            raise _storage_error(self, e) from None
        return True

    def list(self, prefix: str = "", *, limit: int | None = None) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursively)."""
        import obstore
        from obstore.exceptions import BaseError, NotFoundError

        if not self.is_url and not Path(self.text).is_dir():
            return []
        out: list[ObjectInfo] = []
        try:
            for batch in obstore.list(self.objects(), prefix or None, chunk_size=1000):
                for m in batch:
                    out.append(ObjectInfo(str(m["path"]), int(m["size"]), _seconds(m["last_modified"])))
                if limit is not None and len(out) >= limit:
                    return out[:limit]
        except (NotFoundError, FileNotFoundError):
            return []
        except (BaseError, OSError) as e:
            raise _storage_error(self, e) from None
        return out

    def delete(self, prefix: str = "") -> int:
        """Delete every object below ``prefix`` (the whole location by default)."""
        import obstore

        if not self.is_url:
            target = Path(self.text) / prefix
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            return 1
        from obstore.exceptions import NotFoundError

        # the object named ``prefix`` itself, and everything below it (a listing of ``a`` is
        # of ``a/...``)
        keys = [m.key for m in self.list(prefix)] + ([prefix] if prefix else [])
        for k in range(0, len(keys), 1000):
            with contextlib.suppress(NotFoundError, FileNotFoundError):
                obstore.delete(self.objects(), keys[k : k + 1000])
        return len(keys)

    def check_writable(self, *, what: str, within: str = "") -> None:
        """Write and delete a probe object (below ``within``): a missing bucket, wrong
        credentials or a read-only place are refused here, before any data is written."""
        probe = f"{within}.miningxr-write-test-{os.getpid()}-{threading.get_ident()}"
        try:
            self.put(probe, b"")
            self.delete(probe)
        except StoreError as e:
            raise StoreError(f"cannot create {what}: {e}") from None

    # ------------------------------------------------------------------ folders of files

    def fetch(self) -> Path:
        """A local file of this location: itself on disk, else a download cached by URL and
        ETag (a model, say, which Keras reads from a file): a HEAD per call, a GET per change."""
        if not self.is_url:
            return Path(self.text)
        import obstore
        from obstore.exceptions import BaseError, NotFoundError

        parent, key = self.parent, self.name
        try:
            head = obstore.head(parent.objects(), key)
        except (NotFoundError, FileNotFoundError):
            raise FileNotFoundError(self.text) from None
        except (BaseError, OSError) as e:
            raise _storage_error(self, e) from None
        tag = hashlib.sha256(f"{self.text}|{head.get('e_tag')}|{head['size']}".encode()).hexdigest()[:24]
        target = Path(tempfile.gettempdir()) / "miningxr-cache" / tag / key
        if not target.exists():
            data = parent.read_bytes(key)
            if data is None:
                raise FileNotFoundError(self.text)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{key}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)  # whole or not at all, for other processes reading it
        return target


def _seconds(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value or 0)


def _storage_error(loc: Location, e: Exception) -> StoreError:
    """An object-storage failure as a StoreError naming the fix; the message never holds a
    credential (obstore's errors name the URL and the HTTP status only)."""
    text = str(e).split("\n\nDebug source:")[0].strip()
    hint = (
        "check that the bucket exists and that this machine's credentials may write it (AWS_*, "
        "GOOGLE_*, AZURE_* environment variables, a profile, or workload identity)"
        if loc.is_url
        else "check the path and its permissions"
    )
    return StoreError(f"{loc}: {text[:400]}; {hint}")


_MEMORY: dict[str, Any] = {}
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=64)
def _object_store(text: str) -> Any:
    from obstore.store import LocalStore, MemoryStore, from_url

    if not _URL.match(text):
        return LocalStore(text, mkdir=True)
    parts = urlsplit(text)
    if parts.scheme == "memory":
        # one MemoryStore per location, in this process only (a process cluster cannot see it)
        with _LOCK:
            return _MEMORY.setdefault(text, MemoryStore())
    options: dict[str, Any] = {}
    if parts.scheme == "s3" and os.environ.get("AWS_PROFILE") and not os.environ.get("AWS_ACCESS_KEY_ID"):
        from obstore.auth.boto3 import Boto3CredentialProvider

        options["credential_provider"] = Boto3CredentialProvider()
    return from_url(text, **options)


#: what every function taking a store, a model or an output folder accepts
Where = str | os.PathLike | Location


def as_location(path: str | os.PathLike | Location, *, what: str = "the path") -> Location:
    """``path`` (a local path or an object-storage URL) as a :class:`Location`, checked.

    Refuses, naming the fix, a URL of a scheme obstore does not reach and one carrying
    credentials.
    """
    if isinstance(path, Location):
        return path
    text = os.fspath(path)
    if not _URL.match(text):
        return Location(text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return Location(parts.path)
    if scheme not in SCHEMES:
        raise UsageError(
            f"{text}: {what} must be a local path or a URL of s3://, gs://, az:// (or abfs://) or "
            f"memory:// storage, not {scheme}://"
        )
    if parts.username or parts.password:
        raise UsageError(
            f"{what} URL carries credentials; give them through the environment (AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY), a "
            "profile or workload identity, never in the URL (it would be logged)"
        )
    if not parts.netloc:
        raise UsageError(f"{text}: {what} URL names no bucket; give {scheme}://BUCKET/PATH")
    return Location(f"{scheme}://{parts.netloc}/{parts.path.strip('/')}".rstrip("/"))


def local_path(path: str | os.PathLike, *, what: str = "the path", fix: str = "copy it here first") -> Path:
    """``path`` as a :class:`~pathlib.Path`, for what only a local file can be (a polygon file,
    a log file); a :class:`~miningxr.errors.UsageError` naming the ``fix`` for a URL."""
    loc = as_location(path, what=what)
    if loc.is_url:
        raise UsageError(f"{loc} is a URL, and {what} must be a local or shared-filesystem path; {fix}")
    return loc.local


@contextlib.contextmanager
def staged(loc: Location) -> Iterator[Path]:
    """A local folder to write ``loc``'s files in: ``loc`` itself on disk; for a URL a
    temporary folder whose files are uploaded to it when the block ends without error (each
    file one PUT, so a reader sees a file whole or not at all)."""
    if not loc.is_url:
        yield loc.local  # made by the writer once it has something to write
        return
    with tempfile.TemporaryDirectory(prefix="miningxr-stage-") as tmp:
        yield Path(tmp)
        upload(Path(tmp), loc)


def upload(folder: Path, loc: Location) -> int:
    """Copy every file below ``folder`` to ``loc`` (the same relative keys); returns the count."""
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in folder.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda p: loc.put(p.relative_to(folder).as_posix(), p.read_bytes()), files))
    return len(files)


def model_file(model: str | os.PathLike | Location) -> Path:
    """The local ``.keras`` file of a model path or URL (a URL downloaded once, cached by its
    ETag), or a :class:`~miningxr.errors.ModelFileError` naming the fix when there is none."""
    loc = as_location(model, what="the model")
    try:
        p = loc.fetch()
    except FileNotFoundError:
        p = None
    if p is None or not p.exists():
        raise ModelFileError(f"model file {loc} does not exist; train one with `miningxr train`")
    return p
