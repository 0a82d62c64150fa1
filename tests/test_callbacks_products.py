"""Products written back to Tiled next to their source run: live (ProductCallback) and offline (write_*)."""

from __future__ import annotations

import numpy as np
import pytest
import bluesky.plan_stubs as bps
from bluesky import RunEngine

from espt_bluesky.callbacks.products import (
    ProductCallback, kinetic_map_dataset, screening_dataset, write_kinetic_map,
)
from espt_bluesky.devices import make_sim_bench
from espt_bluesky.errors import InvalidArgument


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from espt_bluesky.storage import LocalCatalog

    cat = LocalCatalog.in_process(tmp_path_factory.mktemp("tiled"))
    yield cat
    cat.stop()


def _engine(catalog):
    from espt_bluesky.storage import make_writer

    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(make_writer(catalog))
    return RE


def test_live_kappa_map_product_and_offline_rewrite(catalog):
    from espt_bluesky.plans.imaging import constant_height_image
    from espt_bluesky.storage import read_product

    client = catalog.client()
    RE = _engine(catalog)
    cb = ProductCallback(client, "SECM")
    RE.subscribe(cb)
    bench = make_sim_bench("SECM", "patterned", seed=2)
    RE(bps.mv(bench.stage.z, 30.0))
    res = RE(constant_height_image(bench.stage, bench.potentiostat, x_range=(35, 65, 7), y_range=(35, 65, 7),
                                   height=5.0, plane=0.0, context=bench.metadata()))
    uid = res.run_start_uids[0]
    assert cb.written and cb.written[0][0] == uid, cb.errors
    ds = read_product(client[uid], "kappa_map")
    assert ds["kappa"].shape == (7, 7) and ds["x"].values[0] == pytest.approx(35.0)
    # the disc centre (50, 50) is Au: the largest κ of the map; the corners are SiO2
    assert np.nanargmax(np.nan_to_num(ds["kappa"].values, posinf=1e9)) == 3 * 7 + 3
    lab = bench.model.sample.at("label", *np.meshgrid(ds["x"].values, ds["y"].values))
    assert np.nanmedian(ds["kappa"].values[lab == 0]) < 0.3
    node = client[uid]
    # offline: recompute with a different normalisation, refuse to overwrite silently, then overwrite
    with pytest.raises(InvalidArgument, match="already has a product"):
        write_kinetic_map(node, i_inf=bench.model.i_tip_inf())
    write_kinetic_map(node, i_inf=bench.model.i_tip_inf(), overwrite=True)
    again = read_product(node, "kappa_map")
    assert again.attrs["i_inf"] == pytest.approx(bench.model.i_tip_inf())


def test_screening_product_from_hopping_scan(catalog):
    from espt_bluesky.plans.hopping import hopping_scan
    from espt_bluesky.storage import read_product

    client = catalog.client()
    RE = _engine(catalog)
    cb = ProductCallback(client, "SECCM", k_max=3)
    RE.subscribe(cb)
    bench = make_sim_bench("SECCM", "hopg", seed=4)
    measure = dict(technique="CV", e_start=3.0, e_vertex1=0.0, e_vertex2=3.0, scan_rate=1.0, n_cycles=2,
                   n_samples=400)
    res = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SECCM", x_range=(10, 90, 5),
                          y_range=(10, 90, 5), hop_height=2.0, measure=measure, mode="device",
                          hopper=bench.hopper, context=bench.metadata()))
    uid = res.run_start_uids[0]
    assert cb.written, cb.errors
    ds = read_product(client[uid], "screening")
    assert ds.sizes["spot"] == 25 and "passivation_ratio" in ds and "cluster" in ds
    assert np.all(ds["passivation_ratio"].values < 1.0)
    assert ds.attrs["clustering"]["k"] >= 1


def test_wrong_technique_and_missing_metadata():
    bench = make_sim_bench("SECM", "patterned")
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    import bluesky.plans as bp

    RE(bp.grid_scan([bench.potentiostat], bench.stage.y, 40, 60, 3, bench.stage.x, 40, 60, 3,
                    md={"technique": "SICM"}))
    with pytest.raises(InvalidArgument, match="technique='SICM'"):
        kinetic_map_dataset(docs)
    with pytest.raises(InvalidArgument, match="needs a SECCM run"):
        screening_dataset(docs)
    docs2 = []
    RE.subscribe(lambda n, d: docs2.append((n, d)))
    RE(bp.grid_scan([bench.potentiostat], bench.stage.y, 40, 60, 3, bench.stage.x, 40, 60, 3,
                    md={"technique": "SECM"}))
    with pytest.raises(InvalidArgument, match="lacks 'radius'"):
        kinetic_map_dataset(docs2)


def test_modulus_map_dataset_from_force_volume_documents():
    import bluesky.preprocessors as bpp

    from espt_bluesky.callbacks.products import modulus_map_dataset

    bench = make_sim_bench("EC-AFM", "hopg", seed=3)
    bench.afm.configure_force_curve(travel=0.01, n_points=400)
    stage, afm = bench.stage, bench.afm
    md = {**bench.metadata(), "map": {"x": "stage_x", "y": "stage_y", "order": "points"}}

    @bpp.run_decorator(md=md)
    def force_volume():
        for y in (30.0, 50.0, 70.0):
            for x in (30.0, 50.0, 70.0):
                yield from bps.mv(stage.z, stage.z.position + 0.3)
                yield from bps.mv(stage.x, x, stage.y, y)
                yield from bps.trigger(afm, wait=True)
                yield from bps.mv(stage.z, afm.height.get() + 0.02)
                yield from bps.trigger_and_read([afm, stage])

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    RE(force_volume())
    ds = modulus_map_dataset(docs)
    X, Y = np.meshgrid(ds["x"].values, ds["y"].values)
    truth = bench.model.sample.at("modulus", X, Y)
    assert ds["modulus"].shape == (3, 3)
    assert np.all(np.abs(ds["modulus"].values / truth - 1) < 0.10)
    assert ds.attrs["spring_constant"] == pytest.approx(bench.probe.spring_constant.get())


def test_topography_and_deconvolution_products(catalog):
    """Levelled SICM topography and a deconvolved SECM image land next to their runs, true to the bench."""
    from espt_bluesky.analysis.resolution import disc_edge
    from espt_bluesky.callbacks.products import write_deconvolved_image, write_topography
    from espt_bluesky.plans import constant_height_image, hopping_scan
    from espt_bluesky.storage import read_product

    client = catalog.client()
    RE = _engine(catalog)
    # SICM hopping grid over a tilted Si film: the levelled map is the true relief (pads 0.2 µm) minus a plane
    bench = make_sim_bench("SICM", "si_film", seed=3, tilt=(0.3, 0.0), start=(10, 27.5))
    RE(bps.mv(bench.stage.z, bench.stage.z.position + 3.0))
    res = RE(hopping_scan(bench.stage, bench.potentiostat, technique="SICM", x_range=(10, 45, 8),
                          y_range=(20, 35, 4), hop_height=2.0, drop=0.02, mode="device", hopper=bench.hopper,
                          context=bench.metadata()))
    node = client[res.run_start_uids[0]]
    write_topography(node)
    topo = read_product(node, "topography")
    X, Y = np.meshgrid(topo["x"].values, topo["y"].values)
    on_si = bench.model.sample.at("label", X, Y) == 1
    lev = topo["levelled"].values
    step = np.median(lev[on_si]) - np.median(lev[~on_si])
    assert step == pytest.approx(0.2, abs=0.03)  # the 200 nm pads stand out once the tilt is removed
    assert np.std(lev[~on_si]) < 0.02
    # SECM image of a disc: the deconvolved edge is sharper than the measured one
    bench = make_sim_bench("SECM", "patterned", seed=2)
    RE(bps.mv(bench.stage.z, 30.0))
    res = RE(constant_height_image(bench.stage, bench.potentiostat, x_range=(30, 70, 41), y_range=(30, 70, 41),
                                   height=5.0, plane=0.0, context=bench.metadata()))
    node = client[res.run_start_uids[0]]
    write_deconvolved_image(node, n_iter=100)
    dec = read_product(node, "deconvolved")
    x, y = dec["x"].values, dec["y"].values
    before = disc_edge(dec["image"].values, x, y, (50, 50), 18.0)
    after = disc_edge(dec["deconvolved"].values, x, y, (50, 50), 18.0)
    assert after.width < 0.7 * before.width
    assert dec.attrs["distance_um"] == pytest.approx(5.0)
