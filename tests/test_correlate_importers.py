"""Importers read every file of their category in shared/data into µm Datasets; bad files write nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from espt_bluesky.correlate.frames import chain, transforms_of
from espt_bluesky.correlate.importers import UnreadableFile, read_file, read_white_light

#: files of each category that are data (the others are refused with a reason, checked below)
CATEGORIES = ("secm", "sicm", "afm", "xrf", "raman", "echem")
#: not data files of ours: approach curves belong to the approach-fit importers; MAPS text files are sidecars
#: read with their scan; closed binary formats without an open reader are refused with advice
REFUSED = {
    "secm/approach_curve_dummy_data.xls": "not a known format",
    "secm/approach_curve_exp1_params.csv": "matches none",
    "secm/approach_curve_exp1_processed.csv": "matches none",
    "xrf/maps_fit_parameters_override.txt": "configuration file",
    "xrf/maps_standardinfo.txt": "configuration file",
    "raman/PST10_iR785_OP01_8000msx8.l6s": "LabSpec 6",
    "afm/NTMDT_GaAs_map.mdt": "NT-MDT",
}


def _files(shared_data):
    return sorted(p for c in CATEGORIES for p in (shared_data / c).iterdir())


def test_every_file_is_read_or_refused_with_a_reason(shared_data):
    read = 0
    for p in _files(shared_data):
        rel = f"{p.parent.name}/{p.name}"
        if rel in REFUSED:
            with pytest.raises(UnreadableFile, match=REFUSED[rel]):
                read_file(p)
            continue
        ds = read_file(p)
        read += 1
        assert ds.attrs["source"]["file"] == p.name and len(ds.attrs["source"]["sha256"]) == 64
        assert ds.attrs["category"] == p.parent.name or p.parent.name == "secm"
        assert ds["x"].attrs["units"] == "µm" and ds["y"].attrs["units"] == "µm"
        for v in ds.data_vars.values():
            assert "units" in v.attrs
        if ds["x"].dims == ("x",):  # grids carry their pixel -> frame transform: corners onto corners
            t = chain(transforms_of(ds), transforms_of(ds)[0].source, ds.attrs["frame"])
            nx, ny = ds.sizes["x"] - 1, ds.sizes["y"] - 1
            got = t.apply([[0, 0], [nx, 0], [0, ny], [nx, ny]])
            want = [[x, y] for x in ds.x.values[[0, -1]] for y in ds.y.values[[0, -1]]]
            tol = 1e-6 * (1 + np.abs(want).max())
            assert all(np.min(np.abs(np.asarray(want) - g).max(axis=1)) < tol for g in got), rel
    print(f"read {read} files, refused {len(REFUSED)} with a reason")
    assert read >= 40


def test_secm_export_and_sem_image(shared_data):
    secm = read_file(shared_data / "secm" / "AlAr_data.txt")
    assert secm.sizes == {"y": 25, "x": 200}
    assert np.diff(secm.x.values) == pytest.approx(0.5) and np.diff(secm.y.values) == pytest.approx(4.0)
    assert secm.current.attrs["units"] == "A" and 2e-11 < float(secm.current.min()) < 3e-11  # 0.0237 nA
    sem = read_file(shared_data / "secm" / "Al-AR_SEM.tif")
    # FEI: 62.0117 nm pixels, 1768 image rows above a 119-row databar
    assert sem.sizes == {"y": 1768, "x": 2048} and sem.attrs["databar_rows"] == 119
    assert sem.attrs["pixel_size"] == pytest.approx(0.0620117)
    assert float(sem.x[-1]) == pytest.approx(2047 * 0.0620117)
    names = [(t.source, t.target) for t in transforms_of(sem)]
    assert ("sem:pixel", "sem:image") in names and ("sem:image", "sem:stage") in names
    # pixel (0, 0) is the top-left of the TIFF: the highest y of the image frame
    t = chain(transforms_of(sem), "sem:pixel", "sem:image")
    assert t.apply([0, 0]) == pytest.approx([0.0, float(sem.y[-1])])


def test_aps_2ide_map_channels_and_positions(shared_data):
    ds = read_file(shared_data / "xrf" / "2xfm_0011_2xfm3__0.h5")
    # positions from 2xfm_0011.mda: Sample Y 3.25..3.75 mm, fly axis -1.5.. mm at 50 µm steps, 9 acquired pixels
    assert ds.y.values == pytest.approx(np.linspace(3250, 3750, 11))
    assert ds.x.values == pytest.approx(-1500 + 50 * np.arange(9))
    assert ds.spectrum.shape == (11, 9, 2048)
    cal = ds.attrs["instrument_metadata"]["energy_calibration"]
    assert cal["slope"] == pytest.approx(0.0095216077) and cal["source"] == "maps_fit_parameters_override.txt"
    for el in ("Ca", "Fe", "Cu", "Zn", "Ni", "Mn", "Co"):
        assert ds[el].dims == ("y", "x") and float(ds[el].sum()) > 0
    # the argon Kα (air) line is the strongest element channel, as it must be for a sample measured in air
    elements = [v for v in ds.data_vars if ds[v].dims == ("y", "x")]
    assert max(elements, key=lambda k: float(ds[k].sum())) == "Ar"
    companions = [c["file"] for c in ds.attrs["source"]["companions"]]
    assert companions == ["2xfm_0011.mda", "maps_fit_parameters_override.txt"]
    std = read_file(shared_data / "xrf" / "axo_std.mda")
    assert std.attrs["instrument_metadata"]["standard"]["areal_density_ug_cm2"] == {"Ca": 1.931, "Fe": 0.504,
                                                                                   "Cu": 0.284}
    assert std.spectrum.shape == (11, 11, 2000)


def test_renishaw_map_sits_on_its_white_light_image(shared_data):
    path = shared_data / "raman" / "renishaw_test_streamline.wdf"
    m = read_file(path)
    img = read_white_light(path)
    assert m.sizes == {"y": 49, "x": 45, "raman_shift": 394} and m.attrs["has_white_light_image"]
    assert m.attrs["frame"] == img.attrs["frame"] == "renishaw:stage"
    # the map's stage extent (from the file's WMAP block) lies inside the image's (from its WHTL block)
    for axis in ("x", "y"):
        lo, hi = float(img[axis].min()), float(img[axis].max())
        assert lo < float(m[axis].min()) and float(m[axis].max()) < hi
    print(f"map x {float(m.x.min()):.1f}..{float(m.x.max()):.1f} µm inside image x {float(img.x.min()):.1f}.."
          f"{float(img.x.max()):.1f} µm")


def _copy(src, dst_dir, name, cut=None, patch=None):
    dst = dst_dir / name
    data = src.read_bytes()
    if cut is not None:
        data = data[:cut]
    if patch is not None:
        data = patch(data)
    dst.write_bytes(data)
    return dst


BAD = [
    ("truncated SICM", "sicm/Zelle1_PFA.sicm", "Zelle1.sicm", dict(cut=300), "sicm"),
    ("truncated MDA", "xrf/2xfm_0011.mda", "trunc.mda", dict(cut=5000), "MDA"),
    ("truncated WDF", "raman/renishaw_test_map.wdf", "trunc.wdf", dict(cut=4000), "WDF"),
    ("truncated EC-Lab", "echem/biologic_cv.mpr", "trunc.mpr", dict(cut=3000), "EC-Lab"),
    ("truncated SECM text", "secm/AlAr_data.txt", "secm.txt", dict(cut=60000), "do not fill|could not be read"),
    ("truncated MCA", "xrf/srm1832.mca", "trunc.mca", dict(cut=20000), "truncated"),
    ("wrong extension: TIFF named .mda", "secm/Al-AR_SEM.tif", "image.mda", {}, "MDA"),
    ("wrong extension: WDF named .sicm", "raman/renishaw_test_map.wdf", "x.sicm", {}, "sicm"),
    ("wrong extension: EC-Lab named .txt", "echem/biologic_cv.mpr", "cv.txt", {}, "matches none"),
    ("unknown extension", "secm/AlAr_data.txt", "data.xyz", {}, "not a known format"),
    ("unknown MCA version", "xrf/srm1832.mca", "v9.mca", dict(patch=lambda b: b.replace(b"3.1", b"9.0", 1)),
     "version"),
    ("unknown XDI version", "xrf/fe_xanes_8ch.xdi", "v2.xdi", dict(patch=lambda b: b.replace(b"XDI/1.1", b"XDI/2.0", 1)),
     "version"),
    ("unknown SICM mode", "sicm/Zelle1_PFA.sicm", "mode.sicm", None, "scan mode"),
    ("empty file", "secm/AlAr_data.txt", "empty.txt", dict(cut=0), "empty"),
]


def _sicm_with_mode(src, dst):
    import io
    import tarfile

    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name == ".mode":
                data = b"spiralScan"
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from espt_bluesky.storage import LocalCatalog

    cat = LocalCatalog.in_process(tmp_path_factory.mktemp("tiled"))
    yield cat
    cat.stop()


def _n_imports(client):
    return len(client["imports"]) if "imports" in client else 0


@pytest.mark.parametrize("label,src,name,how,match", BAD, ids=[b[0] for b in BAD])
def test_bad_files_raise_and_write_nothing(shared_data, tmp_path, catalog, label, src, name, how, match):
    from espt_bluesky.correlate.store import import_file

    if how is None:
        path = tmp_path / name
        _sicm_with_mode(shared_data / src, path)
    else:
        path = _copy(shared_data / src, tmp_path, name, **how)
    client = catalog.client()
    before = _n_imports(client)
    with pytest.raises(UnreadableFile, match=match) as info:
        import_file(path, client)
    assert name in str(info.value) or "empty" in str(info.value)
    assert _n_imports(client) == before


def test_import_round_trip_through_tiled_and_read_map(shared_data, catalog):
    from espt_bluesky.correlate.store import import_file
    from espt_bluesky.storage import read_map

    client = catalog.client()
    (node,) = import_file(shared_data / "secm" / "AlAr_data.txt", client)
    back = read_map(node)
    orig = read_file(shared_data / "secm" / "AlAr_data.txt")
    assert np.array_equal(back.current.values, orig.current.values)
    assert back.attrs["source"]["sha256"] == orig.attrs["source"]["sha256"]
    assert transforms_of(back) == transforms_of(orig)
    nodes = import_file(shared_data / "raman" / "renishaw_test_streamline.wdf", client)
    assert len(nodes) == 2  # the map and its white-light image
    wl = read_map(nodes[1])
    assert wl.rgb.shape[-1] == 3 and wl.attrs["frame"] == "renishaw:stage"
    again = import_file(shared_data / "secm" / "AlAr_data.txt", client)  # same file: the same node
    assert again[0].item["id"] == node.item["id"]


def test_espt_import_command(shared_data, catalog, tmp_path):
    bad = _copy(shared_data / "xrf" / "srm1832.mca", tmp_path, "bad.mca", cut=20000)
    before = _n_imports(catalog.client())
    out = subprocess.run([sys.executable, "-m", "espt_bluesky.cli", "import", str(shared_data / "sicm" /
                          "Zelle3_PFA.sicm"), str(bad), "--uri", catalog.uri, "--api-key", catalog.api_key],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "imported" in out.stdout and "Zelle3_PFA.sicm" in out.stdout
    assert "FAILED" in out.stderr and "bad.mca" in out.stderr and "nothing written" in out.stderr
    assert _n_imports(catalog.client()) == before + 1
