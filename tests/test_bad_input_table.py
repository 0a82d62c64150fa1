"""Every public entry point refuses bad input the same way (issue 11, item 6).

One row per bad call: the seven plans, ``make_sim_bench``, the devices' public methods, the probes,
``read_map``/``read_product``/``write_product`` and the session configuration.  Each row must raise
:class:`espt_bluesky.errors.InvalidArgument` whose message names the argument, *in the call itself* (plans
validate when called, before the RunEngine sees them), with no document emitted and no device moved or changed
(stage positions, the bench's true tip position and clock, cell_on, technique and every configuration signal).

The benches are built once per module (one per technique) and shared by every row: a refused call must leave them
exactly as they were, and each row checks that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import bluesky.plans as bp

from espt_bluesky.devices import AFMCantilever, Nanopipette, UME, make_sim_bench
from espt_bluesky.errors import InvalidArgument
from espt_bluesky.plans import (approach, combinatorial_sweep, constant_height_image, hopping_scan, measure_tilt,
                                operando_imaging, sgtc)
from espt_bluesky.session import build_session, load_config
from espt_bluesky.storage import read_map, read_product, write_product

NAN, INF = math.nan, math.inf


@dataclass
class Ctx:
    b: dict[str, Any]  # technique -> bench
    docs: list  # (name, doc) pairs of a small grid run
    tmp: Any  # a temporary directory (pathlib.Path)
    mp: Any  # pytest's monkeypatch


@dataclass
class Case:
    id: str
    arg: str  # must appear in the message
    call: Callable[[Ctx], Any]


def _sp(c: Ctx, t: str):
    return c.b[t].stage, c.b[t].potentiostat


def secm(f):
    """A call on the SECM bench (HOPG: Li+/Li reference, compliance -0.5..5 V): ``f(stage, pstat, bench)``."""
    return lambda c: f(*_sp(c, "SECM"), c.b["SECM"])


def sicm(f):
    return lambda c: f(*_sp(c, "SICM"), c.b["SICM"])


def seccm(f):
    return lambda c: f(*_sp(c, "SECCM"), c.b["SECCM"])


def afm(f):
    return lambda c: f(*_sp(c, "EC-AFM"), c.b["EC-AFM"])


GRID = dict(x_range=(10, 20, 2), y_range=(10, 20, 2))
IMG = dict(GRID, height=5.0, plane=0.0)
CV = dict(technique="CV", e_start=3.0, e_vertex1=0.5, e_vertex2=3.0, scan_rate=0.1)
LSV = dict(technique="LSV", e_start=3.7, e_end=4.8, scan_rate=0.01)
PLANE = dict(z0=0.0, slope_x=0.0, slope_y=0.0, x0=50.0, y0=50.0)
HUGE = dict(x_range=(0, 100, 100000), y_range=(0, 100, 100000))  # 10^10 points
BIG = dict(x_range=(0, 100, 10000), y_range=(0, 100, 1000))  # 10^7 points


def _ap(s, p, **kw):
    return approach(s, p, **{"technique": "SECM", **kw})


def _ch(s, p, **kw):
    return constant_height_image(s, p, **{**IMG, **kw})


def _op(s, p, **kw):
    return operando_imaging(s, p, **{**IMG, "n_images": 2, "cycle": CV, **kw})


def _sg(s, p, **kw):
    return sgtc(s, p, **{"tip_potential": 2.5, "steps": [4.0], **kw})


def _hop(s, p, b, **kw):
    return hopping_scan(s, p, **{"technique": "SICM", **GRID, "hop_height": 2.0, "hopper": b.hopper, **kw})


def _comb(s, p, **kw):
    return combinatorial_sweep(s, p, **{"seed": 1, **GRID, "parameters": {"scan_rate": [0.1, 1.0]},
                                        "fixed": {"e_start": 3.0, "e_vertex1": 0.5, "e_vertex2": 3.0}, **kw})


def _cfg(c: Ctx, name: str, text: str):
    p = c.tmp / name
    p.write_text(text)
    return load_config(p)


CASES = [
    # ------------------------------------------------------------------ approach
    Case("approach-technique-unknown", "technique", secm(lambda s, p, b: approach(s, p, technique="STM"))),
    Case("approach-technique-number", "technique", secm(lambda s, p, b: approach(s, p, technique=5))),
    Case("approach-technique-none", "technique", secm(lambda s, p, b: approach(s, p, technique=None))),
    Case("approach-technique-probe", "technique", secm(lambda s, p, b: approach(s, p, technique="SICM"))),
    Case("approach-coarse-str", "coarse_step", secm(lambda s, p, b: _ap(s, p, coarse_step="big"))),
    Case("approach-fine-zero", "fine_step", secm(lambda s, p, b: _ap(s, p, fine_step=0.0))),
    Case("approach-fine-neg", "fine_step", secm(lambda s, p, b: _ap(s, p, fine_step=-1))),
    Case("approach-fine-nan", "fine_step", secm(lambda s, p, b: _ap(s, p, fine_step=NAN))),
    Case("approach-fine-gt-coarse", "fine_step", secm(lambda s, p, b: _ap(s, p, fine_step=5, coarse_step=1))),
    Case("approach-travel-inf", "max_travel", secm(lambda s, p, b: _ap(s, p, max_travel=INF))),
    Case("approach-travel-str", "max_travel", secm(lambda s, p, b: _ap(s, p, max_travel="10"))),
    Case("approach-threshold-range", "threshold", secm(lambda s, p, b: _ap(s, p, threshold=1.2))),
    Case("approach-threshold-str", "threshold", secm(lambda s, p, b: _ap(s, p, threshold="0.5"))),
    Case("approach-threshold-nan", "threshold", secm(lambda s, p, b: _ap(s, p, threshold=NAN))),
    Case("approach-feedback", "feedback", secm(lambda s, p, b: _ap(s, p, feedback="pos"))),
    Case("approach-wd-neg", "working_distance", secm(lambda s, p, b: _ap(s, p, working_distance=-1))),
    Case("approach-wd-bool", "working_distance", secm(lambda s, p, b: _ap(s, p, working_distance=True))),
    Case("approach-units", "distance_units", secm(lambda s, p, b: _ap(s, p, distance_units="mm"))),
    Case("approach-confirm-float", "n_confirm", secm(lambda s, p, b: _ap(s, p, n_confirm=1.5))),
    Case("approach-confirm-neg", "n_confirm", secm(lambda s, p, b: _ap(s, p, n_confirm=-1))),
    Case("approach-tip-potential-range", "tip_potential", secm(lambda s, p, b: _ap(s, p, tip_potential=12.0))),
    Case("approach-tip-potential-str", "tip_potential", secm(lambda s, p, b: _ap(s, p, tip_potential="0.6"))),
    Case("approach-ref-zero", "reference_current", secm(lambda s, p, b: _ap(s, p, reference_current=0.0))),
    Case("approach-guess-nan", "surface_guess", secm(lambda s, p, b: _ap(s, p, surface_guess=NAN))),
    Case("approach-retract-zero", "retract", secm(lambda s, p, b: _ap(s, p, retract=0))),
    Case("approach-md-str", "md", secm(lambda s, p, b: _ap(s, p, md="run 1"))),
    Case("approach-sample-md-int", "sample_md", secm(lambda s, p, b: _ap(s, p, sample_md=5))),
    Case("approach-context-int", "context", secm(lambda s, p, b: _ap(s, p, context=5))),
    Case("approach-near-deviation", "near_deviation", secm(lambda s, p, b: _ap(s, p, near_deviation=0.0))),
    Case("approach-stop-offset-nan", "stop_offset", secm(lambda s, p, b: _ap(s, p, stop_offset=NAN))),
    Case("approach-fine-zone", "fine_zone", secm(lambda s, p, b: _ap(s, p, fine_zone=0))),
    Case("approach-sicm-drop", "drop", sicm(lambda s, p, b: approach(s, p, technique="SICM", drop=0.9))),
    Case("approach-sicm-drop-str", "drop", sicm(lambda s, p, b: approach(s, p, technique="SICM", drop="1%"))),
    Case("approach-seccm-contact", "contact_current", seccm(lambda s, p, b: approach(s, p, technique="SECCM",
                                                                                    contact_current=-1e-12))),
    Case("approach-afm-missing", "afm", afm(lambda s, p, b: approach(s, p, technique="EC-AFM"))),
    Case("approach-afm-setpoint", "deflection_setpoint",
         afm(lambda s, p, b: approach(s, p, technique="EC-AFM", afm=b.afm, deflection_setpoint=-1e-9))),
    Case("approach-afm-setpoint-str", "deflection_setpoint",
         afm(lambda s, p, b: approach(s, p, technique="EC-AFM", afm=b.afm, deflection_setpoint="1 nN"))),
    # ------------------------------------------------------------------ measure_tilt
    Case("tilt-two-points", "points", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (20, 20)],
                                                                        technique="SECM"))),
    Case("tilt-collinear", "points", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (20, 20), (30, 30)],
                                                                       technique="SECM"))),
    Case("tilt-outside", "points", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (500, 20), (30, 60)],
                                                                     technique="SECM"))),
    Case("tilt-points-str", "points", secm(lambda s, p, b: measure_tilt(s, p, "abc", technique="SECM"))),
    Case("tilt-points-nan", "points", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (NAN, 20), (30, 60)],
                                                                        technique="SECM"))),
    Case("tilt-technique", "technique", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (20, 10), (10, 20)],
                                                                          technique="STM"))),
    Case("tilt-lift-zero", "lift", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (20, 10), (10, 20)],
                                                                     technique="SECM", lift=0))),
    Case("tilt-lift-str", "lift", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (20, 10), (10, 20)],
                                                                    technique="SECM", lift="5"))),
    Case("tilt-unknown-kwarg", "fine_stp", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (20, 10), (10, 20)],
                                                                             technique="SECM", fine_stp=0.1))),
    Case("tilt-approach-kwarg", "fine_step", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (20, 10), (10, 20)],
                                                                               technique="SECM", fine_step=-1))),
    Case("tilt-retract", "retract", secm(lambda s, p, b: measure_tilt(s, p, [(10, 10), (20, 10), (10, 20)],
                                                                      technique="SECM", retract=-1))),
    # ------------------------------------------------------------------ constant_height_image
    Case("image-technique-unknown", "technique", secm(lambda s, p, b: _ch(s, p, technique="STM"))),
    Case("image-technique-seccm", "technique", secm(lambda s, p, b: _ch(s, p, technique="SECCM"))),
    Case("image-height-zero", "height", secm(lambda s, p, b: _ch(s, p, height=0.0))),
    Case("image-height-str", "height", secm(lambda s, p, b: _ch(s, p, height="5"))),
    Case("image-height-nan", "height", secm(lambda s, p, b: _ch(s, p, height=NAN))),
    Case("image-plane-unknown-key", "plane", secm(lambda s, p, b: _ch(s, p, plane={"foo": 1}))),
    Case("image-plane-missing-key", "plane", secm(lambda s, p, b: _ch(s, p, plane={"z0": 1.0}))),
    Case("image-plane-str", "plane", secm(lambda s, p, b: _ch(s, p, plane="flat"))),
    Case("image-plane-nan", "plane", secm(lambda s, p, b: _ch(s, p, plane=NAN))),
    Case("image-plane-bool", "plane", secm(lambda s, p, b: _ch(s, p, plane=True))),
    Case("image-plane-slope-nan", "plane", secm(lambda s, p, b: _ch(s, p, plane={**PLANE, "slope_x": NAN}))),
    Case("image-plane-slope-str", "plane", secm(lambda s, p, b: _ch(s, p, plane={**PLANE, "slope_y": "0.01"}))),
    Case("image-plane-too-high", "plane", secm(lambda s, p, b: _ch(s, p, plane=3000.0))),
    Case("image-x-zero-step", "x_range", secm(lambda s, p, b: _ch(s, p, x_range=(10, 10, 5)))),
    Case("image-x-two", "x_range", secm(lambda s, p, b: _ch(s, p, x_range=(0, 10)))),
    Case("image-x-num-float", "x_range", secm(lambda s, p, b: _ch(s, p, x_range=(0, 10, 2.5)))),
    Case("image-x-num-str", "x_range", secm(lambda s, p, b: _ch(s, p, x_range=(0, 10, "5")))),
    Case("image-x-start-str", "x_range", secm(lambda s, p, b: _ch(s, p, x_range=("a", 10, 5)))),
    Case("image-x-outside", "x_range", secm(lambda s, p, b: _ch(s, p, x_range=(0, 500, 5)))),
    Case("image-x-str", "x_range", secm(lambda s, p, b: _ch(s, p, x_range="0:10:5"))),
    Case("image-y-num-zero", "y_range", secm(lambda s, p, b: _ch(s, p, y_range=(0, 10, 0)))),
    Case("image-y-nan", "y_range", secm(lambda s, p, b: _ch(s, p, y_range=(0, NAN, 3)))),
    Case("image-grid-1e10", "x_range", secm(lambda s, p, b: _ch(s, p, **HUGE))),
    Case("image-grid-1e7", "x_range", secm(lambda s, p, b: _ch(s, p, **BIG))),
    Case("image-tip-potential", "tip_potential", secm(lambda s, p, b: _ch(s, p, tip_potential=99.0))),
    Case("image-snake-str", "snake", secm(lambda s, p, b: _ch(s, p, snake="no"))),
    Case("image-retract-zero", "retract", secm(lambda s, p, b: _ch(s, p, retract=0.0))),
    Case("image-md-list", "md", secm(lambda s, p, b: _ch(s, p, md=[1]))),
    Case("image-detectors-str", "detectors", secm(lambda s, p, b: _ch(s, p, detectors="raman"))),
    # ------------------------------------------------------------------ operando_imaging
    Case("operando-technique-unknown", "technique", secm(lambda s, p, b: _op(s, p, technique="STM"))),
    Case("operando-technique-afm", "technique", secm(lambda s, p, b: _op(s, p, technique="EC-AFM"))),
    Case("operando-n-images-float", "n_images", secm(lambda s, p, b: _op(s, p, n_images=1.5))),
    Case("operando-n-images-zero", "n_images", secm(lambda s, p, b: _op(s, p, n_images=0))),
    Case("operando-n-images-str", "n_images", secm(lambda s, p, b: _op(s, p, n_images="3"))),
    Case("operando-n-images-bool", "n_images", secm(lambda s, p, b: _op(s, p, n_images=True))),
    Case("operando-cycle-none", "cycle", secm(lambda s, p, b: _op(s, p, cycle=None))),
    Case("operando-cycle-empty", "cycle", secm(lambda s, p, b: _op(s, p, cycle={}))),
    Case("operando-cycle-technique", "cycle", secm(lambda s, p, b: _op(s, p, cycle={**CV, "technique": "EIS"}))),
    Case("operando-cycle-unknown-key", "scanrate", secm(lambda s, p, b: _op(s, p, cycle={**CV, "scanrate": 0.1}))),
    Case("operando-cycle-n-cycles", "n_cycles", secm(lambda s, p, b: _op(s, p, cycle={**CV, "n_cycles": 1.5}))),
    Case("operando-cycle-cp-nan", "current_setpoint",
         secm(lambda s, p, b: _op(s, p, cycle=dict(technique="CP", current_setpoint=NAN, duration=10.0)))),
    Case("operando-cycle-cp-str", "current_setpoint",
         secm(lambda s, p, b: _op(s, p, cycle=dict(technique="CP", current_setpoint="1 uA", duration=10.0)))),
    Case("operando-cycle-vertex", "e_vertex1", secm(lambda s, p, b: _op(s, p, cycle={**CV, "e_vertex1": -3.0}))),
    Case("operando-cycle-rate-str", "scan_rate", secm(lambda s, p, b: _op(s, p, cycle={**CV, "scan_rate": "fast"}))),
    Case("operando-cycle-samples", "n_samples", secm(lambda s, p, b: _op(s, p, cycle={**CV, "n_samples": 10**8}))),
    Case("operando-cycle-duration", "duration",
         secm(lambda s, p, b: _op(s, p, cycle=dict(technique="CA", e_hold=3.0, duration=-1.0)))),
    Case("operando-cap", "n_images", secm(lambda s, p, b: _op(s, p, x_range=(0, 100, 1000),
                                                              y_range=(0, 100, 1000), n_images=100))),
    Case("operando-height-neg", "height", secm(lambda s, p, b: _op(s, p, height=-5.0))),
    Case("operando-plane-foo", "plane", secm(lambda s, p, b: _op(s, p, plane={"foo": 1}))),
    Case("operando-detectors", "detectors", secm(lambda s, p, b: _op(s, p, detectors=[None]))),
    # ------------------------------------------------------------------ sgtc
    Case("sgtc-technique-unknown", "technique", secm(lambda s, p, b: _sg(s, p, technique="STM"))),
    Case("sgtc-technique-sicm", "technique", secm(lambda s, p, b: _sg(s, p, technique="SICM"))),
    Case("sgtc-tip-range", "tip_potential", secm(lambda s, p, b: _sg(s, p, tip_potential=12.0))),
    Case("sgtc-tip-str", "tip_potential", secm(lambda s, p, b: _sg(s, p, tip_potential="2.5"))),
    Case("sgtc-tip-none", "tip_potential", secm(lambda s, p, b: _sg(s, p, tip_potential=None))),
    Case("sgtc-both", "sweep", secm(lambda s, p, b: _sg(s, p, sweep=LSV))),
    Case("sgtc-neither", "sweep", secm(lambda s, p, b: _sg(s, p, steps=None))),
    Case("sgtc-sweep-empty", "sweep", secm(lambda s, p, b: _sg(s, p, steps=None, sweep={}))),
    Case("sgtc-sweep-technique", "sweep", secm(lambda s, p, b: _sg(s, p, steps=None,
                                                                   sweep={**LSV, "technique": "CA"}))),
    Case("sgtc-sweep-unknown-key", "e_stop", secm(lambda s, p, b: _sg(s, p, steps=None,
                                                                      sweep={**LSV, "e_stop": 4.0}))),
    Case("sgtc-sweep-rate", "scan_rate", secm(lambda s, p, b: _sg(s, p, steps=None, sweep={**LSV, "scan_rate": 0}))),
    Case("sgtc-sweep-str", "sweep", secm(lambda s, p, b: _sg(s, p, steps=None, sweep="LSV"))),
    Case("sgtc-steps-empty", "steps", secm(lambda s, p, b: _sg(s, p, steps=[]))),
    Case("sgtc-steps-str-item", "steps", secm(lambda s, p, b: _sg(s, p, steps=[4.0, "x"]))),
    Case("sgtc-steps-range", "steps", secm(lambda s, p, b: _sg(s, p, steps=[99.0]))),
    Case("sgtc-steps-str", "steps", secm(lambda s, p, b: _sg(s, p, steps="4.0"))),
    Case("sgtc-hold-zero", "hold_time", secm(lambda s, p, b: _sg(s, p, hold_time=0))),
    Case("sgtc-hold-nan", "hold_time", secm(lambda s, p, b: _sg(s, p, hold_time=NAN))),
    Case("sgtc-samples-float", "n_samples", secm(lambda s, p, b: _sg(s, p, n_samples=1.5))),
    Case("sgtc-samples-huge", "n_samples", secm(lambda s, p, b: _sg(s, p, n_samples=10**8))),
    Case("sgtc-locations-no-height", "height", secm(lambda s, p, b: _sg(s, p, locations=[(10, 10)], plane=0.0))),
    Case("sgtc-locations-outside", "locations", secm(lambda s, p, b: _sg(s, p, locations=[(500, 10)], height=5.0,
                                                                         plane=0.0))),
    Case("sgtc-locations-shape", "locations", secm(lambda s, p, b: _sg(s, p, locations=[(1, 2, 3)], height=5.0,
                                                                       plane=0.0))),
    Case("sgtc-locations-plane-foo", "plane", secm(lambda s, p, b: _sg(s, p, locations=[(10, 10)], height=5.0,
                                                                       plane={"foo": 1}))),
    Case("sgtc-retract", "retract", secm(lambda s, p, b: _sg(s, p, retract=-1.0))),
    # ------------------------------------------------------------------ hopping_scan
    Case("hop-technique-secm", "technique", sicm(lambda s, p, b: _hop(s, p, b, technique="SECM"))),
    Case("hop-technique-unknown", "technique", sicm(lambda s, p, b: _hop(s, p, b, technique="STM"))),
    Case("hop-approach-step-zero", "approach_step", sicm(lambda s, p, b: _hop(s, p, b, approach_step=0.0))),
    Case("hop-approach-step-str", "approach_step", sicm(lambda s, p, b: _hop(s, p, b, approach_step="x"))),
    Case("hop-height-zero", "hop_height", sicm(lambda s, p, b: _hop(s, p, b, hop_height=0.0))),
    Case("hop-height-nan", "hop_height", sicm(lambda s, p, b: _hop(s, p, b, hop_height=NAN))),
    Case("hop-height-str", "hop_height", sicm(lambda s, p, b: _hop(s, p, b, hop_height="2"))),
    Case("hop-drop-zero", "drop", sicm(lambda s, p, b: _hop(s, p, b, drop=0.0))),
    Case("hop-travel-neg", "max_travel", sicm(lambda s, p, b: _hop(s, p, b, max_travel=-1.0))),
    Case("hop-mode", "mode", sicm(lambda s, p, b: _hop(s, p, b, mode="fast"))),
    Case("hop-no-hopper", "hopper", sicm(lambda s, p, b: _hop(s, p, b, hopper=None))),
    Case("hop-order", "order", sicm(lambda s, p, b: _hop(s, p, b, order="spiral"))),
    Case("hop-random-no-seed", "seed", sicm(lambda s, p, b: _hop(s, p, b, order="random"))),
    Case("hop-random-seed-float", "seed", sicm(lambda s, p, b: _hop(s, p, b, order="random", seed=1.5))),
    Case("hop-points-none", "points", sicm(lambda s, p, b: _hop(s, p, b, order="points"))),
    Case("hop-points-outside", "points", sicm(lambda s, p, b: _hop(s, p, b, order="points",
                                                                   points=[(50, 50), (500, 50)]))),
    Case("hop-points-nan", "points", sicm(lambda s, p, b: _hop(s, p, b, order="points", points=[(50, NAN)]))),
    Case("hop-points-str", "points", sicm(lambda s, p, b: _hop(s, p, b, order="points", points="abc"))),
    Case("hop-grid-1e10", "x_range", sicm(lambda s, p, b: _hop(s, p, b, **HUGE))),
    Case("hop-grid-1e7", "x_range", sicm(lambda s, p, b: _hop(s, p, b, **BIG))),
    Case("hop-grid-missing", "x_range", sicm(lambda s, p, b: _hop(s, p, b, x_range=None))),
    Case("hop-measure-str", "measure", sicm(lambda s, p, b: _hop(s, p, b, measure="CV"))),
    Case("hop-measure-empty", "measure", sicm(lambda s, p, b: _hop(s, p, b, measure={}))),
    Case("hop-measure-unknown-key", "scanrate", sicm(lambda s, p, b: _hop(s, p, b, measure={**CV, "scanrate": 1}))),
    Case("hop-measure-samples", "n_samples", sicm(lambda s, p, b: _hop(s, p, b, measure={**CV, "n_samples": 10**8}))),
    Case("hop-measure-cycles", "n_cycles", sicm(lambda s, p, b: _hop(s, p, b, measure={**CV, "n_cycles": 1.5}))),
    Case("hop-measure-channel", "channel", sicm(lambda s, p, b: _hop(s, p, b, measure={**CV, "channel": "both"}))),
    Case("hop-snake-str", "snake", sicm(lambda s, p, b: _hop(s, p, b, snake="yes"))),
    Case("hop-seccm-offset", "stop_offset", seccm(lambda s, p, b: _hop(s, p, b, technique="SECCM",
                                                                       stop_offset=NAN))),
    Case("hop-seccm-contact", "contact_current", seccm(lambda s, p, b: _hop(s, p, b, technique="SECCM",
                                                                            contact_current=0.0))),
    Case("hop-retract", "retract", sicm(lambda s, p, b: _hop(s, p, b, retract="far"))),
    Case("hop-detectors-str", "detectors", sicm(lambda s, p, b: _hop(s, p, b, detectors="xrf"))),
    Case("hop-detectors-not-device", "detectors", sicm(lambda s, p, b: _hop(s, p, b, detectors=[5]))),
    Case("hop-detectors-duplicate", "detectors", sicm(lambda s, p, b: _hop(s, p, b, detectors=[p, p]))),
    Case("hop-on-fault", "on_fault", sicm(lambda s, p, b: _hop(s, p, b, on_fault="ignore"))),
    Case("hop-max-faults", "max_consecutive_faults", sicm(lambda s, p, b: _hop(s, p, b, max_consecutive_faults=2.5))),
    # ------------------------------------------------------------------ combinatorial_sweep
    Case("comb-technique", "technique", seccm(lambda s, p, b: _comb(s, p, technique="SECM"))),
    Case("comb-seed-float", "seed", seccm(lambda s, p, b: _comb(s, p, seed=1.5))),
    Case("comb-seed-str", "seed", seccm(lambda s, p, b: _comb(s, p, seed="a"))),
    Case("comb-seed-neg", "seed", seccm(lambda s, p, b: _comb(s, p, seed=-1))),
    Case("comb-repeats-zero", "repeats", seccm(lambda s, p, b: _comb(s, p, repeats=0))),
    Case("comb-repeats-float", "repeats", seccm(lambda s, p, b: _comb(s, p, repeats=2.5))),
    Case("comb-params-empty", "parameters", seccm(lambda s, p, b: _comb(s, p, parameters={}))),
    Case("comb-params-str", "parameters", seccm(lambda s, p, b: _comb(s, p, parameters="scan_rate"))),
    Case("comb-params-unknown", "foo", seccm(lambda s, p, b: _comb(s, p, parameters={"foo": [1]}))),
    Case("comb-params-scalar", "scan_rate", seccm(lambda s, p, b: _comb(s, p, parameters={"scan_rate": 0.1}))),
    Case("comb-params-value-str", "scan_rate", seccm(lambda s, p, b: _comb(s, p, parameters={"scan_rate": ["fast"]}))),
    Case("comb-window-inverted", "window", seccm(lambda s, p, b: _comb(s, p, parameters={"window": [(3.0, 0.5)]}))),
    Case("comb-window-str", "window", seccm(lambda s, p, b: _comb(s, p, parameters={"window": ["ab"]}))),
    Case("comb-window-nan", "window", seccm(lambda s, p, b: _comb(s, p, parameters={"window": [(NAN, 3.0)]}))),
    Case("comb-params-n-samples", "n_samples", seccm(lambda s, p, b: _comb(s, p, parameters={"n_samples": [100]}))),
    Case("comb-params-n-cycles", "n_cycles", seccm(lambda s, p, b: _comb(s, p, parameters={"n_cycles": [1.5]}))),
    Case("comb-fixed-unknown", "scanrate", seccm(lambda s, p, b: _comb(s, p, fixed={"scanrate": 0.1}))),
    Case("comb-fixed-str", "fixed", seccm(lambda s, p, b: _comb(s, p, fixed="x"))),
    Case("comb-measure-technique", "measure_technique", seccm(lambda s, p, b: _comb(s, p, measure_technique="EIS"))),
    Case("comb-too-few-spots", "repeats", seccm(lambda s, p, b: _comb(s, p, repeats=3))),
    Case("comb-no-hopper", "hopper", seccm(lambda s, p, b: _comb(s, p, mode="device"))),
    Case("comb-hop-height", "hop_height", seccm(lambda s, p, b: _comb(s, p, hop_height=-1.0))),
    Case("comb-approach-step", "approach_step", seccm(lambda s, p, b: _comb(s, p, approach_step=0.0))),
    Case("comb-grid-1e10", "x_range", seccm(lambda s, p, b: _comb(s, p, **HUGE))),
    Case("comb-detectors", "detectors", seccm(lambda s, p, b: _comb(s, p, detectors=3))),
    # ------------------------------------------------------------------ make_sim_bench
    Case("bench-technique", "technique", lambda c: make_sim_bench("STM")),
    Case("bench-technique-none", "technique", lambda c: make_sim_bench(None)),
    Case("bench-sample", "sample", lambda c: make_sim_bench("SECM", "graphene")),
    Case("bench-seed-str", "seed", lambda c: make_sim_bench("SECM", seed="a")),
    Case("bench-seed-float", "seed", lambda c: make_sim_bench("SECM", seed=1.5)),
    Case("bench-seed-neg", "seed", lambda c: make_sim_bench("SECM", seed=-1)),
    Case("bench-seed-bool", "seed", lambda c: make_sim_bench("SECM", seed=True)),
    Case("bench-time-scale-neg", "time_scale", lambda c: make_sim_bench("SECM", time_scale=-1)),
    Case("bench-time-scale-str", "time_scale", lambda c: make_sim_bench("SECM", time_scale="0")),
    Case("bench-time-scale-nan", "time_scale", lambda c: make_sim_bench("SECM", time_scale=NAN)),
    Case("bench-start-outside", "start", lambda c: make_sim_bench("SECM", start=(500.0, 50.0))),
    Case("bench-start-nan", "start", lambda c: make_sim_bench("SECM", start=(NAN, 50.0))),
    Case("bench-start-str", "start", lambda c: make_sim_bench("SECM", start="50,50")),
    Case("bench-start-three", "start", lambda c: make_sim_bench("SECM", start=(1.0, 2.0, 3.0))),
    Case("bench-noise-neg", "noise", lambda c: make_sim_bench("SECM", noise=-0.1)),
    Case("bench-noise-str", "noise", lambda c: make_sim_bench("SECM", noise="low")),
    Case("bench-drift-nan", "drift", lambda c: make_sim_bench("SECM", drift=(NAN, 0.0, 0.0))),
    Case("bench-drift-absurd", "drift", lambda c: make_sim_bench("SECM", drift=(1e6, 0.0, 0.0))),
    Case("bench-drift-length", "drift", lambda c: make_sim_bench("SECM", drift=(0.0, 0.0))),
    Case("bench-tilt-nan", "tilt", lambda c: make_sim_bench("SECM", tilt=(NAN, 0.0))),
    Case("bench-tilt-absurd", "tilt", lambda c: make_sim_bench("SECM", tilt=(89.0, 0.0))),
    Case("bench-tilt-str", "tilt", lambda c: make_sim_bench("SECM", tilt="flat")),
    Case("bench-tilt-centre", "tilt_centre", lambda c: make_sim_bench("SECM", tilt_centre=(NAN, 0.0))),
    Case("bench-area-neg", "substrate_area", lambda c: make_sim_bench("SECM", substrate_area=-1.0)),
    Case("bench-conductivity-zero", "conductivity", lambda c: make_sim_bench("SICM", conductivity=0.0)),
    Case("bench-ion-bias-nan", "ion_bias", lambda c: make_sim_bench("SICM", ion_bias=NAN)),
    Case("bench-meniscus-neg", "meniscus_height", lambda c: make_sim_bench("SECCM", meniscus_height=-1.0)),
    Case("bench-noise-floor-neg", "current_noise_floor", lambda c: make_sim_bench("SECM", current_noise_floor=-1.0)),
    Case("bench-option-unknown", "noize", lambda c: make_sim_bench("SECM", noize=0.1)),
    Case("bench-probe-kind", "probe", lambda c: make_sim_bench("SICM", probe=UME())),
    Case("bench-probe-str", "probe", lambda c: make_sim_bench("SECM", probe="UME")),
    # ------------------------------------------------------------------ potentiostat
    Case("pstat-technique", "technique", secm(lambda s, p, b: p.configure_technique("EIS"))),
    Case("pstat-rate-str", "scan_rate", secm(lambda s, p, b: p.configure_technique(
        "CV", e_start=3.0, e_vertex1=0.5, e_vertex2=3.0, scan_rate="fast"))),
    Case("pstat-cycles-float", "n_cycles", secm(lambda s, p, b: p.configure_technique(
        "CV", e_start=3.0, e_vertex1=0.5, e_vertex2=3.0, n_cycles=1.5))),
    Case("pstat-cycles-zero", "n_cycles", secm(lambda s, p, b: p.configure_technique(
        "CV", e_start=3.0, e_vertex1=0.5, e_vertex2=3.0, n_cycles=0))),
    Case("pstat-cp-nan", "current_setpoint", secm(lambda s, p, b: p.configure_technique("CP", current_setpoint=NAN))),
    Case("pstat-cp-str", "current_setpoint", secm(lambda s, p, b: p.configure_technique("CP",
                                                                                       current_setpoint="1e-9"))),
    Case("pstat-samples-huge", "n_samples", secm(lambda s, p, b: p.configure_technique("CA", e_hold=3.0,
                                                                                      n_samples=10**8))),
    Case("pstat-samples-float", "n_samples", secm(lambda s, p, b: p.configure_technique("CA", e_hold=3.0,
                                                                                       n_samples=200.0))),
    Case("pstat-hold-range", "e_hold", secm(lambda s, p, b: p.configure_technique("CA", e_hold=99.0))),
    Case("pstat-duration-inf", "duration", secm(lambda s, p, b: p.configure_technique("CA", e_hold=3.0,
                                                                                     duration=INF))),
    Case("pstat-integration-zero", "integration_time", secm(lambda s, p, b: p.configure_technique(
        "READ", integration_time=0.0))),
    Case("pstat-channel", "channel", secm(lambda s, p, b: p.configure_technique("READ", channel="both"))),
    Case("pstat-param-unknown", "foo", secm(lambda s, p, b: p.configure_technique("READ", foo=1))),
    Case("pstat-lsv-end-nan", "e_end", secm(lambda s, p, b: p.configure_technique("LSV", e_start=3.0, e_end=NAN))),
    Case("pstat-unused-param-str", "e_end", secm(lambda s, p, b: p.configure_technique(
        "CV", e_start=3.0, e_vertex1=0.5, e_vertex2=3.0, e_end="x"))),
    Case("pstat-check-technique", "technique", secm(lambda s, p, b: p.check_technique("STM"))),
    # ------------------------------------------------------------------ stage
    Case("stage-set-str", "stage_x", secm(lambda s, p, b: s.x.set("abc"))),
    Case("stage-set-nan", "stage_x", secm(lambda s, p, b: s.x.set(NAN))),
    Case("stage-set-outside", "stage_x", secm(lambda s, p, b: s.x.set(500.0))),
    Case("stage-move-none", "stage_z", secm(lambda s, p, b: s.z.move(None))),
    Case("stage-set-bool", "stage_y", secm(lambda s, p, b: s.y.set(True))),
    Case("stage-z-below", "stage_z", secm(lambda s, p, b: s.z.set(-1e4))),
    # ------------------------------------------------------------------ hopper
    Case("hopper-criterion", "criterion", sicm(lambda s, p, b: b.hopper.configure_hop(
        criterion="touch", setpoint=0.01, hop_height=2.0, approach_step=0.02, max_travel=20.0))),
    Case("hopper-setpoint-str", "setpoint", sicm(lambda s, p, b: b.hopper.configure_hop(
        criterion="current_drop", setpoint="1%", hop_height=2.0, approach_step=0.02, max_travel=20.0))),
    Case("hopper-height-zero", "hop_height", sicm(lambda s, p, b: b.hopper.configure_hop(
        criterion="current_drop", setpoint=0.01, hop_height=0.0, approach_step=0.02, max_travel=20.0))),
    Case("hopper-step-nan", "approach_step", sicm(lambda s, p, b: b.hopper.configure_hop(
        criterion="current_drop", setpoint=0.01, hop_height=2.0, approach_step=NAN, max_travel=20.0))),
    Case("hopper-travel-neg", "max_travel", sicm(lambda s, p, b: b.hopper.configure_hop(
        criterion="current_drop", setpoint=0.01, hop_height=2.0, approach_step=0.02, max_travel=-1.0))),
    Case("hopper-offset-nan", "stop_offset", sicm(lambda s, p, b: b.hopper.configure_hop(
        criterion="current_drop", setpoint=0.01, hop_height=2.0, approach_step=0.02, max_travel=20.0,
        stop_offset=NAN))),
    Case("hopper-measure-str", "measure", sicm(lambda s, p, b: b.hopper.configure_hop(
        criterion="current_drop", setpoint=0.01, hop_height=2.0, approach_step=0.02, max_travel=20.0,
        measure="yes"))),
    Case("hopper-drop-range", "setpoint", sicm(lambda s, p, b: b.hopper.configure_hop(
        criterion="current_drop", setpoint=1.5, hop_height=2.0, approach_step=0.02, max_travel=20.0))),
    Case("hopper-set-outside", "hopper", sicm(lambda s, p, b: b.hopper.set((500.0, 50.0)))),
    Case("hopper-set-str", "hopper", sicm(lambda s, p, b: b.hopper.set("ab"))),
    Case("hopper-set-three", "hopper", sicm(lambda s, p, b: b.hopper.set((1.0, 2.0, 3.0)))),
    Case("hopper-set-nan", "hopper", sicm(lambda s, p, b: b.hopper.set((NAN, 2.0)))),
    # ------------------------------------------------------------------ AFM head and probes
    Case("afm-travel-zero", "travel", afm(lambda s, p, b: b.afm.configure_force_curve(travel=0.0))),
    Case("afm-travel-str", "travel", afm(lambda s, p, b: b.afm.configure_force_curve(travel="x"))),
    Case("afm-points-float", "n_points", afm(lambda s, p, b: b.afm.configure_force_curve(n_points=2.5))),
    Case("afm-points-huge", "n_points", afm(lambda s, p, b: b.afm.configure_force_curve(n_points=10**8))),
    Case("afm-mode", "mode", afm(lambda s, p, b: b.afm.set_mode("tapping"))),
    Case("probe-ume-radius-str", "radius", lambda c: UME(radius="5")),
    Case("probe-ume-rg-nan", "rg", lambda c: UME(rg=NAN)),
    Case("probe-pipette-barrels", "barrels", lambda c: Nanopipette(barrels=3)),
    Case("probe-pipette-barrels-float", "barrels", lambda c: Nanopipette(barrels=1.5)),
    Case("probe-pipette-angle", "half_angle", lambda c: Nanopipette(half_angle=90.0)),
    Case("probe-afm-radius", "tip_radius", lambda c: AFMCantilever(tip_radius=0.0)),
    Case("probe-afm-k-str", "spring_constant", lambda c: AFMCantilever(spring_constant="2 N/m")),
    # ------------------------------------------------------------------ storage readers and writers
    Case("read-map-str", "run", lambda c: read_map("abc")),
    Case("read-map-int", "run", lambda c: read_map(5)),
    Case("read-map-empty", "run", lambda c: read_map([])),
    Case("read-map-not-docs", "run", lambda c: read_map([1, 2, 3])),
    Case("read-map-variables-str", "variables", lambda c: read_map(c.docs, variables="pstat_tip_current")),
    Case("read-map-variables-unknown", "variables", lambda c: read_map(c.docs, variables=["nope"])),
    Case("read-map-stream", "stream", lambda c: read_map(c.docs, stream=5)),
    Case("read-map-stream-missing", "stream", lambda c: read_map(c.docs, stream="baseline")),
    Case("read-map-waveforms", "waveforms", lambda c: read_map(c.docs, waveforms="no")),
    Case("read-product-run", "run", lambda c: read_product("abc", "kappa_map")),
    Case("read-product-name", "name", lambda c: read_product(c.docs, 5)),
    Case("write-product-run", "run", lambda c: write_product("abc", "kappa_map", np.zeros(3))),
    Case("write-product-name", "name", lambda c: write_product(None, "kappa map!", np.zeros(3))),
    Case("write-product-metadata", "metadata", lambda c: write_product(None, "kappa_map", np.zeros(3),
                                                                         metadata="x")),
    # ------------------------------------------------------------------ session configuration
    Case("config-type", "config", lambda c: load_config(5)),
    Case("config-technique", "technique", lambda c: load_config({"bench": {"technique": "STM"}})),
    Case("config-seed-str", "seed", lambda c: load_config({"bench": {"seed": "a"}})),
    Case("config-time-scale-str", "time_scale", lambda c: load_config({"bench": {"time_scale": "fast"}})),
    Case("config-bench-key", "techniqe", lambda c: load_config({"bench": {"techniqe": "SECM"}})),
    Case("config-section", "stroage", lambda c: load_config({"stroage": {}})),
    Case("config-batch-zero", "batch_size", lambda c: load_config({"storage": {"batch_size": 0}})),
    Case("config-batch-str", "batch_size", lambda c: load_config({"storage": {"batch_size": "25"}})),
    Case("config-mode", "mode", lambda c: load_config({"storage": {"mode": "cloud"}})),
    Case("config-storage-key", "batchsize", lambda c: load_config({"storage": {"batchsize": 5}})),
    Case("config-assets-str", "waveform_assets", lambda c: load_config({"storage": {"waveform_assets": "yes"}})),
    Case("config-data-dir-int", "data_dir", lambda c: load_config({"storage": {"data_dir": 5}})),
    Case("config-option-key", "noize", lambda c: load_config({"bench": {"options": {"noize": 1}}})),
    Case("config-options-str", "options", lambda c: load_config({"bench": {"options": "x"}})),
    Case("config-option-tilt", "tilt", lambda c: load_config({"bench": {"options": {"tilt": [99, 0]}}})),
    Case("config-bench-str", "bench", lambda c: load_config({"bench": "SECM"})),
    Case("config-start", "start", lambda c: load_config({"bench": {"start": [500, 50]}})),
    Case("config-session-key", "suspender", lambda c: load_config({"session": {"suspender": False}})),
    Case("config-suspenders-str", "suspenders", lambda c: load_config({"session": {"suspenders": "off"}})),
    Case("config-toml-malformed", "bad.toml", lambda c: _cfg(c, "bad.toml", "[bench\ntechnique = 'SECM'\n")),
    Case("config-json-malformed", "bad.json", lambda c: _cfg(c, "bad.json", "{\"bench\": }")),
    Case("config-yaml-malformed", "bad.yaml", lambda c: _cfg(c, "bad.yaml", "bench: [SECM\n")),
    Case("config-yaml-list", "list.yaml", lambda c: _cfg(c, "list.yaml", "- SECM\n- hopg\n")),
    Case("config-toml-bad-value", "seed", lambda c: _cfg(c, "seed.toml", "[bench]\nseed = 'x'\n")),
    Case("config-missing-file", "nope.toml", lambda c: load_config(c.tmp / "nope.toml")),
    Case("config-suffix", "conf.txt", lambda c: _cfg(c, "conf.txt", "bench = 1\n")),
    Case("config-env-bench-seed", "ESPT_BENCH", lambda c: (c.mp.setenv("ESPT_BENCH", "SECCM:hopg:x"),
                                                           load_config())),
    Case("config-env-bench-technique", "ESPT_BENCH", lambda c: (c.mp.setenv("ESPT_BENCH", "STM"), load_config())),
    Case("config-env-file", "ESPT_CONFIG", lambda c: (c.mp.setenv("ESPT_CONFIG", str(c.tmp / "gone.toml")),
                                                      load_config())),
    Case("config-env-mode", "ESPT_STORAGE_MODE", lambda c: (c.mp.setenv("ESPT_STORAGE_MODE", "cloud"),
                                                            load_config())),
    Case("session-technique", "technique", lambda c: build_session({"bench": {"technique": "STM"},
                                                                    "storage": {"mode": "none"}})),
    Case("session-option", "drift", lambda c: build_session({"bench": {"options": {"drift": [NAN, 0, 0]}},
                                                             "storage": {"mode": "none"}})),
]


# ---------------------------------------------------------------------------------------------------- harness
def _state(bench) -> dict[str, Any]:
    """Everything a refused call must leave alone: true position and clock, every signal of every device."""
    out = {"position": bench.model.position.copy(), "clock": bench.model.clock}
    for dev in (bench.stage, bench.potentiostat, bench.hopper, bench.afm, bench.probe):
        if dev is None:
            continue
        for walk in dev.walk_signals():
            out[walk.item.name] = walk.item.get()
    return out


def _same(a: dict, b: dict) -> list[str]:
    diff = []
    for k in a.keys() | b.keys():
        x, y = a.get(k), b.get(k)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            same = np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        else:
            same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        if not same:
            diff.append(f"{k}: {x!r} -> {y!r}")
    return diff


@pytest.fixture(scope="module")
def benches():
    return {t: make_sim_bench(t, "hopg" if t in ("SECM", "SECCM") else "composite_cathode", seed=1)
            for t in ("SECM", "SICM", "SECCM", "EC-AFM")}


@pytest.fixture(scope="module")
def RE():
    """One RunEngine for the table (a refused call must not reach it), with conftest's validating collector."""
    from bluesky import RunEngine
    from conftest import DocumentCollector

    engine = RunEngine({}, call_returns_result=True)
    engine.collector = DocumentCollector()
    engine.subscribe(engine.collector)
    return engine


@pytest.fixture(scope="module")
def grid_docs():
    from bluesky import RunEngine

    b = make_sim_bench("SECM", "patterned", seed=0)
    docs: list = []
    RE = RunEngine({})
    RE.subscribe(lambda n, d: docs.append((n, d)))
    RE(bp.grid_scan([b.potentiostat], b.stage.y, 40, 60, 2, b.stage.x, 40, 60, 2))
    return docs


def test_table_is_large_enough():
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_refused(case, benches, grid_docs, RE, tmp_path, monkeypatch):
    for env in ("ESPT_CONFIG", "ESPT_BENCH", "ESPT_STORAGE_MODE", "ESPT_TILED_URI"):
        monkeypatch.delenv(env, raising=False)
    ctx = Ctx(benches, grid_docs, tmp_path, monkeypatch)
    before = {t: _state(b) for t, b in benches.items()}
    try:
        out = case.call(ctx)
    except InvalidArgument as exc:
        msg = str(exc)
    except Exception as exc:  # noqa: BLE001 -- the table reports any other error as a failure
        pytest.fail(f"{type(exc).__name__} instead of InvalidArgument: {exc}")
    else:
        what = "returned"
        if hasattr(out, "send"):  # a plan that did not check when called: what does it do when run?
            try:
                RE(out)
                what = "returned a plan that ran"
            except Exception as exc:  # noqa: BLE001
                what = f"returned a plan that failed in the RunEngine with {type(exc).__name__}: {exc}"
        pytest.fail(f"not refused when called: {what}")
    assert case.arg in msg, f"the message does not name {case.arg!r}: {msg}"
    assert RE.collector.docs == []
    for t, b in benches.items():
        changed = _same(before[t], _state(b))
        assert not changed, f"{t} bench changed: {changed}"
