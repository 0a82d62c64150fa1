"""Probes as configuration: their geometry lands in the configuration of every descriptor that reads them.

A probe is an ophyd ``Device`` whose signals are all ``kind="config"``; the potentiostat (or AFM head) that
carries it merges the probe's configuration into its own, so each event stream records the geometry it was
measured with.  Lengths in µm, angles in degrees, spring constants in N/m.
"""

from __future__ import annotations

import math

from ophyd import Component as Cpt
from ophyd import Device, Signal

from ..errors import InvalidArgument, check_int, check_positive, check_range
from ..physics.bench_model import ProbeGeometry
from .signals import QuantitySignal

#: The probe each technique is measured with (``Probe.kind_name``).
PROBE_KIND = {"SECM": "UME", "SICM": "Nanopipette", "SECCM": "Nanopipette", "EC-AFM": "AFMCantilever"}


class Probe(Device):
    """Base class: ``geometry()`` gives the physics view, ``metadata()`` a plain dict for start documents."""

    kind_name = "probe"
    material = Cpt(Signal, value="", kind="config")

    def geometry(self) -> ProbeGeometry:
        raise NotImplementedError

    def metadata(self) -> dict:
        """Plain-dict description of the probe (for the start document)."""
        out = {"type": self.kind_name}
        for cpt in self.component_names:
            out[cpt] = getattr(self, cpt).get()
        return out


class UME(Probe):
    """Disk ultramicroelectrode in an insulating sheath (SECM tip).

    Parameters
    ----------
    radius : float
        Electrode radius a in µm (> 0).
    rg : float
        RG = sheath radius / a (> 1).
    material : str
        Electrode material, e.g. "Pt".
    """

    kind_name = "UME"
    radius = Cpt(QuantitySignal, value=5.0, kind="config", units="um")
    rg = Cpt(QuantitySignal, value=10.0, kind="config", units="1")  # sheath/electrode radius ratio

    def __init__(self, radius: float = 5.0, rg: float = 10.0, material: str = "Pt", *, name: str = "probe", **kw):
        check_positive("radius", radius, units="µm")
        check_range("rg", rg, 1.0, math.inf, low_inclusive=False)
        super().__init__(name=name, **kw)
        self.radius.put(float(radius))
        self.rg.put(float(rg))
        self.material.put(str(material))

    def geometry(self) -> ProbeGeometry:
        return ProbeGeometry("UME", radius=self.radius.get(), rg=self.rg.get(), material=self.material.get())


class Nanopipette(Probe):
    """Glass nanopipette (SICM, SECCM).

    Parameters
    ----------
    inner_radius, outer_radius : float
        Aperture radii at the tip in µm (0 < inner < outer).
    half_angle : float
        Half-cone angle in degrees (0, 90).
    barrels : int
        1 (single) or 2 (theta pipette).
    """

    kind_name = "Nanopipette"
    inner_radius = Cpt(QuantitySignal, value=0.05, kind="config", units="um")
    outer_radius = Cpt(QuantitySignal, value=0.075, kind="config", units="um")
    half_angle = Cpt(QuantitySignal, value=5.0, kind="config", units="deg")
    barrels = Cpt(Signal, value=1, kind="config")

    def __init__(self, inner_radius: float = 0.05, outer_radius: float | None = None, half_angle: float = 5.0,
                 barrels: int = 1, material: str = "quartz", *, name: str = "probe", **kw):
        check_positive("inner_radius", inner_radius, units="µm")
        outer_radius = 1.5 * inner_radius if outer_radius is None else outer_radius
        check_positive("outer_radius", outer_radius, units="µm")
        if outer_radius <= inner_radius:
            raise InvalidArgument(f"outer_radius={outer_radius!r} µm must be larger than inner_radius={inner_radius!r} µm")
        check_range("half_angle", half_angle, 0.0, 90.0, low_inclusive=False, high_inclusive=False, units="deg")
        check_int("barrels", barrels, 1, 2)
        super().__init__(name=name, **kw)
        self.inner_radius.put(float(inner_radius))
        self.outer_radius.put(float(outer_radius))
        self.half_angle.put(float(half_angle))
        self.barrels.put(int(barrels))
        self.material.put(str(material))

    def geometry(self) -> ProbeGeometry:
        return ProbeGeometry("Nanopipette", radius=self.inner_radius.get(), outer_radius=self.outer_radius.get(),
                             half_angle=self.half_angle.get(), barrels=self.barrels.get(),
                             material=self.material.get())


class AFMCantilever(Probe):
    """AFM cantilever with a spherical tip.

    Parameters
    ----------
    spring_constant : float
        N/m (> 0).
    tip_radius : float
        Tip radius in µm (> 0), e.g. 0.02 for 20 nm.
    """

    kind_name = "AFMCantilever"
    spring_constant = Cpt(QuantitySignal, value=2.0, kind="config", units="N/m")
    tip_radius = Cpt(QuantitySignal, value=0.02, kind="config", units="um")

    def __init__(self, spring_constant: float = 2.0, tip_radius: float = 0.02, material: str = "Si3N4", *,
                 name: str = "probe", **kw):
        check_positive("spring_constant", spring_constant, units="N/m")
        check_positive("tip_radius", tip_radius, units="µm")
        super().__init__(name=name, **kw)
        self.spring_constant.put(float(spring_constant))
        self.tip_radius.put(float(tip_radius))
        self.material.put(str(material))

    def geometry(self) -> ProbeGeometry:
        return ProbeGeometry("AFMCantilever", radius=self.tip_radius.get(), spring_constant=self.spring_constant.get(),
                             material=self.material.get())


def probe_from_geometry(g: ProbeGeometry, name: str = "probe") -> Probe:
    """The configuration device matching a physics :class:`ProbeGeometry`."""
    if g.kind == "UME":
        return UME(g.radius, g.rg, g.material, name=name)
    if g.kind == "Nanopipette":
        return Nanopipette(g.radius, g.outer_radius, g.half_angle, g.barrels, g.material, name=name)
    return AFMCantilever(g.spring_constant, g.radius, g.material, name=name)
