"""The browse page next to Tiled's UI, looked at in headless Chromium: the run list names each run's plan,
technique, sample and status (products are not runs), a run's page draws its map and a spot's CV, and a product
map is drawn on its µm axes."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
import bluesky.plan_stubs as bps
import bluesky.plans as bp

from espt_bluesky.callbacks.products import write_kinetic_map, write_screening
from espt_bluesky.devices import make_sim_bench
from espt_bluesky.devices.waveform_assets import HDF5WaveformWriter
from espt_bluesky.plans import constant_height_image, hopping_scan
from espt_bluesky.storage import LocalCatalog, make_writer
from espt_bluesky.storage.browse import PATH, page_url
from espt_bluesky.storage.server import BROWSE_ROUTER, DataDir, tiled_config

REQUIRE = os.environ.get("ESPT_REQUIRE_SERVICES", "") not in ("", "0")
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A catalog with an SECCM hopping screen (CVs as assets), an SECM image with its κ map, and a stock count."""
    from bluesky import RunEngine

    cat = LocalCatalog.in_process(tmp_path_factory.mktemp("browse"))
    RE = RunEngine({})
    RE.subscribe(make_writer(cat))
    seccm = make_sim_bench("SECCM", "patterned", start=(10, 10))
    seccm.potentiostat.asset_writer = HDF5WaveformWriter(cat.asset_dir)
    RE(bps.mv(seccm.stage.z, seccm.stage.z.position + 1.0))
    (hop,) = RE(hopping_scan(seccm.stage, seccm.potentiostat, technique="SECCM", x_range=(10, 40, 3),
                             y_range=(10, 40, 3), hopper=seccm.hopper, context=seccm.metadata(),
                             measure=dict(technique="CV", e_start=0.0, e_vertex1=0.5, e_vertex2=-0.1,
                                          scan_rate=1.0, n_cycles=2, n_samples=80)))
    secm = make_sim_bench("SECM", "patterned")
    RE(bps.mv(secm.stage.z, 10.0))
    (img,) = RE(constant_height_image(secm.stage, secm.potentiostat, x_range=(0, 100, 11), y_range=(0, 100, 11),
                                      height=3.0, plane=0.0, tip_potential=0.6, context=secm.metadata()))
    write_kinetic_map(cat.client()[img])
    write_screening(cat.client()[hop])
    (count,) = RE(bp.count([secm.potentiostat], 2))
    yield dict(cat=cat, hop=hop, img=img, count=count)
    cat.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if REQUIRE:
            pytest.fail("chromium is not installed (apt-get install -y chromium) (ESPT_REQUIRE_SERVICES=1)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def drawn(page, selector: str) -> np.ndarray:
    """The pixels of a loaded <img> as the browser rendered it (RGB array)."""
    from PIL import Image

    el = page.locator(selector)
    el.wait_for()
    page.wait_for_function(f"document.querySelector({selector!r}).complete && "
                           f"document.querySelector({selector!r}).naturalWidth > 0", timeout=120_000)
    return np.asarray(Image.open(io.BytesIO(el.screenshot())).convert("RGB"))


def colours(px: np.ndarray) -> int:
    return len(np.unique(px.reshape(-1, 3), axis=0))


def test_run_list_names_plan_technique_sample_and_status(site, browser):
    page = browser.new_page()
    page.goto(page_url(site["cat"]), timeout=120_000)
    rows = page.locator("tr.run")
    uids = [rows.nth(i).get_attribute("data-uid") for i in range(rows.count())]
    assert set(uids) == {site["hop"], site["img"], site["count"]}  # runs only: no 'products' row
    assert uids[0] == site["count"]  # newest first

    def cells(uid):
        row = page.locator(f"tr.run[data-uid='{uid}']")
        return {c: row.locator(f"td.{c}").inner_text().strip() for c in ("plan", "technique", "sample", "status")}

    assert cells(site["hop"]) == dict(plan="hopping_scan", technique="SECCM hopping", sample="patterned",
                                      status="success")
    assert cells(site["img"]) == dict(plan="constant_height_image", technique="SECM constant_height",
                                      sample="patterned", status="success")
    assert cells(site["count"])["plan"] == "count" and cells(site["count"])["status"] == "success"
    assert "pstat" in page.locator(f"tr.run[data-uid='{site['count']}'] td.summary").inner_text()
    page.close()


def test_run_page_draws_the_map_and_a_product(site, browser):
    page = browser.new_page()
    page.goto(page_url(site["cat"]), timeout=120_000)  # the key goes to a cookie; links carry none
    page.click(f"tr.run[data-uid='{site['img']}'] td.plan a")
    page.wait_for_url(f"**{PATH}run/{site['img']}*")
    assert "constant_height_image · SECM constant_height · patterned" in page.locator("#summary").inner_text()
    assert page.locator("td.meta-reference-electrode").inner_text() == "Ag/AgCl (3 M KCl)"
    img = drawn(page, "img#map")
    assert img.shape[0] > 200 and img.shape[1] > 300 and colours(img) > 100  # an image with a colour bar
    kappa = drawn(page, "img.product-map[alt='kappa_map kappa']")
    assert colours(kappa) > 50
    assert "pstat_wf_current" not in page.content()  # a READ image has no waveforms
    page.close()


def test_products_are_maps_on_physical_axes(site):
    """κ map and screening maps are 2-D arrays that carry their extent in µm; the products sit apart from runs."""
    from tiled.queries import Key

    client = site["cat"].client()
    prods = client["products"]
    assert "espt_products" in [s.name for s in prods.specs]
    kappa = prods[site["img"]]["kappa_map"]["kappa"]
    assert kappa.shape == (11, 11) and kappa.metadata["dims"] == ["y", "x"] and kappa.metadata["image"]
    assert kappa.metadata["extent"] == {"y": [0.0, 100.0], "x": [0.0, 100.0]}
    assert kappa.metadata["extent_units"] == {"y": "um", "x": "um"}
    screen = prods[site["hop"]]["screening"]
    ratio = screen["passivation_ratio_map"]
    assert ratio.shape == (3, 3) and ratio.metadata["extent"] == {"grid_y": [10.0, 40.0], "grid_x": [10.0, 40.0]}
    spots = screen["passivation_ratio"].read()
    np.testing.assert_array_equal(np.sort(ratio.read().ravel()), np.sort(spots))  # every spot in one cell
    # a search for runs of a technique finds runs, never the products container
    assert set(client.search(Key("start.technique") == "SECCM")) == {site["hop"]}


def test_run_page_draws_a_spots_cv(site, browser):
    page = browser.new_page()
    page.goto(page_url(site["cat"]), timeout=120_000)
    page.goto(f"{site['cat'].base_url}{PATH}run/{site['hop']}?spot=4", timeout=120_000)
    assert "Waveform of spot 4" in page.locator("h2", has_text="Waveform").inner_text()
    cv = drawn(page, "img#cv")
    # a curve on white: many anti-aliased colours, mostly background
    white = np.all(cv > 245, axis=2).mean()
    assert colours(cv) > 30 and 0.5 < white < 0.99
    assert colours(drawn(page, "img#map")) > 30
    # the waveforms are listed with their units and dims, stored as external HDF5
    streams = page.locator("#streams").inner_text()
    assert "pstat_wf_current\t[80]\t['waveform_index']\tA\texternal (HDF5)" in streams
    page.close()


def test_page_needs_the_key(site):
    import httpx

    r = httpx.get(f"{site['cat'].base_url}{PATH}", trust_env=False, timeout=60)
    assert r.status_code == 401 and "api_key" in r.text


def test_both_servers_mount_the_page(tmp_path):
    """``espt serve`` (its own process) serves the page too: the same Tiled config lists the router."""
    import httpx

    dd = DataDir(tmp_path / "d").create()
    assert BROWSE_ROUTER in tiled_config(dd, "k")["routers"]
    if shutil.which("tiled") is None and not os.path.exists(os.path.join(os.path.dirname(__import__("sys").executable),
                                                                         "tiled")):
        pytest.skip("no tiled executable")
    cat = LocalCatalog.start(tmp_path / "d", timeout=120)
    try:
        r = httpx.get(page_url(cat), trust_env=False, timeout=60)
        assert r.status_code == 200 and "<h1>Runs</h1>" in r.text
    finally:
        cat.stop()
