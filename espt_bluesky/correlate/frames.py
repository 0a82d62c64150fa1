"""Coordinate frames as data: 2-D affine transforms with units, that compose, invert and serialise.

Every map carries the transforms that place it: ``pixel -> <instrument>:stage`` (how its grid sits on its own
stage, from the file or the run) and, once registered, ``<instrument>:stage -> <reference frame>``.  A
registration result is an :class:`AffineTransform` with its residual and provenance; the source data is never
resampled in place, so any later analysis can go back to the measured positions.

Conventions
-----------
Points are ``(x, y)`` rows.  A pixel frame uses ``(column, row)`` with the centre of the first pixel at (0, 0).
Transforms act on column vectors in homogeneous form: ``[x', y', 1]^T = M @ [x, y, 1]^T``.
``b @ a`` applies ``a`` first, then ``b`` (``a.target`` must be ``b.source``).

Examples
--------
>>> t = AffineTransform.from_params(scale=2.0, rotation_deg=90.0, translation=(10.0, 0.0),
...                                 source="sem:pixel", target="sem:stage", source_units="px")
>>> t.apply([[1.0, 0.0]]).round(6).tolist()
[[10.0, 2.0]]
>>> (t.inverse() @ t).apply([[3.0, 4.0]]).round(6).tolist()
[[3.0, 4.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import InvalidArgument
from ..storage.datasets import jsonable

#: attrs key under which a dataset (and its Tiled node) keeps its transforms
TRANSFORMS_KEY = "transforms"
#: attrs key naming the frame the dataset's ``x``/``y`` coordinates are in
FRAME_KEY = "frame"
SCHEMA = "espt_bluesky.affine/1"


@dataclass(frozen=True)
class AffineTransform:
    """A 2-D affine map between two named frames.

    Parameters
    ----------
    matrix : (3, 3) array
        Homogeneous matrix, last row ``[0, 0, 1]``.
    source, target : str
        Frame names, e.g. ``"secm:stage"`` -> ``"sem:stage"``.
    source_units, target_units : str
        Length units of each frame (``"µm"``, ``"px"``).
    residual_rms : float, optional
        RMS residual of the fit that produced it, in ``target_units``.
    provenance : dict
        How it was obtained (method, inputs, inliers, software versions ...).  JSON-friendly.
    """

    matrix: np.ndarray
    source: str
    target: str
    source_units: str = "µm"
    target_units: str = "µm"
    residual_rms: float | None = None
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=float)
        if m.shape == (2, 3):
            m = np.vstack([m, [0.0, 0.0, 1.0]])
        if m.shape != (3, 3) or not np.all(np.isfinite(m)) or not np.allclose(m[2], [0.0, 0.0, 1.0]):
            raise InvalidArgument(f"matrix={self.matrix!r} must be a finite 3x3 affine matrix with last row "
                                  "[0, 0, 1]")
        if abs(np.linalg.det(m[:2, :2])) < 1e-15:
            raise InvalidArgument(f"matrix={m.tolist()!r} is singular: it does not map a plane onto a plane")
        for name in ("source", "target"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise InvalidArgument(f"{name}={v!r} must be a non-empty frame name")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls, source: str, target: str | None = None, units: str = "µm") -> "AffineTransform":
        """The identity between ``source`` and ``target`` (default: the same frame)."""
        return cls(np.eye(3), source, target or source, units, units)

    @classmethod
    def from_params(cls, *, scale: float | Sequence[float] = 1.0, rotation_deg: float = 0.0,
                    translation: Sequence[float] = (0.0, 0.0), reflect: bool = False, shear_deg: float = 0.0,
                    source: str, target: str, source_units: str = "µm", target_units: str = "µm",
                    provenance: Mapping | None = None) -> "AffineTransform":
        """``x' = T + R(θ) · Sh · S · F · x``: reflection ``F`` (y -> -y) first, then scale, shear, rotation.

        ``scale`` is one number (similarity) or ``(sx, sy)``; ``rotation_deg`` is counter-clockwise.
        """
        sx, sy = (float(scale), float(scale)) if np.ndim(scale) == 0 else (float(scale[0]), float(scale[1]))
        th = math.radians(float(rotation_deg))
        rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        sh = np.array([[1.0, math.tan(math.radians(float(shear_deg)))], [0.0, 1.0]])
        f = np.diag([1.0, -1.0 if reflect else 1.0])
        m = np.eye(3)
        m[:2, :2] = rot @ sh @ np.diag([sx, sy]) @ f
        m[:2, 2] = np.asarray(translation, float)
        return cls(m, source, target, source_units, target_units, provenance=dict(provenance or {}))

    @classmethod
    def from_grid(cls, x0: float, dx: float, y0: float, dy: float, *, source: str, target: str,
                  target_units: str = "µm", provenance: Mapping | None = None) -> "AffineTransform":
        """Pixel ``(column, row)`` of a regular grid -> ``(x0 + column·dx, y0 + row·dy)`` in ``target``."""
        m = np.array([[dx, 0.0, x0], [0.0, dy, y0], [0.0, 0.0, 1.0]], float)
        return cls(m, source, target, "px", target_units, provenance=dict(provenance or {}))

    # ------------------------------------------------------------------ use
    def apply(self, points: Any) -> np.ndarray:
        """Map ``(N, 2)`` points (or one ``(2,)`` point) from ``source`` to ``target``."""
        p = np.asarray(points, dtype=float)
        one = p.ndim == 1
        p = np.atleast_2d(p)
        if p.shape[-1] != 2:
            raise InvalidArgument(f"points of shape {np.shape(points)} must be (N, 2) (x, y) pairs")
        out = p @ self.matrix[:2, :2].T + self.matrix[:2, 2]
        return out[0] if one else out

    __call__ = apply

    def inverse(self) -> "AffineTransform":
        """The map back from ``target`` to ``source`` (residual kept, in the other frame's units)."""
        prov = {"inverse_of": self.provenance} if self.provenance else {}
        return AffineTransform(np.linalg.inv(self.matrix), self.target, self.source, self.target_units,
                               self.source_units, self.residual_rms, prov)

    def __matmul__(self, other: "AffineTransform") -> "AffineTransform":
        """``self @ other``: apply ``other`` first (its target must be this transform's source)."""
        if not isinstance(other, AffineTransform):
            return NotImplemented
        if other.target != self.source:
            raise InvalidArgument(f"cannot compose: {other.source}->{other.target} then {self.source}->"
                                  f"{self.target} (frames {other.target!r} and {self.source!r} differ)")
        if other.target_units != self.source_units:
            raise InvalidArgument(f"cannot compose: units {other.target_units!r} and {self.source_units!r} differ")
        prov = {"composed_of": [other.to_dict(), self.to_dict()]}
        res = None
        if self.residual_rms is not None or other.residual_rms is not None:
            # the first step's residual carried through the second step's linear part, added in quadrature
            r1 = (other.residual_rms or 0.0) * math.sqrt(abs(np.linalg.det(self.matrix[:2, :2])))
            res = math.hypot(r1, self.residual_rms or 0.0)
        return AffineTransform(self.matrix @ other.matrix, other.source, self.target, other.source_units,
                               self.target_units, res, prov)

    def with_frames(self, source: str | None = None, target: str | None = None) -> "AffineTransform":
        """The same matrix between renamed frames."""
        return AffineTransform(self.matrix, source or self.source, target or self.target, self.source_units,
                               self.target_units, self.residual_rms, dict(self.provenance))

    # ------------------------------------------------------------------ decomposition
    @property
    def translation(self) -> np.ndarray:
        return self.matrix[:2, 2].copy()

    @property
    def is_reflection(self) -> bool:
        """True if the map flips handedness (det < 0), e.g. an image with y down onto a stage with y up."""
        return bool(np.linalg.det(self.matrix[:2, :2]) < 0)

    def params(self) -> dict[str, float]:
        """Decomposition ``A = R(θ) · Sh · diag(sx, sy) · F``: rotation (deg), scales, shear (deg), reflection."""
        a = self.matrix[:2, :2].copy()
        reflect = self.is_reflection
        if reflect:
            a = a @ np.diag([1.0, -1.0])
        sx = math.hypot(a[0, 0], a[1, 0])
        th = math.atan2(a[1, 0], a[0, 0])
        r_inv = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
        u = r_inv @ a  # upper triangular: [[sx, k·sy], [0, sy]]
        sy = u[1, 1]
        shear = math.degrees(math.atan2(u[0, 1], sy))
        return dict(rotation_deg=math.degrees(th), scale_x=sx, scale_y=float(sy), shear_deg=shear,
                    reflect=reflect, tx=float(self.matrix[0, 2]), ty=float(self.matrix[1, 2]))

    @property
    def rotation_deg(self) -> float:
        return self.params()["rotation_deg"]

    @property
    def scale(self) -> float:
        """Mean linear scale factor sqrt(|det A|)."""
        return math.sqrt(abs(np.linalg.det(self.matrix[:2, :2])))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, as stored in Tiled metadata."""
        d = dict(schema=SCHEMA, source=self.source, target=self.target, source_units=self.source_units,
                 target_units=self.target_units, matrix=[[float(v) for v in row] for row in self.matrix])
        if self.residual_rms is not None:
            d["residual_rms"] = float(self.residual_rms)
        if self.provenance:
            d["provenance"] = jsonable(self.provenance)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AffineTransform":
        if not isinstance(d, Mapping) or "matrix" not in d:
            raise InvalidArgument(f"transform={d!r} is not a serialised AffineTransform (needs 'matrix')")
        return cls(np.asarray(d["matrix"], float), d["source"], d["target"], d.get("source_units", "µm"),
                   d.get("target_units", "µm"), d.get("residual_rms"), dict(d.get("provenance") or {}))

    def __repr__(self) -> str:
        p = self.params()
        res = f", rms={self.residual_rms:.3g} {self.target_units}" if self.residual_rms is not None else ""
        return (f"AffineTransform({self.source} -> {self.target}: rot={p['rotation_deg']:.3f}°, "
                f"scale=({p['scale_x']:.5g}, {p['scale_y']:.5g}), shear={p['shear_deg']:.3f}°, "
                f"reflect={p['reflect']}, t=({p['tx']:.4g}, {p['ty']:.4g}) {self.target_units}{res})")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, AffineTransform) and self.source == other.source
                and self.target == other.target and np.allclose(self.matrix, other.matrix))

    __hash__ = None  # type: ignore[assignment]


# ---------------------------------------------------------------------- transforms on datasets
def transforms_of(ds_or_attrs: Any) -> list[AffineTransform]:
    """The transforms recorded on a dataset (or its attrs / Tiled metadata)."""
    attrs = getattr(ds_or_attrs, "attrs", ds_or_attrs)
    items = (attrs or {}).get(TRANSFORMS_KEY) or []
    return [t if isinstance(t, AffineTransform) else AffineTransform.from_dict(t) for t in items]


def frame_of(ds_or_attrs: Any) -> str:
    """The frame the dataset's ``x``/``y`` coordinates are given in."""
    attrs = getattr(ds_or_attrs, "attrs", ds_or_attrs)
    frame = (attrs or {}).get(FRAME_KEY)
    if not frame:
        raise InvalidArgument("the dataset names no coordinate frame (attrs['frame']); import it with "
                              "espt_bluesky.correlate.importers or set attrs['frame']")
    return str(frame)


def with_transform(ds: Any, transform: AffineTransform, *, replace: bool = True) -> Any:
    """A shallow copy of ``ds`` with ``transform`` recorded (the data itself is untouched).

    A transform between the same two frames as one already recorded replaces it when ``replace``.
    """
    out = ds.copy()
    kept = [t for t in transforms_of(ds)
            if not (replace and t.source == transform.source and t.target == transform.target)]
    out.attrs = dict(ds.attrs)
    out.attrs[TRANSFORMS_KEY] = [t.to_dict() for t in kept] + [transform.to_dict()]
    return out


def chain(transforms: Iterable[AffineTransform], source: str, target: str) -> AffineTransform:
    """Compose recorded transforms (and their inverses) into one ``source -> target`` map.

    A breadth-first search over the frame graph; raises if the frames are not connected.
    """
    edges: dict[str, list[AffineTransform]] = {}
    for t in transforms:
        edges.setdefault(t.source, []).append(t)
        edges.setdefault(t.target, []).append(t.inverse())
    if source == target:
        return AffineTransform.identity(source)
    best: dict[str, AffineTransform] = {}
    frontier = [source]
    seen = {source}
    while frontier:
        nxt = []
        for f in frontier:
            for t in edges.get(f, []):
                if t.target in seen:
                    continue
                best[t.target] = t if f == source else t @ best[f]
                if t.target == target:
                    return best[t.target]
                seen.add(t.target)
                nxt.append(t.target)
        frontier = nxt
    raise InvalidArgument(f"no chain of recorded transforms leads from frame {source!r} to {target!r} "
                          f"(frames known: {sorted(edges)})")


def to_frame(ds: Any, target: str, *, extra: Iterable[AffineTransform] = ()) -> np.ndarray:
    """The ``(x, y)`` of every point of ``ds`` in frame ``target``, shape ``(..., 2)`` (no resampling).

    Grids give an array of shape ``(ny, nx, 2)``; point lists ``(n, 2)``.
    """
    t = chain(list(transforms_of(ds)) + list(extra), frame_of(ds), target)
    x = np.asarray(ds["x"].values, float)
    y = np.asarray(ds["y"].values, float)
    if ds["x"].dims == ("x",) and ds["y"].dims == ("y",):
        xx, yy = np.meshgrid(x, y)
    else:
        xx, yy = x, y
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return t.apply(pts).reshape(xx.shape + (2,))
