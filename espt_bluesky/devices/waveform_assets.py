"""HDF5 writer of waveforms as external assets (StreamResource/StreamDatum), for the potentiostat's ``asset_writer``.

A device gives the writer the ``describe()`` entries of its waveform keys whenever it is described
(:meth:`HDF5WaveformWriter.begin`).  The RunEngine describes a device once per stream of a run, so each stream
gets a *segment* of its own: one HDF5 file under ``directory`` (use the Tiled catalog's readable asset directory,
e.g. ``LocalCatalog.asset_dir``), opened by the segment's first waveform, with one resizable dataset per key of shape
``(0, *shape)`` and one ``stream_resource`` per key; every waveform appends one row to each dataset and returns one
``stream_datum`` per key.  Tiled registers the file and serves the stacked ``(n_events, *shape)`` array under the
stream like any other array.

A device cannot know which stream it is being read into, so a waveform goes to the segment described with its
keys and shapes: streams whose waveforms differ (a CV stream beside an approach stream without waveforms, CVs of
200 samples beside cycles of 500) interleave freely.  Describing the same keys and shapes again (a new run, a new
stream) starts a new segment for them; Tiled concatenates the files of one stream.  Two streams of one run that
alternate waveforms of identical keys and shapes from the same device cannot be told apart -- give them different
``n_samples`` or separate runs.  A waveform no segment was described for (the technique or ``n_samples`` changed
within a stream) raises :class:`WaveformWriteError` instead of being written: a stream's descriptor is fixed, so
such data could only be stored wrongly.

Devices use it through :class:`WritesWaveformAssets` (the potentiostat, the XRF detector): ``describe()`` starts a
segment, ``trigger()`` notes an acquisition, ``read()`` takes its arrays out of the reading, and
``collect_asset_docs()`` -- which the RunEngine calls right after the read -- writes them.

Example
-------
>>> pstat.asset_writer = HDF5WaveformWriter(catalog.asset_dir)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from ..errors import EsptError, InvalidArgument

MIMETYPE = "application/x-hdf5"


class WaveformWriteError(EsptError, RuntimeError):
    """A waveform could not be written as it was described (the run must not go on without it)."""


Signature = tuple  # ((key, shape), ...) sorted: what tells the segments apart


def _signature(shapes: dict[str, tuple[int, ...]]) -> Signature:
    return tuple(sorted((k, tuple(int(n) for n in v)) for k, v in shapes.items()))


class _Segment:
    """One stream's waveforms: the described keys, then (after the first row) a file and its resources."""

    def __init__(self, keys: dict[str, tuple[tuple[int, ...], np.dtype]]):
        self.keys = keys
        self.file = None
        self.path: Path | None = None
        self.resources: dict[str, object] = {}  # data key -> ComposeStreamResourceBundle
        self.n = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class HDF5WaveformWriter:
    """Write each waveform key to a resizable HDF5 dataset and emit the asset documents.

    Implements :class:`espt_bluesky.devices.potentiostat.AssetWriter`.

    Parameters
    ----------
    directory : path
        Where files go (must lie under a readable storage location of the Tiled server).
    chunk_rows : int
        Rows per HDF5 chunk along the event axis.
    swmr : bool
        Open in single-writer/multiple-reader mode so Tiled can read a file while it grows.

    Attributes
    ----------
    paths : list of Path
        Every file written since this writer was made, oldest first.
    """

    def __init__(self, directory: str | os.PathLike, *, chunk_rows: int = 64, swmr: bool = True):
        self.directory = Path(directory).resolve()
        if isinstance(chunk_rows, bool) or int(chunk_rows) < 1:
            raise InvalidArgument(f"chunk_rows={chunk_rows!r} must be an integer >= 1")
        self.chunk_rows = int(chunk_rows)
        self.swmr = bool(swmr)
        self._segments: dict[Signature, _Segment] = {}
        self.paths: list[Path] = []

    def begin(self, data_keys: dict[str, dict]) -> None:
        """Start a segment for these ``describe()`` entries (``shape``, ``dtype_numpy``); its file opens lazily.

        An empty dict (a stream without waveforms) starts nothing.
        """
        keys = {}
        for key, dk in data_keys.items():
            shape = tuple(dk.get("shape") or ())
            if any(s is None for s in shape):
                raise InvalidArgument(f"data key {key!r} has a variable shape {list(shape)}; fixed shapes are "
                                      "needed")
            keys[key] = (tuple(int(s) for s in shape), np.dtype(dk.get("dtype_numpy") or "<f8"))
        if not keys:
            return
        sig = _signature({k: v[0] for k, v in keys.items()})
        old = self._segments.pop(sig, None)
        if old is not None:
            old.close()
        self._segments[sig] = _Segment(keys)

    def write(self, arrays: dict[str, np.ndarray]) -> list[tuple[str, dict]]:
        """Append one row per key to the segment described with these keys and shapes; return its
        ``stream_resource`` documents (first row only) and one ``stream_datum`` per key.

        Raises
        ------
        WaveformWriteError
            If no segment was described with these keys and shapes.
        """
        if not arrays:
            return []
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        seg = self._segments.get(_signature({k: a.shape for k, a in arrays.items()}))
        if seg is None:
            described = [{k: list(s) for k, s in sig} for sig in self._segments] or "none"
            raise WaveformWriteError(
                f"waveform {({k: list(a.shape) for k, a in arrays.items()})} does not match any stream this device "
                f"was described in (described: {described}): a stream's data keys and shapes are fixed when the "
                "RunEngine first reads the device in it -- set the technique and n_samples before that first "
                "reading, or read other waveforms into a stream of their own")
        docs: list[tuple[str, dict]] = []
        if seg.file is None:
            docs.extend(self._open(seg))
        i = seg.n
        for key, a in arrays.items():
            ds = seg.file[f"/{key}"]
            ds.resize(i + 1, axis=0)
            ds[i] = a.astype(seg.keys[key][1], copy=False)
        seg.file.flush()
        seg.n = i + 1
        docs.extend(("stream_datum", seg.resources[k].compose_stream_datum(indices={"start": i, "stop": i + 1}))
                    for k in seg.keys)
        return docs

    def _open(self, seg: _Segment) -> list[tuple[str, dict]]:
        import h5py
        from event_model import compose_stream_resource

        self.directory.mkdir(parents=True, exist_ok=True)
        seg.path = self.directory / f"{uuid.uuid4()}.h5"
        f = h5py.File(seg.path, "w", libver="latest")
        docs = []
        for key, (shape, dtype) in seg.keys.items():
            chunks = (self.chunk_rows, *shape) if shape else (max(self.chunk_rows, 64),)
            f.create_dataset(f"/{key}", shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=chunks)
            bundle = compose_stream_resource(
                mimetype=MIMETYPE, uri=seg.path.as_uri(), data_key=key,
                parameters={"dataset": f"/{key}", "chunk_shape": [self.chunk_rows, *shape], "swmr": self.swmr})
            seg.resources[key] = bundle
            docs.append(("stream_resource", bundle.stream_resource_doc))
        if self.swmr:
            f.swmr_mode = True
        seg.file = f
        seg.n = 0
        self.paths.append(seg.path)
        return docs

    def close(self) -> None:
        """Close every segment (the next waveforms need a new description)."""
        for seg in self._segments.values():
            seg.close()
        self._segments.clear()

    @property
    def path(self) -> Path | None:
        """The newest file written (None before the first waveform)."""
        return self.paths[-1] if self.paths else None


class WritesWaveformAssets:
    """Mixin for an ophyd ``Device`` whose array keys go to an :attr:`asset_writer` (e.g. :class:`HDF5WaveformWriter`)
    instead of the events, under any plan that triggers and reads it (staged or not).

    The device lists those keys in :meth:`_asset_keys`, calls :meth:`_init_assets` in ``__init__``,
    :meth:`_describe_assets` at the end of ``describe()``, :meth:`_note_acquisition` in ``trigger()`` and
    :meth:`_read_assets` at the end of ``read()``.  Each acquisition's arrays are written once, by the
    ``collect_asset_docs()`` that follows its reading; a reading without a new acquisition (a baseline, a re-read)
    writes nothing.  Put the mixin before ``Device`` in the bases (it extends ``stage``/``unstage``).
    """

    asset_writer: "HDF5WaveformWriter | None"

    def _init_assets(self) -> None:
        self.asset_writer = None
        self._acquired = False  # triggered since the last collect_asset_docs()
        self._pending_assets: dict[str, np.ndarray] | None = None  # read, not yet written

    def _asset_keys(self) -> list[str]:
        """The data keys written as assets when an asset writer is set."""
        raise NotImplementedError

    def _describe_assets(self, desc: dict[str, dict]) -> dict[str, dict]:
        """Mark the asset keys ``external="STREAM:"`` and start the writer's segment for this description."""
        if self.asset_writer is not None:
            keys = [k for k in self._asset_keys() if k in desc]
            for k in keys:
                desc[k]["external"] = "STREAM:"
            self.asset_writer.begin({k: desc[k] for k in keys})
        return desc

    def _note_acquisition(self) -> None:
        """The next reading holds a new acquisition, to be written once."""
        self._acquired = True

    def _read_assets(self, out: dict[str, dict]) -> dict[str, dict]:
        """Take the asset keys out of a reading (kept for :meth:`collect_asset_docs` if newly acquired)."""
        if self.asset_writer is not None:
            arrays = {k: out.pop(k)["value"] for k in self._asset_keys() if k in out}
            if self._acquired:
                self._pending_assets = arrays
        return out

    def stage(self):
        self._acquired = False
        self._pending_assets = None
        return super().stage()

    def unstage(self):
        if self.asset_writer is not None:
            self.asset_writer.close()
        return super().unstage()

    def collect_asset_docs(self):
        """The asset documents of the acquisition just read (written now by the asset writer).

        Raises :class:`WaveformWriteError` (through the writer) if the arrays do not fit the stream they are read
        into -- the run stops rather than lose them.
        """
        arrays, self._pending_assets = self._pending_assets, None
        acquired, self._acquired = self._acquired, False
        if self.asset_writer is None or not acquired or arrays is None:
            return
        yield from self.asset_writer.write(arrays)
