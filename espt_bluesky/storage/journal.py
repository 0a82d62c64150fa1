"""A durable journal of documents: the write-ahead backup of every run, readable after any crash.

One journal file holds the ``(name, doc)`` pairs of one run (or of any document stream: the NATS bus uses it as
its fallback too).  It is written *before* anything else sees a document, so whatever happens to the server or to
this process afterwards, the documents are on disk.

Format (``<key>.journal``)::

    b"ESPT-JOURNAL 1\\n"                                   file header
    then records:  MAGIC  length(u32 LE)  crc32(u32 LE)  payload

``MAGIC`` is ``b"\\xff\\xfeJR"``; ``crc32`` covers the length field and the payload; the payload is ASCII JSON
``{"seq": n, "name": ..., "doc": ...}`` (``seq`` counts records from 0) and the last record of a journal closed
cleanly is ``{"seq": n, "end": true}``.  Byte 0xFF never occurs in ASCII, so after a damaged stretch the reader
finds the next record by its MAGIC exactly (no guessing), and the checksum tells an intact record from a damaged
one.  Missing ``seq`` numbers say how many records a damaged stretch took with it.

Document values that JSON lacks are tagged and come back as they were: numpy arrays (dtype, shape and bytes,
base64), numpy scalars (as Python numbers), bytes, complex numbers, datetimes; NaN and infinities are kept;
enums become their values, paths and sets plain JSON; anything else is recorded as its ``repr`` (logged), never
dropped.

Writing: :func:`open_journal` (a new file, never an existing one), :meth:`Journal.append`, :meth:`Journal.finish`
(the end record), :meth:`Journal.close`.  An open journal holds an exclusive ``flock`` on its file
(:func:`journal_in_use`), so a replay never takes a run that is still being written.
Every record is written with one ``write`` system call (it survives the death of this process at once); it reaches
the disk (``fsync``) at once with ``fsync="always"``, or within moments from a background thread with
``fsync="group"`` (the default: the caller never waits for the disk), and always on :meth:`Journal.close`.

Reading: :func:`read_journal` returns every intact record and a list of :class:`Damage` (truncated tail,
corrupted stretches, missing records).
"""

from __future__ import annotations

import base64
import datetime as _dt
import enum
import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterable

import numpy as np

from ..errors import InvalidArgument

logger = logging.getLogger(__name__)

HEADER = b"ESPT-JOURNAL 1\n"
MAGIC = b"\xff\xfeJR"
_LEN_CRC = struct.Struct("<II")
RECORD_OVERHEAD = len(MAGIC) + _LEN_CRC.size
SUFFIX = ".journal"
FSYNC_POLICIES = ("always", "group", "close")


# ----------------------------------------------------------------------------------------------- encoding
_warned_types: set[type] = set()


def _default(o: Any) -> Any:
    """JSON for the values ``json`` does not know (see the module docstring)."""
    if isinstance(o, np.ndarray):
        if o.dtype.kind == "O" or o.dtype.fields is not None:
            return o.tolist()
        a = np.ascontiguousarray(o)
        return {"__ndarray__": base64.b64encode(a.tobytes()).decode("ascii"), "dtype": a.dtype.str,
                "shape": list(a.shape)}
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (bytes, bytearray, memoryview)):
        return {"__bytes__": base64.b64encode(bytes(o)).decode("ascii")}
    if isinstance(o, complex):
        return {"__complex__": [o.real, o.imag]}
    if isinstance(o, _dt.datetime):
        return {"__datetime__": o.isoformat()}
    if isinstance(o, (_dt.date, _dt.time)):
        return o.isoformat()
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, PurePath):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=repr)
    if hasattr(o, "__array__"):  # xarray, dask, pint ... arrays
        return np.asarray(o)
    if type(o) not in _warned_types:
        _warned_types.add(type(o))
        logger.warning("journal: a document holds a %s, recorded as its repr", type(o).__name__)
    return {"__repr__": repr(o)}


def _sanitize(o: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of ``o`` for what the fast path refuses (non-string keys, cycles, deep nesting)."""
    if depth > 200:
        return {"__repr__": repr(o)[:10_000]}
    if isinstance(o, dict):
        return {k if isinstance(k, str) else str(k): _sanitize(v, depth + 1) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_sanitize(v, depth + 1) for v in o]
    if o is None or isinstance(o, (str, bool, int, float)):
        return o
    return _sanitize(_default(o), depth + 1)


def encode(obj: Any) -> bytes:
    """ASCII JSON of ``obj`` with numpy and the other document types tagged (see :func:`decode`)."""
    try:
        text = json.dumps(obj, default=_default, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(_sanitize(obj), default=_default, separators=(",", ":"), allow_nan=True)
    return text.encode("ascii")


def _hook(d: dict) -> Any:
    if len(d) <= 3:
        if "__ndarray__" in d:
            raw = base64.b64decode(d["__ndarray__"])
            return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
        if "__bytes__" in d:
            return base64.b64decode(d["__bytes__"])
        if "__complex__" in d:
            re, im = d["__complex__"]
            return complex(re, im)
        if "__datetime__" in d:
            return _dt.datetime.fromisoformat(d["__datetime__"])
    return d


def decode(data: bytes | str) -> Any:
    """The inverse of :func:`encode`."""
    return json.loads(data, object_hook=_hook)


# ------------------------------------------------------------------------------------------------ writing
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class Journal:
    """An open journal file (use :func:`open_journal`).  Append from one thread at a time.

    Attributes
    ----------
    path : Path
    records : int
        Records appended so far.
    nbytes : int
        Size of the file.
    """

    def __init__(self, path: Path, fd: int, fsync: str):
        self.path = path
        self._fd: int | None = fd
        self.fsync = fsync
        self.records = 0
        self.nbytes = len(HEADER)
        self._dirty = False
        self._cond = threading.Condition()
        self._syncer: threading.Thread | None = None
        self._error: OSError | None = None
        self.finished = False

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.nbytes += len(data)

    def _record(self, obj: dict) -> bytes:
        payload = encode(obj)
        head = struct.pack("<I", len(payload))
        crc = zlib.crc32(payload, zlib.crc32(head))
        return MAGIC + head + struct.pack("<I", crc) + payload

    def append(self, name: str, doc: Any) -> int:
        """Write one ``(name, doc)`` record; return its size in bytes.

        Raises ``OSError`` (disk full, ...) or :class:`ValueError` after :meth:`close`.
        """
        if self._fd is None or self.finished:
            raise ValueError(f"journal {self.path} is closed")
        data = self._record({"seq": self.records, "name": name, "doc": doc})
        self._write(data)
        self.records += 1
        if self.fsync == "always":
            os.fsync(self._fd)
        elif self.fsync == "group":
            self._kick()
        return len(data)

    # group commit: one background thread calls fsync whenever records were written since its last call
    def _kick(self) -> None:
        with self._cond:
            self._dirty = True
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._sync_loop, name=f"journal-fsync {self.path.name}",
                                                daemon=True)
                self._syncer.start()
            self._cond.notify()

    def _sync_loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and self._fd is not None:
                    self._cond.wait()
                fd = self._fd
                self._dirty = False
            if fd is None:
                return
            try:
                os.fsync(fd)
            except OSError as exc:  # closed meanwhile, or an I/O error: close() syncs (and reports) again
                self._error = exc

    def sync(self) -> None:
        """Flush the file to disk now."""
        if self._fd is not None:
            os.fsync(self._fd)

    def finish(self) -> None:
        """Write the end record and flush to disk; no more appends (idempotent).  The file stays locked until
        :meth:`close`."""
        if self._fd is None or self.finished:
            return
        self._write(self._record({"seq": self.records, "end": True}))
        os.fsync(self._fd)
        self.finished = True

    def close(self) -> None:
        """:meth:`finish`, then close the file and release its lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.finish()
        finally:
            with self._cond:
                fd, self._fd = self._fd, None
                self._cond.notify()
            if self._syncer is not None and self._syncer is not threading.current_thread():
                self._syncer.join(5.0)
            os.close(fd)  # releases the flock

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Journal {self.path} records={self.records}{' closed' if self.closed else ''}>"


def open_journal(directory: str | os.PathLike, key: str, *, fsync: str = "group") -> Journal:
    """Create a new journal ``directory/<key>.journal`` (``<key>-1.journal`` ... if that exists).

    Parameters
    ----------
    directory : path
        Created if missing (mode 0700).
    key : str
        The file's name, e.g. a run's start uid.
    fsync : {"group", "always", "close"}
        When records reach the disk: within moments from a background thread, in every :meth:`Journal.append`,
        or only on :meth:`Journal.close` (each record still reaches the operating system at once).
    """
    if fsync not in FSYNC_POLICIES:
        raise InvalidArgument(f"fsync={fsync!r}; allowed: {', '.join(FSYNC_POLICIES)}")
    if not key or "/" in key or key.startswith("."):
        raise InvalidArgument(f"key={key!r}: a non-empty file name is required")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    for i in range(10_000):
        path = d / (f"{key}{SUFFIX}" if i == 0 else f"{key}-{i}{SUFFIX}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise InvalidArgument(f"key={key!r}: too many journals of that name in {d}")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while open: replay leaves a journal in use alone
    j = Journal(path, fd, fsync)
    j._write(HEADER)
    os.fsync(fd)
    _fsync_dir(d)
    return j


# ------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Damage:
    """A part of a backup file that could not be read.

    ``kind`` is ``"truncated"`` (the file ends inside a record: the writer died while writing it),
    ``"corrupt"`` (bytes that are no intact record, followed by intact ones), ``"missing"`` (records absent from
    the sequence: what a damaged stretch took with it) or ``"header"``.
    """

    kind: str
    offset: int  # byte offset in the file (line number for line-based files, see ``unit``)
    length: int  # bytes (or lines)
    records: tuple[int, int] | None = None  # first and last missing seq, for "missing"
    unit: str = "bytes"

    def __str__(self) -> str:
        if self.kind == "missing" and self.records:
            a, b = self.records
            return f"records {a}-{b} missing ({b - a + 1})" if b > a else f"record {a} missing"
        if self.unit == "lines":
            return f"{self.kind}: line {self.offset + 1}" + (f" (+{self.length - 1})" if self.length > 1 else "")
        return f"{self.kind}: {self.length} bytes at offset {self.offset}"


@dataclass
class JournalContents:
    """What :func:`read_journal` found: intact ``records`` in order, ``damage``, and whether it was closed."""

    path: Path
    records: list[tuple[str, Any]] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    closed: bool = False

    @property
    def intact(self) -> bool:
        return not self.damage

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def read_journal(path: str | os.PathLike) -> JournalContents:
    """Every intact record of a journal file, and a report of what is damaged.

    Never raises on damaged content (only when the file cannot be opened).
    """
    p = Path(path)
    data = p.read_bytes()
    out = JournalContents(p)
    size = len(data)
    pos = len(HEADER) if data.startswith(HEADER) else 0
    if pos == 0 and size:
        first = data.find(MAGIC)
        out.damage.append(Damage("header", 0, first if first >= 0 else size))
        pos = first if first >= 0 else size
    seqs: list[int] = []
    bad: list[int] = []  # starts of unreadable stretches, each closed by the next intact record or the end

    def close_stretch(end: int) -> None:
        start = bad.pop()
        out.damage.append(Damage("corrupt", start, end - start))

    while pos < size:
        rec = None
        end = pos + RECORD_OVERHEAD
        if data.startswith(MAGIC, pos) and end <= size:
            length, crc = _LEN_CRC.unpack_from(data, pos + len(MAGIC))
            end += length
            if end <= size and zlib.crc32(data[pos + RECORD_OVERHEAD:end],
                                          zlib.crc32(data[pos + 4:pos + 8])) == crc:
                try:
                    rec = decode(data[pos + RECORD_OVERHEAD:end])
                except (ValueError, RecursionError):  # pragma: no cover - checksum passed, encoder bug
                    rec = None
        if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
            if bad:
                close_stretch(pos)
            seqs.append(rec["seq"])
            if rec.get("end"):
                out.closed = True
            elif "name" in rec:
                out.records.append((rec["name"], rec.get("doc")))
            pos = end
            continue
        if bad and data.startswith(MAGIC, pos):
            close_stretch(pos)  # a new record starts here: what came before it is one damaged stretch
        if not bad:
            bad.append(pos)
        nxt = data.find(MAGIC, pos + 1)
        if nxt < 0:
            break
        pos = nxt
    if bad:
        start = bad.pop()
        # the file ends inside a record whose header is cut or whose declared length runs past the end
        cut = data.startswith(MAGIC, start) and (
            start + RECORD_OVERHEAD > size
            or start + RECORD_OVERHEAD + _LEN_CRC.unpack_from(data, start + len(MAGIC))[0] > size)
        out.damage.append(Damage("truncated" if cut or size - start < len(MAGIC) else "corrupt", start,
                                 size - start))
    # records the damaged stretches took with them (and, after a clean close, none may be missing)
    expected = 0
    for s in seqs:
        if s > expected:
            out.damage.append(Damage("missing", -1, 0, (expected, s - 1), unit="records"))
        expected = max(expected, s + 1)
    return out


def journal_in_use(path: str | os.PathLike) -> bool:
    """True if a live :class:`Journal` (of any process) holds ``path`` open."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def journal_files(directory: str | os.PathLike) -> list[Path]:
    """The journal files of a directory, oldest first."""
    d = Path(directory)
    return sorted(d.glob(f"*{SUFFIX}"), key=lambda q: (q.stat().st_mtime, q.name))


def write_journal(directory: str | os.PathLike, key: str, docs: Iterable[tuple[str, Any]]) -> Path:
    """Write ``docs`` to a new closed journal (convenience for tests and tools); return its path."""
    with open_journal(directory, key, fsync="close") as j:
        for name, doc in docs:
            j.append(name, doc)
    return j.path


__all__ = ["Damage", "Journal", "JournalContents", "decode", "encode", "journal_files", "journal_in_use", "open_journal",
           "read_journal", "write_journal"]
