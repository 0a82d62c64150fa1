"""Correlation speed, as ratios to a plain read of the same data in the same process.

1. Registration + footprint-aware resampling of a 1000 x 1000 image onto a 100 x 100 map (phase-correlation
   refinement of a known shift, then the blurred image sampled at the 10 000 map points), against a plain read
   of the 1000 x 1000 image from an .npy file.
2. Import of the largest file in shared/data (validation, units, checksum, element ROI maps), against the plain
   reader call on the same file.
3. Raman band ratios (D/G, carbonate/G: background removal + window sums) of 400 spectra of 1024 pixels, against
   a plain sum over the same spectra.

Run: ``python benchmarks/bench_correlate.py`` (set ESPT_SHARED_DATA if shared/data is elsewhere).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr


def _best(f, n=3):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def shared_data() -> Path:
    for d in (os.environ.get("ESPT_SHARED_DATA"), "/work/shared/data",
              str(Path(__file__).resolve().parents[1].parent / "shared" / "data")):
        if d and (Path(d) / "MANIFEST.md").exists():
            return Path(d)
    sys.exit("shared/data not found: set ESPT_SHARED_DATA")


def bench_register_resample() -> None:
    from espt_bluesky.correlate import registration as reg, resample
    from espt_bluesky.correlate.frames import AffineTransform

    rng = np.random.default_rng(0)
    from scipy import ndimage

    img = ndimage.gaussian_filter(rng.normal(size=(1000, 1000)), 4) * 100 + 1000  # 0.1 µm pixels, 100 µm
    x = np.arange(1000) * 0.1
    fine = xr.Dataset({"v": (("y", "x"), img, {"units": "counts"})}, coords={"x": x, "y": x},
                      attrs={"frame": "fine"})
    xm = np.arange(100) * 1.0
    truth = AffineTransform.from_params(translation=(2.3, -1.7), source="coarse", target="fine")
    coarse_img = reg.resample_to_grid(fine, "v", truth.inverse(), xm, xm)  # the same surface seen by the map
    coarse = xr.Dataset({"v": (("y", "x"), np.nan_to_num(coarse_img, nan=1000.0), {"units": "counts"})},
                        coords={"x": xm, "y": xm}, attrs={"frame": "coarse"})
    pts = np.stack(np.meshgrid(xm, xm), -1).reshape(-1, 2)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "img.npy"
        np.save(path, img)
        t_read = _best(lambda: np.load(path))

    def work():
        t = reg.refine_phase_correlation(coarse, fine.coarsen(x=10, y=10).mean().assign_attrs(frame="coarse"),
                                         variable="v")
        resample.resample(fine, "v", truth.inverse(), pts, source_fwhm=0.1, target_fwhm=1.0)
        return t

    t_work = _best(work)
    print(f"register + resample 1000x1000 -> 100x100: {t_work * 1e3:.1f} ms; plain read {t_read * 1e3:.1f} ms; "
          f"ratio {t_work / t_read:.1f}")


def bench_import_largest() -> None:
    from espt_bluesky.correlate.importers import read_file

    files = [p for p in shared_data().rglob("*") if p.is_file() and p.name != "MANIFEST.md"]
    largest = max(files, key=lambda p: p.stat().st_size)
    if largest.suffix == ".mda":
        from mdaviz.synApps_mdalib import mda

        plain = lambda: mda.readMDA(str(largest), verbose=0)  # noqa: E731
    elif largest.suffix in (".tif", ".tiff"):
        import tifffile

        plain = lambda: tifffile.imread(largest)  # noqa: E731
    else:
        plain = lambda: largest.read_bytes()  # noqa: E731
    t_plain = _best(plain)
    t_import = _best(lambda: read_file(largest))
    print(f"import {largest.name} ({largest.stat().st_size / 1e6:.1f} MB): {t_import * 1e3:.0f} ms; plain reader "
          f"{t_plain * 1e3:.0f} ms; ratio {t_import / t_plain:.2f}")


def bench_raman_ratios() -> None:
    from espt_bluesky.analysis.raman import band_ratio
    from espt_bluesky.physics import raman as phys

    rng = np.random.default_rng(0)
    n = 400
    nu = phys.shift_axis(1024, 150.0, 3.0)
    la = np.where(rng.random(n) < 0.3, 40.0, 2000.0)  # 30 % of the spots on HOPG edges
    local = dict(graphite_G=np.ones(n), graphite_D=phys.d_over_g(la), graphite_2D=phys.two_d_over_g(la),
                 sei_um=rng.uniform(0, 0.04, n), nmc=np.zeros(n), si=np.zeros(n), lithiation=np.zeros(n))
    spectra = phys.detect(phys.expected_spectrum(phys.band_intensities(local), nu, power_mw=5.0, exposure_s=1.0),
                          rng)[0]
    band_ratio(nu, spectra[:2], "D", "G")  # imports
    t_plain = _best(lambda: spectra.sum(axis=1))
    t_work = _best(lambda: (band_ratio(nu, spectra, "D", "G"), band_ratio(nu, spectra, "carbonate", "G")), n=2)
    print(f"Raman D/G + carbonate/G of {n} spectra: {t_work * 1e3:.0f} ms ({t_work / n * 1e3:.2f} ms a spectrum); "
          f"plain sum {t_plain * 1e3:.2f} ms; ratio {t_work / t_plain:.0f}")


if __name__ == "__main__":
    bench_register_resample()
    bench_import_largest()
    bench_raman_ratios()
