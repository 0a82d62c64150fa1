"""HDF5 writer of waveforms as external assets (StreamResource/StreamDatum), for the potentiostat's ``asset_writer``.

Each staging opens one HDF5 file under a directory (use the Tiled catalog's readable asset directory, e.g.
``LocalCatalog.asset_dir``) with one resizable dataset per waveform key, shape ``(0, n_samples)``; each trigger
appends one row to every dataset and announces it with one ``stream_datum`` per key.  Tiled registers the file and
serves the stacked ``(n_events, n_samples)`` array under the stream like any other array.

Example
-------
>>> pstat.asset_writer = HDF5WaveformWriter(catalog.asset_dir)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument

MIMETYPE = "application/x-hdf5"


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
    """

    def __init__(self, directory: str | os.PathLike, *, chunk_rows: int = 64, swmr: bool = True):
        self.directory = Path(directory).resolve()
        if int(chunk_rows) < 1:
            raise InvalidArgument(f"chunk_rows={chunk_rows!r} must be >= 1")
        self.chunk_rows = int(chunk_rows)
        self.swmr = bool(swmr)
        self._file = None
        self._resources: dict[str, object] = {}  # data key -> ComposeStreamResourceBundle
        self._datasets: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._n = 0
        self.path: Path | None = None

    def stage(self, data_keys: dict[str, dict]) -> list[tuple[str, dict]]:
        """Open a new file with one dataset per key; return the ``stream_resource`` documents.

        Parameters
        ----------
        data_keys : dict
            ``describe()`` entries of the keys to write (``shape`` and ``dtype_numpy`` are used).
        """
        import h5py
        from event_model import compose_stream_resource

        if self._file is not None:
            self.unstage()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{uuid.uuid4()}.h5"
        f = h5py.File(self.path, "w", libver="latest")
        docs = []
        self._resources.clear()
        self._datasets.clear()
        self._shapes.clear()
        for key, dk in data_keys.items():
            shape = tuple(int(s) for s in dk.get("shape", ()))
            if any(s is None for s in shape):
                raise InvalidArgument(f"data key {key!r} has a variable shape {shape}; fixed shapes are needed")
            dtype = np.dtype(dk.get("dtype_numpy") or "<f8")
            name = f"/{key}"
            f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                             chunks=(self.chunk_rows, *shape) if shape else (max(self.chunk_rows, 64),))
            self._datasets[key] = name
            self._shapes[key] = shape
            bundle = compose_stream_resource(
                mimetype=MIMETYPE, uri=self.path.as_uri(), data_key=key,
                parameters={"dataset": name, "chunk_shape": [self.chunk_rows, *shape], "swmr": self.swmr})
            self._resources[key] = bundle
            docs.append(("stream_resource", bundle.stream_resource_doc))
        if self.swmr:
            f.swmr_mode = True
        self._file = f
        self._n = 0
        return docs

    def write(self, arrays: dict[str, np.ndarray]) -> list[tuple[str, dict]]:
        """Append one row per key; return one ``stream_datum`` document per key."""
        if self._file is None:
            raise RuntimeError("HDF5WaveformWriter.write() before stage()")
        missing = set(self._datasets) - set(arrays)
        if missing:
            raise InvalidArgument(f"arrays lacks the staged key(s) {sorted(missing)}")
        i = self._n
        for key, name in self._datasets.items():
            a = np.asarray(arrays[key])
            if a.shape != self._shapes[key]:
                raise InvalidArgument(f"{key}: array of shape {a.shape} does not match the described "
                                      f"shape {self._shapes[key]}")
            ds = self._file[name]
            ds.resize(i + 1, axis=0)
            ds[i] = a
        self._file.flush()
        self._n = i + 1
        return [("stream_datum", self._resources[k].compose_stream_datum(
            indices={"start": i, "stop": i + 1})) for k in self._datasets]

    def unstage(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def n_written(self) -> int:
        """Rows written since the last :meth:`stage`."""
        return self._n
