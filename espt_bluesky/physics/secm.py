"""SECM feedback: public, vectorised entry points.

``feedback_current(L, rg, kappa)`` returns I = i_T/i_T,inf at normalised distance L = d/a over a substrate with
dimensionless first-order rate constant kappa = k·a/D (0: insulator, numpy.inf: diffusion-limited conductor).
``tip_current_inf(rg)`` returns i_T,inf in units of n·F·D·c*·a.

For now these evaluate the published analytical approximations (see ``secm_analytical``); the exact numerical
solution replaces them (issue: exact SECM physics).
"""

from __future__ import annotations

import numpy as np

from ..errors import check_range
from . import secm_analytical


def _validate(L, rg, kappa):
    L = check_range("L", L, 0.0, np.inf, low_inclusive=False)
    rg = check_range("rg", rg, 1.0, np.inf, low_inclusive=False)
    kappa = check_range("kappa", kappa, 0.0, np.inf, allow_inf=True)
    return L, rg, kappa


def feedback_current(L, rg, kappa):
    """Normalised tip current I_T = i_T / i_T,inf (dimensionless).

    Parameters
    ----------
    L : array_like
        Tip–substrate distance over tip radius, d/a (> 0).
    rg : array_like
        RG = r_glass / a (> 1).
    kappa : array_like
        k·a/D, >= 0; ``numpy.inf`` for a diffusion-limited conductor.
    """
    L, rg, kappa = _validate(L, rg, kappa)
    return secm_analytical.kinetic(L, rg, kappa)


def tip_current_inf(rg):
    """i_T,inf / (n·F·D·c*·a) = 4·β(RG); tends to 4 as RG → inf."""
    rg = check_range("rg", rg, 1.0, np.inf, low_inclusive=False, allow_inf=True)
    return 4.0 * secm_analytical.beta(rg)
