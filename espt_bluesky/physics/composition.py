"""Elemental composition of the virtual sample: areal densities (µg/cm²) per element over (x, y) µm.

The X-ray fluorescence of the bench (``physics.xrf``) is computed from these fields.  Presets:

* ``composite_cathode``: every particle is one of two layered-oxide phases, NMC811 (LiNi0.8Mn0.1Co0.1O2) or
  NMC111 (LiNi1/3Mn1/3Co1/3O2), drawn with its own seeded generator (the sample's other random features are
  untouched); the areal density of a particle is its local thickness (the cap height, µm) x 4.7 g/cm³ x the
  element's mass fraction.  The carbon/binder matrix holds no transition metal.
* ``si_film``: a thick Cu current collector everywhere (its Cu Kα escapes through 200 nm of Si almost
  unattenuated) under Si pads.
* ``patterned``: 100 nm Au discs on SiO2; ``hopg``: carbon only (no line above 1 keV).

``phase`` (int per pixel, 0 = none) and ``phase_names`` give the ground truth of which phase sits where.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: g/cm³
DENSITY = {"NMC": 4.7, "Cu": 8.96, "Si": 2.33, "Au": 19.3, "SiO2": 2.2}
PHASES = {1: ("NMC811", {"Li": 1.0, "Ni": 0.8, "Mn": 0.1, "Co": 0.1, "O": 2.0}),
          2: ("NMC111", {"Li": 1.0, "Ni": 1 / 3, "Mn": 1 / 3, "Co": 1 / 3, "O": 2.0})}


def mass_fractions(formula: dict[str, float]) -> dict[str, float]:
    """Mass fraction of each element of a formula (atoms per formula unit), atomic masses from xraydb."""
    import xraydb

    masses = {el: n * xraydb.atomic_mass(el) for el, n in formula.items()}
    total = sum(masses.values())
    return {el: m / total for el, m in masses.items()}


def composition_fields(sample: Any, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, dict[int, str]]:
    """(areal density µg/cm² per element, phase map, phase names) for a preset sample.

    µg/cm² = thickness (µm) x 1e-4 cm/µm x density (g/cm³) x 1e6 µg/g x mass fraction.
    """
    shape = sample.topography.shape
    phase = np.zeros(shape, dtype=int)
    fields: dict[str, np.ndarray] = {}
    names: dict[int, str] = {}
    if sample.name == "composite_cathode":
        rng = np.random.default_rng(seed + 303)
        labels = sorted(k for k in sample.labels if k > 0)
        draw = rng.integers(1, 3, size=len(labels))
        for k, p in zip(labels, draw):
            phase[sample.label == k] = int(p)
        names = {k: PHASES[k][0] for k in PHASES}
        for el in ("Ni", "Mn", "Co"):
            fields[el] = np.zeros(shape)
        thickness = np.clip(sample.topography, 0.0, None)
        for k, (_, formula) in PHASES.items():
            mf = mass_fractions(formula)
            sel = phase == k
            for el in ("Ni", "Mn", "Co"):
                fields[el][sel] = thickness[sel] * 1e-4 * DENSITY["NMC"] * 1e6 * mf[el]
    elif sample.name == "si_film":
        si = sample.label == 1
        fields["Cu"] = np.full(shape, 10.0 * 1e-4 * DENSITY["Cu"] * 1e6)  # 10 µm foil, far thicker than sensed
        fields["Si"] = np.where(si, sample.film_thickness * 1e-4 * DENSITY["Si"] * 1e6, 0.0)
        phase = si.astype(int)
        names = {1: "Si"}
    elif sample.name == "patterned":
        au = sample.label == 1
        fields["Au"] = np.where(au, 0.1 * 1e-4 * DENSITY["Au"] * 1e6, 0.0)
        phase = au.astype(int)
        names = {1: "Au"}
    return fields, phase, names
