"""Coordinate frames: composition, inversion, decomposition and serialisation of affine transforms."""

import json
import math

import numpy as np
import pytest
import xarray as xr

from espt_bluesky.correlate.frames import (AffineTransform, chain, frame_of, to_frame, transforms_of,
                                           with_transform)
from espt_bluesky.errors import InvalidArgument


def test_params_round_trip_and_point_mapping():
    t = AffineTransform.from_params(scale=(1.5, 0.8), rotation_deg=33.0, shear_deg=4.0, reflect=True,
                                    translation=(12.0, -7.0), source="a", target="b")
    p = t.params()
    assert p["rotation_deg"] == pytest.approx(33.0)
    assert (p["scale_x"], p["scale_y"]) == pytest.approx((1.5, 0.8))
    assert p["shear_deg"] == pytest.approx(4.0)
    assert p["reflect"] is True and t.is_reflection
    # a rotation by 90° maps the x axis onto the y axis (independent expectation)
    r = AffineTransform.from_params(rotation_deg=90.0, source="a", target="b")
    assert r.apply([1.0, 0.0]) == pytest.approx([0.0, 1.0])


def test_compose_invert_and_chain():
    a = AffineTransform.from_params(scale=2.0, rotation_deg=10.0, translation=(1, 2), source="pix", target="stage",
                                    source_units="px")
    b = AffineTransform.from_params(rotation_deg=-25.0, translation=(-5, 3), source="stage", target="sample")
    pts = np.random.default_rng(1).uniform(-50, 50, (20, 2))
    assert (b @ a).apply(pts) == pytest.approx(b.apply(a.apply(pts)))
    assert (a.inverse() @ a).apply(pts) == pytest.approx(pts)
    assert chain([a, b], "sample", "pix").apply(b.apply(a.apply(pts))) == pytest.approx(pts)
    with pytest.raises(InvalidArgument, match="cannot compose"):
        a @ b
    with pytest.raises(InvalidArgument, match="no chain"):
        chain([a], "pix", "sample")


def test_serialisation_is_json_and_lossless():
    t = AffineTransform.from_params(scale=1.1, rotation_deg=-3.0, translation=(4, 5), source="x:stage",
                                    target="y:stage", provenance={"method": "fiducials", "n": np.int64(4)})
    t = AffineTransform(t.matrix, t.source, t.target, residual_rms=0.12, provenance=t.provenance)
    d = json.loads(json.dumps(t.to_dict()))
    back = AffineTransform.from_dict(d)
    assert back == t and back.residual_rms == pytest.approx(0.12) and back.provenance["n"] == 4


def test_transform_on_dataset_is_recorded_not_resampled():
    ds = xr.Dataset({"v": (("y", "x"), np.arange(6.0).reshape(2, 3))},
                    coords={"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0]}, attrs={"frame": "m:stage"})
    t = AffineTransform.from_params(translation=(10.0, 20.0), source="m:stage", target="ref")
    out = with_transform(ds, t)
    assert np.array_equal(out["v"].values, ds["v"].values) and "transforms" not in ds.attrs
    assert transforms_of(out)[0] == t and frame_of(out) == "m:stage"
    xy = to_frame(out, "ref")
    assert xy.shape == (2, 3, 2) and xy[1, 2] == pytest.approx([12.0, 21.0])


def test_bad_matrices_are_refused():
    with pytest.raises(InvalidArgument, match="singular"):
        AffineTransform(np.zeros((3, 3)) + np.diag([0, 0, 1.0]), "a", "b")
    with pytest.raises(InvalidArgument, match="3x3"):
        AffineTransform(np.eye(2), "a", "b")
    assert math.isclose(AffineTransform.identity("a").scale, 1.0)
