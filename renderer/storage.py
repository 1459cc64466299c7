"""Where tables, conditioning inputs and outputs live: a local (or NFS) path, or an object-store URI.

This is the one module that tells the two apart; everything else passes locations (str or Path) through
it. Object stores (`s3://bucket/key`, `gs://bucket/key`) go through pyarrow's filesystems, built by
`FileSystem.from_uri`, which takes credentials, region and endpoint from the environment as the cloud
SDKs do: for an S3-compatible store (MinIO, Ceph, R2, a test server) set `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL` (e.g. `http://127.0.0.1:9000`; the URL's scheme picks http or https). Local paths keep
plain os/pathlib semantics: atomic rename into place, exclusive create.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import WriteFailed

SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# local temporary files only: an object store never sees one
TEMP_MARK = ".tmp-"
# sha256 over a committed file: 0.5 ms for a 200 KB mp4 on a loaded 2-core CI machine (0.4-0.6 GB/s; md5 measured
# no faster, blake2b slower), nothing next to that video's encode, and a checksum any tool (sha256sum) can recompute
CHECKSUM = "sha256"


def is_uri(location) -> bool:
    """Whether `location` names an object (scheme://...) rather than a local path; a Path is always local."""
    return isinstance(location, str) and bool(SCHEME.match(location))


def join(base, relative: str) -> str:
    """`relative` (slash-separated, never climbing) under the folder or prefix `base`."""
    return base.rstrip("/") + "/" + relative if is_uri(base) else str(Path(base) / relative)


def parent(location) -> str:
    """The folder of a file: a table's relative input paths resolve against it."""
    if is_uri(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).resolve().parent)


def resolve(folder, relative: str) -> str:
    """A row's input path against its table's folder. In a bucket `..` stops at the bucket's root, so a row
    can never name another bucket or a local file."""
    if not is_uri(folder):
        return str((Path(folder) / relative).resolve())
    parts = urlsplit(folder)
    path = posixpath.normpath(posixpath.join("/" + parts.path.lstrip("/"), relative)).lstrip("/")
    return f"{parts.scheme}://{parts.netloc}/{path}"


def kind(location) -> str | None:
    """'file', 'dir' (a folder, or a prefix with objects under it) or None when nothing is there."""
    if not is_uri(location):
        path = Path(location)
        return None if not path.exists() else "dir" if path.is_dir() else "file"
    return {"File": "file", "Directory": "dir"}.get(_info(location).type.name)


def is_file(location) -> bool:
    return Path(location).is_file() if not is_uri(location) else kind(location) == "file"


def stat(location) -> tuple[int, int]:
    """(size, mtime in ns): a file's identity without reading it (an overwritten object gets a new mtime)."""
    if not is_uri(location):
        info = os.stat(location)
        return info.st_size, info.st_mtime_ns
    info = _info(location)
    if info.type.name != "File":
        raise FileNotFoundError(f"{location}: no such object")
    return info.size, info.mtime_ns


def file_names(folder) -> set[str]:
    """The names of the files directly in a folder or under a prefix (empty when there is none)."""
    return set(file_sizes(folder))


def file_sizes(folder) -> dict[str, int]:
    """Name -> size in bytes of the files directly in a folder or under a prefix (empty when there is none): one
    listing, where checking a million files one by one would cost a million requests to an object store (whose
    listing carries the sizes; a local folder's costs a stat per file, no open)."""
    if not is_uri(folder):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            with os.scandir(folder) as entries:
                return {entry.name: entry.stat().st_size for entry in entries if entry.is_file()}
        return {}
    from pyarrow.fs import FileSelector

    filesystem, path = _fs(folder)
    infos = filesystem.get_file_info(FileSelector(path, allow_not_found=True))
    return {posixpath.basename(info.path): info.size for info in infos if info.type.name == "File"}


@dataclass(frozen=True)
class Digest:
    """What was committed: a file's size in bytes and its checksum (CHECKSUM, hex)."""
    size: int
    checksum: str


def digest(local: Path) -> Digest:
    """The Digest of a finished local file: called on the temporary file of `writing` as the block's last step,
    it describes exactly the bytes that are renamed into place or uploaded."""
    checksum = hashlib.new(CHECKSUM)
    size = 0
    # in 1 MiB reads (hashlib.file_digest needs Python 3.11; the project runs on 3.10 too)
    with open(local, "rb") as file:
        while block := file.read(1 << 20):
            checksum.update(block)
            size += len(block)
    return Digest(size, checksum.hexdigest())


def digest_of(data: bytes) -> Digest:
    """The Digest of bytes read back from a committed file."""
    return Digest(len(data), hashlib.new(CHECKSUM, data).hexdigest())


def read_bytes(location) -> bytes:
    if not is_uri(location):
        return Path(location).read_bytes()
    filesystem, path = _fs(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def read_parquet(location):
    import pyarrow.parquet as pq

    if not is_uri(location):
        return pq.read_table(location)
    filesystem, path = _fs(location)
    return pq.read_table(path, filesystem=filesystem)


@contextlib.contextmanager
def opened(location):
    """What a reader of `location` opens: a local path as is, or an object as a seekable file, so a reader
    that needs only part of it (a video's header and first frames) fetches only ranges of it."""
    if not is_uri(location):
        yield str(location)
        return
    filesystem, path = _fs(location)
    with filesystem.open_input_file(path) as file:
        yield file


@contextlib.contextmanager
def writing(final, content_type: str | None = None):
    """A local temporary file to write into; when the block ends without error it becomes `final` in one
    step, otherwise it is removed. Locally that step is a rename from a sibling (atomic, and it replaces a
    planted symlink instead of following it). For an object store the finished file is uploaded from a
    local temporary folder: an S3 PUT or multipart upload (and a GCS upload) becomes visible only once it
    completes, so no partial object ever appears at `final`, and nothing temporary is written under the
    output prefix. Any OSError on the way (the block's own writes included) becomes WriteFailed naming `final`.
    `content_type` (object stores; for small files, which are uploaded from memory) is the type the object is
    served with, so that a browser shows a page straight from the bucket instead of downloading it."""
    try:
        if is_uri(final):
            with tempfile.TemporaryDirectory(prefix="render-") as folder:
                temp = Path(folder) / posixpath.basename(final)
                yield temp
                if content_type:
                    _upload_typed(temp, final, content_type)
                else:
                    _upload(temp, final)
            return
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f"{TEMP_MARK}{uuid.uuid4().hex[:12]}-{final.name}")
        try:
            yield temp
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
    except WriteFailed:
        raise
    except OSError as exc:
        raise _write_failed(final, exc) from exc


def _write_failed(final, exc: OSError) -> WriteFailed:
    """`exc` as WriteFailed: the path and the reason (an encoder's OSError carries its reason on its last line)."""
    lines = str(exc).strip().splitlines()
    reason = exc.strerror or (lines[-1] if lines else "")
    return WriteFailed(f"write_failed: {final}: {reason} ({type(exc).__name__})")


def create_exclusive(location, data: dict) -> bool:
    """Create `location` holding `data` as JSON unless something is there already; False when it is.
    Atomic on a local or NFS filesystem (O_EXCL). On an object store only best effort: pyarrow has no
    create-if-absent, so two runs that check in the same instant can both go ahead."""
    if is_uri(location):
        if kind(location) is not None:
            return False
        with writing(location) as temp:
            temp.write_text(json.dumps(data))
        return True
    try:
        fd = os.open(location, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as file:
        json.dump(data, file)
    return True


def delete(location) -> None:
    """Remove a file if it is there. On S3, pyarrow then writes a zero-byte marker object for the parent
    "folder" (`prefix/`) so that the folder does not vanish (apache/arrow#36275; it cannot be turned off)."""
    if not is_uri(location):
        Path(location).unlink(missing_ok=True)
        return
    filesystem, path = _fs(location)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_file(path)


def make_dirs(location) -> None:
    """Create a local folder; an object store has no folders to create (its keys carry the prefix)."""
    if not is_uri(location):
        Path(location).mkdir(parents=True, exist_ok=True)


def _upload(local: Path, final: str) -> None:
    # copy_files streams in C++: no Python-level interruption between the parts of one upload
    from pyarrow.fs import LocalFileSystem, copy_files

    filesystem, path = _fs(final)
    copy_files(str(local), path, source_filesystem=LocalFileSystem(), destination_filesystem=filesystem)


def _upload_typed(local: Path, final: str, content_type: str) -> None:
    # one write of the whole file: an interruption comes before it (nothing sent) or after it, when the stream's
    # close completes the object whole
    data = local.read_bytes()
    filesystem, path = _fs(final)
    with filesystem.open_output_stream(path, metadata={"Content-Type": content_type}) as stream:
        stream.write(data)


def _info(location: str):
    filesystem, path = _fs(location)
    return filesystem.get_file_info(path)


def _fs(location: str):
    """(pyarrow filesystem, path inside it) of a URI."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        raise ValueError(f"{location}: give a local location as a plain path")
    if parts.query or parts.fragment:
        raise ValueError(f"{location}: options in the URI are not supported; set them in the environment "
                         "(AWS_REGION, AWS_ENDPOINT_URL, ...)")
    filesystem, root = _filesystem(parts.scheme, parts.netloc)
    return filesystem, posixpath.join(root, parts.path.lstrip("/"))


@functools.cache
def _filesystem(scheme: str, netloc: str):
    """One filesystem per bucket and process: building one may ask the store for the bucket's region.
    Built by from_uri rather than S3FileSystem(): in pyarrow 26 only from_uri applies AWS_ENDPOINT_URL(_S3)
    from the environment (the constructor sends requests to AWS whatever the environment says)."""
    from pyarrow.fs import FileSystem

    return FileSystem.from_uri(f"{scheme}://{netloc}/")
