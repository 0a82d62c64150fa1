"""Least-squares plane fit of surface heights (sample tilt).

Plain numpy: positions and heights in µm, angles in degrees.  Used by the ``measure_tilt`` plan and offline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InvalidArgument, check_finite


@dataclass(frozen=True)
class PlaneFit:
    """Plane z = z0 + slope_x·(x − x0) + slope_y·(y − y0) (µm), with 1-σ uncertainties.

    ``tilt_x_deg`` = atan(slope_x) and ``tilt_y_deg`` = atan(slope_y), in degrees (the same convention as the
    bench's ``tilt`` option: rotation about y gives a slope in x).  Uncertainties are NaN when the fit has no
    degrees of freedom left (exactly three points).
    """

    z0: float
    slope_x: float
    slope_y: float
    x0: float
    y0: float
    tilt_x_deg: float
    tilt_y_deg: float
    z0_err: float
    slope_x_err: float
    slope_y_err: float
    tilt_x_deg_err: float
    tilt_y_deg_err: float
    residual_rms: float
    n_points: int

    def z_at(self, x, y) -> np.ndarray:
        """Height of the plane (µm) at (x, y) µm (broadcast)."""
        return self.z0 + self.slope_x * (np.asarray(x, float) - self.x0) + self.slope_y * (np.asarray(y, float) - self.y0)

    def as_dict(self) -> dict:
        """Plain dict (JSON-friendly floats) for metadata."""
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in asdict(self).items()}


def flat_plane(z0: float, x0: float = 0.0, y0: float = 0.0) -> PlaneFit:
    """A horizontal plane at height ``z0`` µm (no tilt correction)."""
    return PlaneFit(float(z0), 0.0, 0.0, float(x0), float(y0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)


def fit_plane(x, y, z) -> PlaneFit:
    """Fit z = z0 + sx·(x − x̄) + sy·(y − ȳ) by linear least squares.

    Parameters
    ----------
    x, y : array_like
        Lateral positions (µm), at least three points not on one line.
    z : array_like
        Surface heights (µm).

    Returns
    -------
    PlaneFit
        Slopes (µm/µm), tilt angles (degrees) and 1-σ uncertainties from the residual variance.

    Examples
    --------
    >>> p = fit_plane([0, 100, 0, 100], [0, 0, 100, 100], [0.0, 0.87, -0.52, 0.35])
    >>> round(p.tilt_x_deg, 2), round(p.tilt_y_deg, 2)
    (0.5, -0.3)
    """
    x = check_finite("x", x).ravel()
    y = check_finite("y", y).ravel()
    z = check_finite("z", z).ravel()
    if not (x.size == y.size == z.size):
        raise InvalidArgument(f"x, y, z must have the same length; got {x.size}, {y.size}, {z.size}")
    if x.size < 3:
        raise InvalidArgument(f"fit_plane needs at least 3 points; got {x.size}")
    x0, y0 = float(x.mean()), float(y.mean())
    A = np.column_stack([np.ones_like(x), x - x0, y - y0])
    if np.linalg.matrix_rank(A) < 3:
        raise InvalidArgument("the points are collinear (or coincide): a plane is undetermined")
    coef, *_ = np.linalg.lstsq(A, z, rcond=None)
    resid = z - A @ coef
    dof = x.size - 3
    if dof > 0:
        s2 = float(resid @ resid) / dof
        cov = s2 * np.linalg.inv(A.T @ A)
        err = np.sqrt(np.diag(cov))
    else:
        err = np.full(3, np.nan)
    sx, sy = float(coef[1]), float(coef[2])
    # d(atan s)/ds = 1/(1+s²), in degrees
    ex = math.degrees(err[1] / (1 + sx * sx))
    ey = math.degrees(err[2] / (1 + sy * sy))
    return PlaneFit(float(coef[0]), sx, sy, x0, y0, math.degrees(math.atan(sx)), math.degrees(math.atan(sy)),
                    float(err[0]), float(err[1]), float(err[2]), float(ex), float(ey),
                    float(np.sqrt(np.mean(resid**2))), int(x.size))
