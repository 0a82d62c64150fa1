"""The simulated bench: one sample, one probe, the true tip position and an instrument clock.

:class:`BenchModel` is plain Python over numpy: the simulated ophyd devices are thin shells that call it, and the
caproto IOCs serve the same object.  Coordinates: x, y, z in µm in the stage frame; z is the height of the probe's
end (the tip plane of a UME or pipette, the apex of an AFM tip); the sample surface sits near z = 0 (plus tilt,
drift, topography, SEI growth and swelling).  Potentials in V (vs the reference named in ``environment``),
currents in A (anodic positive), time in s.

Everything random comes from one ``numpy.random.Generator`` seeded by ``seed``; noise, drift and tilt are
switched by their options (0 = off).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TipCrash, check_choice, check_positive, check_range
from . import afm as afm_physics
from . import secm, sicm
from .constants import FARADAY, f_nernst
from .sample import VirtualSample, make_sample
from .sei import sei_drive, sei_drive_integral

TECHNIQUES = ("SECM", "SICM", "SECCM", "EC-AFM")

#: Electrolyte, mediator and reference electrode per sample preset.  D in m²/s, c in mol/m³ (= mM), E0 in V.
ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "patterned": dict(electrolyte="0.1 M KCl (aq)", reference_electrode="Ag/AgCl (3 M KCl)",
                      mediator=dict(name="FcMeOH", E0=0.25, D=7.8e-10, c=1.0, n=1), e_ocp=0.0),
    "hopg": dict(electrolyte="1 M LiPF6 in EC:DMC (1:1)", reference_electrode="Li+/Li",
                 mediator=dict(name="ferrocene", E0=3.25, D=1.0e-9, c=1.0, n=1), e_ocp=3.0),
    "composite_cathode": dict(electrolyte="1 M LiPF6 in EC:DMC (1:1)", reference_electrode="Li+/Li",
                              mediator=dict(name="ferrocene", E0=3.25, D=1.0e-9, c=1.0, n=1), e_ocp=3.7),
    "si_film": dict(electrolyte="1 M LiPF6 in EC:DMC (1:1)", reference_electrode="Li+/Li",
                    mediator=dict(name="ferrocene", E0=3.25, D=1.0e-9, c=1.0, n=1), e_ocp=2.8),
}

O2_D = 2.0e-9  # m²/s, O2 in carbonate electrolyte (order of magnitude)


@dataclass
class ProbeGeometry:
    """The probe as the physics sees it.  Lengths in µm, angle in degrees, spring constant N/m."""

    kind: str  # "UME" | "Nanopipette" | "AFMCantilever"
    radius: float  # UME disk radius a, pipette inner radius r_i, AFM tip radius
    rg: float = 10.0
    outer_radius: float | None = None
    half_angle: float = 5.0
    barrels: int = 1
    spring_constant: float = 1.0
    material: str = "Pt"

    @property
    def end_radius(self) -> float:
        """Radius of the flat end that can touch the sample (UME: RG·a; pipette: r_o; AFM: tip radius)."""
        if self.kind == "UME":
            return self.rg * self.radius
        if self.kind == "Nanopipette":
            return self.outer_radius or 1.5 * self.radius
        return self.radius


def default_probe(technique: str) -> ProbeGeometry:
    """The probe a new user would mount for ``technique``."""
    if technique == "SECM":
        return ProbeGeometry("UME", radius=5.0, rg=10.0, material="Pt")
    if technique == "SICM":
        return ProbeGeometry("Nanopipette", radius=0.05, outer_radius=0.075, half_angle=5.0, material="quartz")
    if technique == "SECCM":
        return ProbeGeometry("Nanopipette", radius=1.0, outer_radius=1.3, half_angle=8.0, material="borosilicate")
    return ProbeGeometry("AFMCantilever", radius=0.02, spring_constant=2.0, material="Si3N4")


@dataclass
class BenchOptions:
    """Artefacts and instrument settings of the bench (all switchable; 0 disables an artefact)."""

    noise: float = 0.005  # relative current noise (1 sigma)
    current_noise_floor: float = 2e-14  # A, additive
    height_noise: float = 3e-4  # µm, AFM height noise
    deflection_noise: float = 5e-11  # m, optical-lever deflection noise floor (0.05 nm)
    drift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # µm/s of the sample relative to the stage
    tilt: tuple[float, float] = (0.0, 0.0)  # degrees about y (slope in x) and about x (slope in y)
    tilt_centre: tuple[float, float] = (50.0, 50.0)  # µm, where the tilt plane passes through z = 0
    substrate_area: float = 5e-5  # m², the macroscopic substrate electrode (0.5 cm²)
    ion_bias: float = 0.2  # V, SICM pipette bias
    conductivity: float = 1.3  # S/m, SICM electrolyte (≈ 0.1 M KCl)
    meniscus_height: float | None = None  # µm, SECCM droplet reach below the pipette end (default: r_i/2)
    sample_time: float = 0.01  # s, one current sample: a steady reading integrated longer averages its noise


@functools.lru_cache(maxsize=64)
def _pipette_constants(inner_radius: float, outer_radius: float, half_angle: float,
                       conductivity: float) -> tuple[Any, Any]:
    """(access length A µm, pipette resistance R_p Ω) of a conical pipette (:mod:`.sicm`), validated there."""
    return (sicm.access_length(inner_radius, outer_radius, half_angle),
            sicm.pipette_resistance(inner_radius, half_angle, conductivity))


class BenchModel:
    """Ground truth of a simulated experiment: sample, probe, tip position, clock and random state.

    Parameters
    ----------
    technique : {"SECM", "SICM", "SECCM", "EC-AFM"}
    sample : str or VirtualSample
        A preset name (see :data:`espt_bluesky.physics.sample.PRESETS`) or a sample object.
    probe : ProbeGeometry, optional
        Defaults to :func:`default_probe` for the technique.
    seed : int
        Seeds every random number of the bench.
    options : BenchOptions, optional
    start : (x, y), µm
        Lateral start position; the tip starts one probe radius above the local surface (L = 1).
    """

    def __init__(self, technique: str = "SECM", sample: str | VirtualSample = "patterned",
                 probe: ProbeGeometry | None = None, seed: int = 0, options: BenchOptions | None = None,
                 start: tuple[float, float] = (50.0, 50.0)):
        self.technique = check_choice("technique", technique, TECHNIQUES)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.sample = sample if isinstance(sample, VirtualSample) else make_sample(sample, seed=self.seed)
        self.environment = dict(ENVIRONMENTS.get(self.sample.name, ENVIRONMENTS["patterned"]))
        self.probe = probe or default_probe(self.technique)
        check_positive("probe radius", self.probe.radius, units="µm")
        if self.probe.kind == "UME":
            check_range("rg", self.probe.rg, 1.0, math.inf, low_inclusive=False)
        self.options = options or BenchOptions()
        check_range("noise", self.options.noise, 0.0, 1.0)
        self.clock = 0.0  # instrument time, s
        self.crashed = False
        self._substrate_potential = float(self.environment["e_ocp"])
        self._height_cache: np.ndarray | None = None
        x0, y0 = start
        self.position = np.array([x0, y0, 0.0])
        self.position[2] = self.surface_z(x0, y0) + self.probe.radius

    # ------------------------------------------------------------------ geometry
    def invalidate(self) -> None:
        """Call after changing sample state so the cached height field is rebuilt."""
        self._height_cache = None

    def _height_field(self) -> np.ndarray:
        if self._height_cache is None:
            self._height_cache = self.sample.height()
        return self._height_cache

    def _sample_frame(self, x, y):
        dx, dy, _ = self.options.drift
        return np.asarray(x, float) - dx * self.clock, np.asarray(y, float) - dy * self.clock

    def surface_z(self, x, y) -> np.ndarray:
        """Height of the sample surface (µm) under stage position (x, y), with tilt and drift."""
        xs, ys = self._sample_frame(x, y)
        from scipy import ndimage

        iy, ix = self.sample._index(xs, ys)
        shape = np.broadcast(iy, ix).shape
        coords = np.vstack([np.broadcast_to(iy, shape).ravel(), np.broadcast_to(ix, shape).ravel()])
        h = ndimage.map_coordinates(self._height_field(), coords, order=1, mode="nearest").reshape(shape)
        tx, ty = self.options.tilt
        cx, cy = self.options.tilt_centre
        h = h + math.tan(math.radians(tx)) * (np.asarray(x, float) - cx) \
              + math.tan(math.radians(ty)) * (np.asarray(y, float) - cy)
        return h + self.options.drift[2] * self.clock

    def _end_face_points(self, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        """Points of the probe's end face that can touch the sample (µm, stage frame).

        A nanopipette's face is the glass annulus between r_i and r_o: the same quadrature points as its ion
        current (:meth:`sicm_face`), plus its outer rim (32 points at r_o, where a tilted face touches first) and the
        axis, so that contact and current see one geometry.
        """
        if self.probe.kind == "Nanopipette":
            pts = self._annulus()
            ro = self.probe.end_radius
            rim = np.linspace(0.0, 2 * np.pi, 32, endpoint=False)
            return (np.concatenate([[x], x + pts["dx"].ravel(), x + ro * np.cos(rim)]),
                    np.concatenate([[y], y + pts["dy"].ravel(), y + ro * np.sin(rim)]))
        r = self.probe.end_radius
        ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        xs = np.concatenate([[x], x + r * np.cos(ang), x + 0.5 * r * np.cos(ang + 0.26)])
        ys = np.concatenate([[y], y + r * np.sin(ang), y + 0.5 * r * np.sin(ang + 0.26)])
        return xs, ys

    def _annulus(self) -> dict[str, np.ndarray]:
        key = (self.probe.radius, self.probe.end_radius)
        cache = getattr(self, "_annulus_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, sicm.annulus_points(self.probe.radius, self.probe.end_radius))
            self._annulus_cache = cache
        return cache[1]

    def clearance(self, x: float | None = None, y: float | None = None, z: float | None = None) -> float:
        """Smallest gap (µm) between the probe's end face and the surface; negative means a crash."""
        px, py, pz = self.position
        x = px if x is None else x
        y = py if y is None else y
        z = pz if z is None else z
        xs, ys = self._end_face_points(x, y)
        return float(z - np.max(self.surface_z(xs, ys)))

    def distance(self) -> float:
        """Gap d (µm) between the probe end and the surface directly below its axis."""
        x, y, z = self.position
        return float(z - self.surface_z(x, y))

    def move_to(self, x: float, y: float, z: float, velocity: float | None = None) -> float:
        """Move the tip in a straight line; stop at first contact and raise :class:`TipCrash`.

        Returns the instrument time the move took (s).  The clock is advanced by it.
        """
        start = self.position.copy()
        target = np.array([x, y, z], dtype=float)
        travel = float(np.linalg.norm(target - start))
        duration = travel / velocity if velocity else 0.0
        n = min(max(2, int(math.ceil(travel / max(0.25 * self.probe.radius, 0.05))) + 1), 400) if travel > 0 else 2
        fractions = np.linspace(0.0, 1.0, n)[1:]
        path = start[None, :] + fractions[:, None] * (target - start)[None, :]
        # every end-face point of every sub-step in one interpolation call
        fx, fy = self._end_face_points(0.0, 0.0)
        if target[0] == start[0] and target[1] == start[1]:
            # a vertical move (every approach step): each sub-step sees the same ground -- one sub-step's worth
            heights = np.repeat(self.surface_z(start[0] + fx, start[1] + fy).max(), len(path))
        else:
            heights = self.surface_z(path[:, 0:1] + fx[None, :], path[:, 1:2] + fy[None, :]).max(axis=1)
        gaps = path[:, 2] - heights
        hit = np.flatnonzero(gaps < 0.0)
        if hit.size:
            k = int(hit[0])
            s = fractions[k]
            p = path[k]
            # stop where the end face touches: the last safe sub-step, lifted onto the surface if needed
            self.position = path[k - 1].copy() if k > 0 else start.copy()
            self.position[2] -= min(self.clearance(), 0.0)
            self.crashed = True
            self.clock += duration * s
            raise TipCrash(
                f"tip crash: the probe end touched the sample at x={p[0]:.3f}, y={p[1]:.3f} µm "
                f"while moving to z={z:.3f} µm (local surface {float(heights[k]):.3f} µm)")
        self.position = target
        self.clock += duration
        return duration

    # ------------------------------------------------------------------ SECM
    def i_tip_inf(self) -> float:
        """Steady-state tip current far from any surface, i_T,inf = n·F·D·c·a·(4β(RG)) in A."""
        m = self.environment["mediator"]
        a = self.probe.radius * 1e-6
        return float(m["n"] * FARADAY * m["D"] * m["c"] * a * secm.tip_current_inf(self.probe.rg))

    def _footprint(self, x: float, y: float, d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points and weights over the region the tip senses: radius a + d around its axis (sunflower set)."""
        a = self.probe.radius
        rf = a + max(d, 0.0)
        n = 61
        k = np.arange(n) + 0.5
        rho = np.sqrt(k / n)
        th = k * math.pi * (3.0 - math.sqrt(5.0))
        w = np.exp(-2.0 * rho**2)  # more weight under the electrode than at the rim of the footprint
        return x + rf * rho * np.cos(th), y + rf * rho * np.sin(th), w / w.sum()

    def secm_feedback(self, x: float | None = None, y: float | None = None, z: float | None = None) -> float:
        """Normalised feedback I_T = i_T/i_T,inf at a tip position, footprint-averaged (noise free)."""
        px, py, pz = self.position
        x = px if x is None else x
        y = py if y is None else y
        z = pz if z is None else z
        a = self.probe.radius
        d = float(z - self.surface_z(x, y))
        if d > 50.0 * a:
            return 1.0
        xs, ys, w = self._footprint(x, y, d)
        L = np.clip((z - self.surface_z(xs, ys)) / a, 0.05, None)
        xs_s, ys_s = self._sample_frame(xs, ys)
        k = self.sample.at("k_feedback", xs_s, ys_s) * self._activity_at(xs_s, ys_s)
        kappa = k * (a * 1e-6) / self.environment["mediator"]["D"]
        return float(np.sum(w * secm.feedback_current(L, self.probe.rg, kappa)))

    def _activity_at(self, xs, ys) -> np.ndarray:
        cap = self.sample.at("sei_capacity", xs, ys)
        q = self.sample.at("sei_charge", xs, ys)
        return 1.0 - self.sample.sei_blocking * (1.0 - np.exp(-q / cap))

    def tip_wave_fraction(self, e_tip) -> np.ndarray:
        """Fraction of the limiting current at tip potential(s) ``e_tip``: a reversible oxidation wave."""
        m = self.environment["mediator"]
        arg = np.clip(-m["n"] * f_nernst() * (np.asarray(e_tip, float) - m["E0"]), -700, 700)
        return 1.0 / (1.0 + np.exp(arg))

    def secm_tip_current(self, e_tip: float) -> float:
        """Tip current (A) with noise at the current position and tip potential."""
        i = self.i_tip_inf() * self.secm_feedback() * float(self.tip_wave_fraction(e_tip))
        return i + self.o2_collection_current(e_tip)

    # ------------------------------------------------------------------ SG/TC (O2 release)
    def o2_generation_current(self, e_sub) -> np.ndarray:
        """O2 generation current (A, per feature) of the sample's generators at substrate potential(s)."""
        e = np.atleast_1d(np.asarray(e_sub, float))
        feats = self.sample.features
        if not feats:
            return np.zeros((e.size, 0))
        xs = np.array([f[0] for f in feats])
        ys = np.array([f[1] for f in feats])
        onset = self.sample.at("o2_onset", xs, ys)
        area = math.pi * (np.array([f[2] for f in feats]) * 1e-6) ** 2
        j = 5.0 * np.exp(np.clip((e[:, None] - onset[None, :]) / 0.06, -700, 3.0))  # A/m², ~60 mV/e-fold
        j = np.where(np.isfinite(onset)[None, :], j, 0.0)
        return j * area[None, :]

    def o2_collection_current(self, e_tip, e_sub=None) -> float | np.ndarray:
        """Tip current (A, negative: reduction) collecting O2 released by the substrate's generators."""
        from . import sgtc

        e_sub = self._substrate_potential if e_sub is None else e_sub
        gen = self.o2_generation_current(e_sub)  # (nt, nfeat)
        if gen.size == 0 or not np.any(gen):
            return 0.0 if np.ndim(e_sub) == 0 else np.zeros(np.size(e_sub))
        x, y, z = self.position
        feats = np.array(self.sample.features)
        r_feat = feats[:, 2]
        rr = np.hypot(x - feats[:, 0], y - feats[:, 1])
        d = max(self.distance(), 0.0)
        n_o2 = 4
        # surface concentration of a disk generator that releases current I: I = 4 n F D c_s a_s
        c_s = gen / (n_o2 * FARADAY * O2_D * 4.0 * r_feat[None, :] * 1e-6)
        c_tip = np.sum(sgtc.disk_generator_concentration(rr[None, :], d, r_feat[None, :], c_s), axis=1)
        # ORR at the tip: active only at sufficiently negative tip potential (vs the same reference)
        orr = 1.0 / (1.0 + np.exp(np.clip((np.asarray(e_tip, float) - 2.7) * f_nernst() * 0.5, -700, 700)))
        i = -4.0 * n_o2 * FARADAY * O2_D * (self.probe.radius * 1e-6) * c_tip * orr
        return float(i[0]) if np.ndim(e_sub) == 0 else i

    # ------------------------------------------------------------------ SICM
    def sicm_face(self, x: float | None = None, y: float | None = None) -> np.ndarray:
        """Sample height (µm) under the quadrature points of the pipette's end face at (x, y), shape
        ``(n_azimuth, n_radial)`` (see :func:`espt_bluesky.physics.sicm.annulus_points`)."""
        px, py, _ = self.position
        x = px if x is None else x
        y = py if y is None else y
        pts = self._annulus()
        return self.surface_z(x + pts["dx"], y + pts["dy"])

    def sicm_current(self, bias: float | None = None, z=None, face: np.ndarray | None = None):
        """Ion current (A) through the pipette (noise free), from the gap under its whole end face.

        ``z`` (µm, scalar or array) evaluates the current at other tip heights over the same (x, y) without
        moving (a controller's look-up of one approach); ``face`` reuses heights from :meth:`sicm_face`.
        """
        bias = self.options.ion_bias if bias is None else bias
        pr = self.probe
        ro = pr.end_radius
        h = self.sicm_face() if face is None else face
        zz = self.position[2] if z is None else np.asarray(z, float)
        gaps = np.asarray(zz, float)[..., None, None] - h
        # sicm.ion_current_normalized_face, with the pipette's constants (A, R_p) checked and computed once per
        # geometry instead of at every reading: the same arithmetic
        A, r_p = _pipette_constants(pr.radius, ro, pr.half_angle, self.options.conductivity)
        d = sicm.effective_gap(gaps, self._annulus()["w"])
        norm = d / (d + A)
        i_sat = bias / r_p
        out = i_sat * norm
        return float(out) if np.ndim(out) == 0 else out

    # ------------------------------------------------------------------ SECCM
    def meniscus_height(self) -> float:
        """How far (µm) the droplet reaches below the pipette end."""
        return self.options.meniscus_height or 0.5 * self.probe.radius

    def in_contact(self) -> bool:
        """True when the SECCM meniscus (or AFM tip) touches the surface."""
        if self.technique == "SECCM":
            return self.distance() <= self.meniscus_height()
        return self.clearance() <= 0.0

    def meniscus_radius(self) -> float:
        """Radius (µm) of the wetted footprint: the pipette aperture."""
        return self.probe.radius

    def contact_current(self, e_sub: float) -> float:
        """Surface current (A) of a freshly landed droplet held at ``e_sub``: double-layer charging and SEI."""
        if not self.in_contact():
            return 0.0
        x, y, _ = self.position
        xs, ys = self._sample_frame(x, y)
        area = math.pi * (self.meniscus_radius() * 1e-6) ** 2
        rate = float(self.sample.at("sei_rate", xs, ys)) * float(self._activity_at(xs, ys))
        e_ocp = self.environment["e_ocp"]
        i_dl = -0.2 * area * (e_ocp - e_sub) / 1e-3  # 0.2 F/m² charged over ~1 ms integration
        i_sei = -area * rate * float(sei_drive(e_sub, self.sample.sei_onset, self.sample.sei_tafel))
        return i_dl + i_sei - 1e-12  # a 1 pA leakage makes the landing detectable at any bias

    # ------------------------------------------------------------------ steady readings
    def read_currents(self, e_tip: float, e_sub: float, integration_time: float | None = None) -> tuple[float, float]:
        """Steady-state (tip, substrate) currents in A at the set potentials, with noise.

        SECM tip noise is additive (the amplifier floor, a fraction of i_T,inf whatever the feedback); SICM and
        SECCM noise is relative to the reading.  The substrate current is the SECCM droplet's; 0 otherwise.
        A SICM reading integrated over ``integration_time`` (s) averages that many ``sample_time`` samples (white
        noise: σ/√n); None or up to one sample time: one sample.
        """
        self._substrate_potential = float(e_sub)
        if self.technique == "SICM":
            n = 1 if integration_time is None else max(1, int(round(integration_time / self.options.sample_time)))
            i_sicm = self.sicm_current(e_tip)
            i_tip = self.add_noise(i_sicm) if n == 1 else float(np.mean(self.add_noise(np.full(n, i_sicm))))
        elif self.technique == "SECM":
            i_tip = self.add_noise(self.secm_tip_current(e_tip), scale=self.i_tip_inf())
        else:
            i_tip = 0.0
        i_sub = self.add_noise(self.contact_current(e_sub)) if self.technique == "SECCM" else 0.0
        return float(i_tip), float(i_sub)

    # ------------------------------------------------------------------ noise
    def add_noise(self, value, scale: float | None = None):
        """Add relative Gaussian noise and an additive floor (A) to current(s)."""
        v = np.asarray(value, float)
        if self.options.noise <= 0:
            return v if v.ndim else float(v)
        ref = np.abs(v) if scale is None else scale
        noisy = v + self.rng.normal(0.0, 1.0, v.shape) * (self.options.noise * ref + self.options.current_noise_floor)
        return noisy if noisy.ndim else float(noisy)

    # ------------------------------------------------------------------ waveforms
    def run_program(self, channel: str, technique: str, t: np.ndarray, program: np.ndarray,
                    other_potential: float) -> dict[str, np.ndarray]:
        """Run a potential (or current, for galvanostatic) program on ``channel`` and record both channels.

        ``channel`` is "tip" or "substrate"; ``other_potential`` holds the other channel.  Returns arrays
        ``time``, ``potential``, ``current`` (the driven channel) and ``collector_current`` (the other one).
        Advances the clock by the program's duration and updates the sample state (SEI, lithiation).
        """
        from . import voltammetry

        t = np.asarray(t, float)
        duration = float(t[-1] - t[0]) if t.size > 1 else 0.0
        if channel == "tip":
            potential = np.asarray(program, float)
            if self.technique == "SICM":
                current = np.full(t.shape, self.sicm_current(float(np.mean(potential))))
            else:
                i_fb = self.i_tip_inf() * self.secm_feedback()
                current = i_fb * self.tip_wave_fraction(potential)
                current = current + self.o2_collection_current(potential, np.full(t.shape, other_potential))
            collector = np.full(t.shape, self._substrate_steady(other_potential))
        elif self.technique == "SECCM":
            if not self.in_contact():
                potential = np.asarray(program, float)
                current = np.zeros(t.shape)
            else:
                potential, current = self._droplet_cell(t, program, technique, voltammetry)
            collector = np.zeros(t.shape)
        else:
            potential, current = self._macro_substrate(t, program, technique)
            e_tip = other_potential
            if self.technique == "SECM":
                collector = (self.i_tip_inf() * self.secm_feedback() * float(self.tip_wave_fraction(e_tip))
                             + self.o2_collection_current(e_tip, potential))
            elif self.technique == "SICM":
                collector = np.full(t.shape, self.sicm_current())
            else:
                collector = np.zeros(t.shape)
        self.clock += duration
        self._substrate_potential = float(potential[-1]) if channel == "substrate" else self._substrate_potential
        return dict(time=t - t[0], potential=np.asarray(potential, float),
                    current=self.add_noise(current), collector_current=self.add_noise(collector))

    def _substrate_steady(self, e_sub: float) -> float:
        if self.technique == "SECCM":
            return self.contact_current(e_sub)
        return 0.0

    def _droplet_cell(self, t, program, technique, voltammetry):
        """Local CV/CA/LSV of the droplet cell at the current position; SEI grows in the footprint."""
        x, y, _ = self.position
        xs, ys = self._sample_frame(x, y)
        r = self.meniscus_radius()
        mask = self.sample.disk_mask(float(xs), float(ys), r)
        q0 = float(np.mean(self.sample.sei_charge[mask]))
        params = self.droplet_params(float(xs), float(ys))
        # the wetted disk (area πr²) is modelled as a hemisphere of radius πr/4: same area, same steady-state
        # current 4nFDc·r as an inlaid disk (Saito)
        r_equiv = 0.25 * math.pi * r * 1e-6
        cap = float(self.sample.at("sei_capacity", xs, ys))
        state = voltammetry.SurfaceState(theta=1.0 - np.exp(-q0 / cap), sei_charge=q0)
        if technique == "CP":
            res = voltammetry.simulate_galvanostatic(t, program, params, state=state, geometry="hemisphere",
                                                     radius=r_equiv)
            potential, current = res.potential, np.asarray(program, float)
        else:
            res = voltammetry.simulate(t, program, params, state=state, geometry="hemisphere", radius=r_equiv)
            potential, current = np.asarray(program, float), res.current
        self.sample.sei_charge[mask] += res.state.sei_charge - q0
        self.invalidate()
        return potential, current

    def droplet_params(self, xs: float, ys: float):
        """Cell parameters of the droplet at sample-frame (xs, ys): local kinetics and SEI properties."""
        from . import voltammetry

        m = self.environment["mediator"]
        s = self.sample
        return voltammetry.CellParams(
            E0=m["E0"], k0=float(s.at("k0", xs, ys)), alpha=0.5, n=m["n"], D_O=m["D"], D_R=m["D"],
            c_bulk_O=0.0, c_bulk_R=0.0, area=math.pi * (self.meniscus_radius() * 1e-6) ** 2,
            sei_onset=s.sei_onset, sei_tafel=s.sei_tafel, sei_rate=float(s.at("sei_rate", xs, ys)),
            sei_capacity=float(s.at("sei_capacity", xs, ys)), sei_blocking=s.sei_blocking,
        )

    def _macro_substrate(self, t, program, technique):
        """The whole substrate as one electrode: SEI grows everywhere by its local rate; Si lithiates."""
        s = self.sample
        area = self.options.substrate_area
        if technique == "CP":
            # galvanostatic: a constant-current charge drives the potential along a simple two-plateau curve
            i = np.asarray(program, float)
            q = np.cumsum(np.r_[0.0, 0.5 * (i[1:] + i[:-1]) * np.diff(t)])
            potential = self.environment["e_ocp"] + 0.5 * np.tanh(q / (area * 50.0))
            current = i
        else:
            potential = np.asarray(program, float)
            sub = (slice(None, None, 8), slice(None, None, 8))
            rate, cap = s.sei_rate[sub], s.sei_capacity[sub]
            g = sei_drive(potential, s.sei_onset, s.sei_tafel)
            cum = np.r_[0.0, np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(t))]
            q0 = s.sei_charge[sub].ravel()
            qt = cap.ravel()[None, :] * np.log(np.exp(q0 / cap.ravel())[None, :]
                                               + rate.ravel()[None, :] * cum[:, None] / cap.ravel()[None, :])
            dq = np.gradient(qt.mean(axis=1), t) if t.size > 1 else np.zeros(t.shape)
            dl = -0.2 * area * np.gradient(potential, t) if t.size > 1 else np.zeros(t.shape)
            # anodic O2 evolution of the generators (the substrate-generation half of SG/TC)
            current = -area * dq + dl + self.o2_generation_current(potential).sum(axis=1)
        drive = sei_drive_integral(t, potential, s.sei_onset, s.sei_tafel)
        if drive > 0:
            s.grow_sei(drive)
        if np.any(s.film_thickness > 0):
            e_end = float(potential[-1])
            s.lithiation = np.where(s.film_thickness > 0, 0.5 * (1 - np.tanh((e_end - 0.25) / 0.05)), 0.0)
        self.invalidate()
        return potential, current

    # ------------------------------------------------------------------ EC-AFM
    def afm_height(self) -> float:
        """Measured height (µm) of the surface under the tip, as a contact-mode feedback loop reports it."""
        x, y, _ = self.position
        h = float(self.surface_z(x, y))
        if self.options.noise > 0:
            h += float(self.rng.normal(0.0, self.options.height_noise))
        return h

    def force_curve(self, z_travel: np.ndarray) -> dict[str, np.ndarray]:
        """Approach force curve at the current (x, y).

        ``z_travel`` (µm) is the piezo extension measured downward from the present tip height.
        Returns ``z`` (µm), ``deflection`` (m), ``force`` (N).
        """
        x, y, z = self.position
        xs, ys = self._sample_frame(x, y)
        gap = z - float(self.surface_z(x, y))
        modulus = float(self.sample.at("modulus", xs, ys))
        zt = np.asarray(z_travel, float)
        defl, _, _ = afm_physics.force_curve(
            zt * 1e-6, gap * 1e-6, self.probe.spring_constant, modulus, self.probe.radius * 1e-6, poisson=0.3)
        defl = np.asarray(defl)
        if self.options.noise > 0:
            defl = defl + self.rng.normal(0.0, self.options.deflection_noise, defl.shape)
        return dict(z=zt, deflection=defl, force=self.probe.spring_constant * defl)

    # ------------------------------------------------------------------ ground truth
    def truth(self) -> dict[str, Any]:
        """Ground-truth description for tests and for metadata (sample name, environment, artefacts)."""
        return dict(sample=self.sample.name, description=self.sample.description, seed=self.seed,
                    labels={int(k): v for k, v in self.sample.labels.items()}, tilt=list(self.options.tilt),
                    drift=list(self.options.drift), noise=self.options.noise)
