"""Published analytical approximations for SECM feedback at an inlaid disk in an insulating sheath.

These are the Lefrou / Cornut–Lefrou forms (Lefrou 2006; Cornut & Lefrou 2007, J. Electroanal. Chem. 608, 59;
Cornut & Lefrou 2008, J. Electroanal. Chem. 621, 178; Lefrou & Cornut 2010, ChemPhysChem 11, 547).
They are approximations: a few % off the exact solution at L < 0.3 with slow kinetics.  They are kept as the
reference the exact tables are compared against.

Notation: L = d/a (dimensionless distance), RG = r_glass/a, kappa = k·a/D, I = i_T/i_T,inf.
"""

from __future__ import annotations

import numpy as np


def _u(rg):
    return (2.0 / np.pi) * np.arccos(1.0 / np.asarray(rg, dtype=float))


def beta(rg):
    """Isolated-tip correction β(RG): i_T,inf = 4·n·F·D·c*·a·β(RG).  β(10) ≈ 1.018, β(1.5) ≈ 1.16."""
    u = _u(rg)
    return 1.0 + 0.639 * (1.0 - u) - 0.186 * (1.0 - u**2)


def alpha(rg):
    """α(RG) of the conductor approximation."""
    u = _u(rg)
    ln2 = np.log(2.0)
    return ln2 + ln2 * (1.0 - u) - ln2 * (1.0 - u**2)


def conductor(L, rg):
    """Positive feedback over a diffusion-limited conductor, I_cond(L, RG).  I(1, 10) ≈ 1.563."""
    L = np.asarray(L, dtype=float)
    b = beta(rg)
    a = alpha(rg)
    return a + np.pi / (4.0 * b * np.arctan(L)) + (1.0 - a - 1.0 / (2.0 * b)) * (2.0 / np.pi) * np.arctan(L)


def insulator(L, rg):
    """Negative feedback over an inert insulator, I_ins(L, RG).  I(1, 10) ≈ 0.498."""
    L = np.asarray(L, dtype=float)
    rg = np.asarray(rg, dtype=float)
    c = 2.08 * rg ** (-0.358)
    num = c * (L - 0.145 / rg) + 1.585
    den = c * (L + 0.0023 * rg) + 1.57 + np.log(rg) / L + (2.0 / (np.pi * rg)) * np.log(1.0 + np.pi * rg / (2.0 * L))
    return num / den


def kinetic(L, rg, kappa):
    """Finite first-order substrate kinetics, Cornut & Lefrou 2008 / Lefrou & Cornut 2010.

    Note the MINUS sign on 0.0236·RG in the κ exponent (a widely copied open implementation has a plus).
    kappa = 0 gives the insulator and kappa = inf the conductor.
    """
    L, rg, kappa = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (L, rg, kappa)))
    out = np.empty(L.shape)
    ins = insulator(L, rg)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond_shift = conductor(L + 1.0 / kappa, rg)
        denom = (1.0 + 2.47 * rg**0.31 * L * kappa) * (1.0 + L ** (0.006 * rg + 0.113) * kappa ** (-0.0236 * rg + 0.91))
        val = cond_shift + (ins - 1.0) / denom
    out[...] = val
    zero = kappa == 0
    out[zero] = ins[zero]
    inf = np.isinf(kappa)
    out[inf] = conductor(L[inf], rg[inf])
    return out
