"""The virtual sample: fields over (x, y) in µm, with presets that mirror the literature cases.

A :class:`VirtualSample` holds fields on a regular grid (default 0.25 µm pixels) that extends beyond the
0–100 µm square every preset covers, so that a probe footprint near the border still sees sample:

===================  ==========  ============================================================================
field                units       meaning
===================  ==========  ============================================================================
``topography``       µm          surface height before any SEI growth or swelling
``k_feedback``       m/s         first-order rate constant with which the surface regenerates the SECM mediator
                                 (0: insulator, ``inf``: diffusion-limited conductor)
``k0``               m/s         standard heterogeneous rate constant of the droplet-cell redox couple
``sei_rate``         A/m²        rate scale of SEI (solid-electrolyte interphase) formation below ``sei_onset``
``sei_capacity``     C/m²        SEI charge density that passivates the surface to 1/e of its activity
                                 (smaller: passivates faster)
``sei_thickness_max`` µm         SEI thickness at full coverage
``o2_onset``         V           potential (vs Li+/Li) above which the surface releases O2 (``inf``: never)
``modulus``          Pa          Young's modulus of the surface layer
``swelling``         1           maximal fractional thickness change on full lithiation (Si: ~3)
``film_thickness``   µm          thickness of the swelling film (0 elsewhere)
``label``            int         ground-truth material label; ``labels`` maps it to a name
===================  ==========  ============================================================================

State that evolves with what the experiment does: ``sei_charge`` (C/m², cathodic charge that went into SEI)
and ``lithiation`` (0..1).  The SEI coverage is θ = 1 − exp(−q/Q_cap); it reduces feedback and Faradaic
activity by the factor (1 − ``sei_blocking``·θ).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import InvalidArgument, check_choice, check_positive
from .sei import sei_charge_after

#: Static fields that may hold ``inf`` (interpolated through a bounded transform).
_MAY_BE_INF = ("k_feedback", "o2_onset")

#: Names accepted by :func:`make_sample`.
PRESETS = ("patterned", "hopg", "composite_cathode", "si_film")


@dataclass
class VirtualSample:
    """Fields over a regular (y, x) grid; ``x`` and ``y`` are the 1-D pixel-centre coordinates in µm."""

    name: str
    x: np.ndarray
    y: np.ndarray
    topography: np.ndarray
    k_feedback: np.ndarray
    k0: np.ndarray
    sei_rate: np.ndarray
    sei_capacity: np.ndarray
    sei_thickness_max: np.ndarray
    o2_onset: np.ndarray
    modulus: np.ndarray
    label: np.ndarray
    labels: dict[int, str]
    swelling: np.ndarray | None = None
    film_thickness: np.ndarray | None = None
    sei_onset: float = 0.8  # V vs Li+/Li
    sei_tafel: float = 0.12  # V/decade, see physics.sei
    sei_blocking: float = 0.9
    description: str = ""
    #: disk-shaped features as (x, y, radius) in µm: the O2 generators of a cathode, the discs of a pattern
    features: list[tuple[float, float, float]] = field(default_factory=list)
    #: element -> areal density (µg/cm²) over the grid, and the phase map with its names (physics.composition)
    composition: dict[str, np.ndarray] = field(default_factory=dict)
    phase: np.ndarray | None = None
    phase_names: dict[int, str] = field(default_factory=dict)
    sei_charge: np.ndarray = field(init=False)
    lithiation: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        shape = (self.y.size, self.x.size)
        for name in ("topography", "k_feedback", "k0", "sei_rate", "sei_capacity", "sei_thickness_max",
                     "o2_onset", "modulus", "label"):
            if getattr(self, name).shape != shape:
                raise InvalidArgument(f"field {name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.swelling is None:
            self.swelling = np.zeros(shape)
        if self.film_thickness is None:
            self.film_thickness = np.zeros(shape)
        self.sei_charge = np.zeros(shape)
        self.lithiation = np.zeros(shape)
        self._x0, self._y0 = float(self.x[0]), float(self.y[0])
        self._dx = float(self.x[1] - self.x[0])
        self._bounded: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ sampling
    @property
    def pixel_size(self) -> float:
        """Grid spacing in µm."""
        return self._dx

    def _index(self, x, y):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        return (y - self._y0) / self._dx, (x - self._x0) / self._dx

    def at(self, name: str, x, y) -> np.ndarray:
        """Bilinear value of field ``name`` at (x, y) µm (broadcast); clamps outside the grid."""
        arr = getattr(self, name)
        iy, ix = self._index(x, y)
        shape = np.broadcast(iy, ix).shape
        coords = np.vstack([np.broadcast_to(iy, shape).ravel(), np.broadcast_to(ix, shape).ravel()])
        order = 0 if name == "label" else 1
        if name in _MAY_BE_INF:
            # interpolate a bounded transform so that inf does not poison neighbours (static fields: cached)
            bounded = self._bounded.get(name)
            if bounded is None:
                bounded = self._bounded[name] = _to_bounded(arr)
            return _from_bounded(ndimage.map_coordinates(bounded, coords, order=order, mode="nearest")
                                 ).reshape(shape)
        return ndimage.map_coordinates(arr, coords, order=order, mode="nearest").reshape(shape)

    def sei_coverage(self) -> np.ndarray:
        """θ = 1 − exp(−q/Q_cap) over the grid (dimensionless)."""
        return 1.0 - np.exp(-self.sei_charge / self.sei_capacity)

    def activity_factor(self) -> np.ndarray:
        """Fraction of the fresh surface activity left by the SEI: 1 − blocking·θ."""
        return 1.0 - self.sei_blocking * self.sei_coverage()

    def height(self) -> np.ndarray:
        """Current surface height in µm: topography + SEI thickness + swelling of the film."""
        return (self.topography + self.sei_thickness_max * self.sei_coverage()
                + self.film_thickness * self.swelling * self.lithiation)

    def effective_k_feedback(self) -> np.ndarray:
        """Feedback rate constant after SEI passivation (m/s)."""
        return self.k_feedback * self.activity_factor()

    # ------------------------------------------------------------------ state updates
    def disk_mask(self, xc: float, yc: float, radius: float) -> np.ndarray:
        """Boolean mask of the pixels within ``radius`` µm of (xc, yc)."""
        xx = self.x[None, :] - xc
        yy = self.y[:, None] - yc
        return xx**2 + yy**2 <= max(radius, 0.5 * self._dx) ** 2

    def grow_sei(self, integrated_drive: float | np.ndarray, mask: np.ndarray | None = None) -> None:
        """Advance the SEI charge exactly for dq/dt = sei_rate·g(E)·exp(−q/Q_cap) (see ``physics.sei``).

        ``integrated_drive`` is R = ∫ g(E(t)) dt in s (:func:`espt_bluesky.physics.sei.sei_drive_integral`).
        """
        new = sei_charge_after(self.sei_charge, self.sei_rate, self.sei_capacity, integrated_drive)
        if mask is None:
            self.sei_charge = new
        else:
            self.sei_charge = np.where(mask, new, self.sei_charge)

    def lithiate(self, delta: float, mask: np.ndarray | None = None) -> None:
        """Change the lithiation state of the swelling film by ``delta`` (clipped to 0..1)."""
        film = self.film_thickness > 0
        if mask is not None:
            film &= mask
        self.lithiation = np.where(film, np.clip(self.lithiation + delta, 0.0, 1.0), self.lithiation)

    def reset_state(self) -> None:
        """Forget SEI and lithiation history (a fresh sample)."""
        self.sei_charge[...] = 0.0
        self.lithiation[...] = 0.0


def _to_bounded(a):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isinf(a), 1.0, a / (1.0 + np.abs(a)))


def _from_bounded(b):
    with np.errstate(divide="ignore"):
        return np.where(b >= 1.0 - 1e-12, np.inf, b / (1.0 - np.abs(b)))


# ---------------------------------------------------------------------- presets
def _grid(extent=(-30.0, 130.0), pixel=0.25):
    x = np.arange(extent[0], extent[1] + 0.5 * pixel, pixel)
    return x, x.copy()


def _soft_disk(xx, yy, xc, yc, r, edge):
    """1 inside a disk, 0 outside, with a smooth edge of width ``edge`` µm (avoids pixel aliasing)."""
    d = np.hypot(xx - xc, yy - yc) - r
    return 0.5 * (1.0 - np.tanh(d / max(edge, 1e-6)))


def patterned(seed: int = 0, pixel: float = 0.25) -> VirtualSample:
    """Au discs (radius 8 µm, 100 nm high) on SiO2 in a 3×3 array with 30 µm pitch centred on 50 µm.

    Au is a diffusion-limited conductor for the SECM mediator (k = inf); SiO2 is an inert insulator.
    """
    x, y = _grid(pixel=pixel)
    xx, yy = np.meshgrid(x, y)
    au = np.zeros_like(xx)
    for xc in (20.0, 50.0, 80.0):
        for yc in (20.0, 50.0, 80.0):
            au = np.maximum(au, _soft_disk(xx, yy, xc, yc, 8.0, 0.05))
    is_au = au > 0.5
    shape = xx.shape
    return VirtualSample(
        name="patterned",
        x=x, y=y,
        topography=0.1 * au,
        k_feedback=np.where(is_au, np.inf, 0.0),
        k0=np.where(is_au, 1e-3, 1e-9),
        sei_rate=np.where(is_au, 2.0, 0.0),
        sei_capacity=np.full(shape, 5.0),
        sei_thickness_max=np.where(is_au, 0.005, 0.0),
        o2_onset=np.full(shape, np.inf),
        modulus=np.where(is_au, 79e9, 70e9),
        label=is_au.astype(int),
        labels={0: "SiO2", 1: "Au"},
        description="Au discs (r = 8 µm, 100 nm) on SiO2, 3x3 array, pitch 30 µm",
        features=[(xc, yc, 8.0) for yc in (20.0, 50.0, 80.0) for xc in (20.0, 50.0, 80.0)],
    )


def hopg(seed: int = 0, pixel: float = 0.25) -> VirtualSample:
    """HOPG basal plane crossed by edge-plane step bands (3 µm wide) that are more active and passivate faster.

    Basal plane: slow mediator kinetics (k = 2e-5 m/s), SEI rate 1 A/m², capacity 10 C/m² (1 mC/cm²); edges: fast
    kinetics (k = 2e-3 m/s), 5× the SEI rate and a 5× smaller capacity (faster passivation), thicker, softer SEI.
    Terraces step up by 20 nm at each edge band.
    """
    rng = np.random.default_rng(seed + 101)
    x, y = _grid(pixel=pixel)
    xx, yy = np.meshgrid(x, y)
    edge = np.zeros_like(xx)
    topo = np.zeros_like(xx)
    # several slightly tilted step lines crossing the 0-100 µm square
    offsets = np.array([12.0, 38.0, 62.0, 88.0]) + rng.uniform(-3, 3, 4)
    angles = np.deg2rad(rng.uniform(-12, 12, 4))
    for off, ang in zip(offsets, angles):
        # signed distance to the line y = off + tan(ang)*(x-50)
        dist = (yy - off - np.tan(ang) * (xx - 50.0)) * np.cos(ang)
        edge = np.maximum(edge, 0.5 * (1 - np.tanh((np.abs(dist) - 1.5) / 0.05)))
        topo += 0.02 * 0.5 * (1 + np.tanh(dist / 0.2))
    is_edge = edge > 0.5
    shape = xx.shape
    return VirtualSample(
        name="hopg",
        x=x, y=y,
        topography=topo,
        k_feedback=np.where(is_edge, 2e-3, 2e-5),
        k0=np.where(is_edge, 1e-4, 1e-6),
        sei_rate=np.where(is_edge, 5.0, 1.0),
        sei_capacity=np.where(is_edge, 2.0, 10.0),
        sei_thickness_max=np.where(is_edge, 0.04, 0.01),
        o2_onset=np.full(shape, np.inf),
        modulus=np.where(is_edge, 0.6e9, 1.2e9),
        label=is_edge.astype(int),
        labels={0: "basal", 1: "edge"},
        description="HOPG basal plane with four edge-plane step bands (3 µm wide, 20 nm steps)",
    )


def composite_cathode(seed: int = 0, pixel: float = 0.25) -> VirtualSample:
    """NMC-like particles (radius 4–9 µm, hemispherical caps) in a carbon/binder matrix.

    Each particle has its own kinetics (log-normal k) and O2-release onset (4.35–4.7 V vs Li+/Li); the matrix is
    moderately conductive carbon and never releases O2.
    """
    rng = np.random.default_rng(seed + 202)
    x, y = _grid(pixel=pixel)
    xx, yy = np.meshgrid(x, y)
    shape = xx.shape
    topo = np.zeros(shape)
    label = np.zeros(shape, dtype=int)
    kfb = np.full(shape, 5e-5)
    k0 = np.full(shape, 1e-6)
    onset = np.full(shape, np.inf)
    centres: list[tuple[float, float, float]] = []
    tries = 0
    while len(centres) < 14 and tries < 2000:
        tries += 1
        xc, yc, r = rng.uniform(5, 95), rng.uniform(5, 95), rng.uniform(4, 9)
        if all(np.hypot(xc - a, yc - b) > r + c + 1.5 for a, b, c in centres):
            centres.append((xc, yc, r))
    for i, (xc, yc, r) in enumerate(centres, start=1):
        rr2 = (xx - xc) ** 2 + (yy - yc) ** 2
        inside = rr2 <= r * r
        cap = np.sqrt(np.clip(r * r - rr2, 0, None)) * 0.6
        topo = np.maximum(topo, cap)
        label[inside] = i
        kfb[inside] = 10 ** rng.normal(-3.7, 0.5)
        k0[inside] = 10 ** rng.normal(-6.0, 0.4)
        onset[inside] = rng.uniform(4.35, 4.7)
    part = label > 0
    return VirtualSample(
        name="composite_cathode",
        x=x, y=y,
        topography=topo,
        k_feedback=kfb,
        k0=k0,
        sei_rate=np.where(part, 1.0, 0.5),
        sei_capacity=np.full(shape, 5.0),
        sei_thickness_max=np.full(shape, 0.005),
        o2_onset=onset,
        modulus=np.where(part, 140e9, 3e9),
        label=label,
        labels={0: "carbon/binder", **{i: f"particle {i}" for i in range(1, len(centres) + 1)}},
        description=f"{len(centres)} NMC-like particles in carbon/binder",
        features=centres,
    )


def si_film(seed: int = 0, pixel: float = 0.25) -> VirtualSample:
    """Four 25 µm × 25 µm Si film pads (200 nm) on Cu; Si swells up to 300 % in thickness on full lithiation."""
    x, y = _grid(pixel=pixel)
    xx, yy = np.meshgrid(x, y)
    shape = xx.shape
    si = np.zeros(shape, dtype=bool)
    for xc in (27.5, 72.5):
        for yc in (27.5, 72.5):
            si |= (np.abs(xx - xc) <= 12.5) & (np.abs(yy - yc) <= 12.5)
    thick = np.where(si, 0.2, 0.0)
    return VirtualSample(
        name="si_film",
        x=x, y=y,
        topography=thick.copy(),
        k_feedback=np.where(si, 5e-4, np.inf),
        k0=np.where(si, 1e-5, 1e-4),
        sei_rate=np.where(si, 3.0, 1.0),
        sei_capacity=np.where(si, 5.0, 5.0),
        sei_thickness_max=np.where(si, 0.02, 0.005),
        o2_onset=np.full(shape, np.inf),
        modulus=np.where(si, 100e9, 120e9),
        label=si.astype(int),
        labels={0: "Cu", 1: "Si"},
        swelling=np.where(si, 3.0, 0.0),
        film_thickness=thick,
        description="four 25 µm Si pads (200 nm) on Cu",
    )


def uniform_kinetics(kappa: float, radius: float = 5.0, D: float = 7.8e-10, height: float = 0.0,
                     pixel: float = 1.0) -> VirtualSample:
    """A flat surface of one feedback kinetics: κ = k·a/D for a tip of ``radius`` a (µm) and mediator ``D`` (m²/s).

    k = κ·D/a (m/s) everywhere (0: insulator, ``inf``: conductor), at ``height`` µm; an inert, rigid surface
    otherwise (no SEI, no O2).  ``D`` defaults to the mediator of the default (aqueous FcMeOH) bench environment,
    which is the one a sample of this name gets, so the bench's κ is the one asked for.  Pass the result as
    ``make_sim_bench(..., sample=uniform_kinetics(0.1))``.
    """
    k = float(kappa)
    if not k >= 0:
        raise InvalidArgument(f"kappa={kappa!r}; allowed: 0 <= kappa <= inf")
    check_positive("radius", radius, units="µm")
    check_positive("D", D, units="m²/s")
    x, y = _grid(pixel=pixel)
    shape = (y.size, x.size)
    kfb = k * D / (radius * 1e-6) if np.isfinite(k) else np.inf
    sample = VirtualSample(
        name="uniform_kinetics", x=x, y=y,
        topography=np.full(shape, float(height)),
        k_feedback=np.full(shape, kfb),
        k0=np.full(shape, 1e-5),
        sei_rate=np.zeros(shape),
        sei_capacity=np.full(shape, 5.0),
        sei_thickness_max=np.zeros(shape),
        o2_onset=np.full(shape, np.inf),
        modulus=np.full(shape, 70e9),
        label=np.zeros(shape, dtype=int),
        labels={0: f"kappa={k:g}"},
        description=f"flat surface, uniform feedback kinetics kappa={k:g} for a = {radius:g} um (k = {kfb:.3g} m/s)",
    )
    from .composition import composition_fields

    sample.composition, sample.phase, sample.phase_names = composition_fields(sample, 0)
    return sample


_FACTORIES = {"patterned": patterned, "hopg": hopg, "composite_cathode": composite_cathode, "si_film": si_film}


def make_sample(name: str = "patterned", seed: int = 0, pixel: float = 0.25) -> VirtualSample:
    """Build a preset sample by name (one of :data:`PRESETS`); ``pixel`` is the grid spacing in µm."""
    name = check_choice("sample", name, PRESETS)
    check_positive("pixel", pixel, units="µm")
    sample = _FACTORIES[name](seed=seed, pixel=pixel)
    from .composition import composition_fields  # element fields for the bench's XRF (own random stream)

    sample.composition, sample.phase, sample.phase_names = composition_fields(sample, seed)
    return sample
