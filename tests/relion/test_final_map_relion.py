"""Cross-checks against RELION 3.1 ``relion_postprocess``: automatic B-factor sharpening
(``--auto_bfac``) and local resolution (``--locres``)."""

import dataclasses
from pathlib import Path
import shutil
import subprocess

import numpy as np
import pytest
import starfile
import torch

from gmmsession.algorithms.final_map import local_resolution, sharpen
from gmmsession.algorithms.postprocess import gold_standard_fsc
from gmmsession.data.io.mrc import read_map, write_map
from gmmsession.kernels.filters import apply_bfactor_3d, lowpass_3d
from gmmsession.kernels.fsc import fsc_3d
from gmmsession.kernels.locres import locres_sample_centres, locres_window_3d, windowed_fsc_3d
from gmmsession.kernels.masks import threshold_mask_3d
from tests.conftest import requires_relion

BOX, APIX = 64, 2.0

requires_postprocess = pytest.mark.skipif(
    shutil.which("relion_postprocess") is None, reason="relion_postprocess is not installed; `apt-get install relion`"
)
pytestmark = [requires_relion, requires_postprocess, pytest.mark.relion]


def _run(args, cwd):
    # RELION 3.1 writes its PDF plots through ghostscript and only warns when `gs` is absent.
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def half_maps(tmp_path_factory):
    """150 small Gaussian blobs blurred by B = 60 Å^2, plus independent white noise per half that
    is 6x stronger for x > 0 (sigma 0.06 vs 0.01; the blobs peak near 0.25). Global masked
    resolution ~4.7 Å; locally ~4.3 Å on the quiet side and ~5.1 Å on the noisy side."""
    folder = tmp_path_factory.mktemp("final_map")
    g = torch.Generator().manual_seed(1)
    c = torch.arange(BOX, dtype=torch.float64) - BOX // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(BOX, BOX, BOX, dtype=torch.float64)
    for p in (torch.rand(150, 3, generator=g, dtype=torch.float64) - 0.5) * 36:
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * 0.8**2))
    vol = apply_bfactor_3d(vol, APIX, 60.0)
    sigma = torch.where(x > 0, 0.06, 0.01)
    h1 = (vol + sigma * torch.randn(vol.shape, generator=g, dtype=torch.float64)).float()
    h2 = (vol + sigma * torch.randn(vol.shape, generator=g, dtype=torch.float64)).float()
    mask = threshold_mask_3d(lowpass_3d((h1 + h2) / 2, APIX, 15.0), 0.05, extend_px=3.0, soft_edge_px=6.0)
    write_map(folder / "half1.mrc", h1.numpy(), APIX)
    write_map(folder / "half2.mrc", h2.numpy(), APIX)
    write_map(folder / "mask.mrc", mask.numpy(), APIX)
    # Read back what RELION reads (float32 on disk).
    h1, h2, mask = (torch.from_numpy(read_map(folder / n)[0]) for n in ("half1.mrc", "half2.mrc", "mask.mrc"))
    return folder, h1, h2, mask, x


@pytest.fixture(scope="module")
def relion_auto_bfac(half_maps):
    folder = half_maps[0]
    (folder / "auto").mkdir()
    _run(["relion_postprocess", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc", "--angpix", str(APIX),
          "--auto_bfac", "--autob_lowres", "10", "--o", "auto/postprocess", "--random_seed", "0"], folder)
    star = starfile.read(folder / "auto" / "postprocess.star")
    return star, read_map(folder / "auto" / "postprocess.mrc")[0]


def test_sharpening_is_relion_given_relions_fsc(half_maps, relion_auto_bfac):
    """Fed RELION's own corrected FSC, our FSC weighting, Guinier plot, fit and B-factor are RELION's."""
    _, h1, h2, mask, _ = half_maps
    star, relion_map = relion_auto_bfac
    ours_fsc = gold_standard_fsc(h1, h2, APIX, mask, seed=0)
    relion_fsc = dataclasses.replace(ours_fsc, fsc=star["fsc"]["rlnFourierShellCorrelationCorrected"].to_numpy())
    out = sharpen(h1, h2, APIX, bfactor="auto", fsc=relion_fsc, lowpass_angstrom=None)  # RELION's default --low_pass 0
    general = star["general"]
    # Same sums on the same float32 maps; RELION prints 6-7 significant digits.
    assert out.bfactor_angstrom2 == pytest.approx(float(general["rlnBfactorUsedForSharpening"]), abs=1e-3)
    assert out.fit_slope == pytest.approx(float(general["rlnFittedSlopeGuinierPlot"]), abs=1e-3)
    # Our amplitudes use RELION's |F| / box^3 normalisation: even the intercept agrees.
    assert out.fit_intercept == pytest.approx(float(general["rlnFittedInterceptGuinierPlot"]), abs=1e-4)
    guinier = star["guinier"]["rlnLogAmplitudesWeighted"].to_numpy()
    ours_weighted = np.where(np.isfinite(out.guinier_weighted), out.guinier_weighted, -99.0)
    np.testing.assert_allclose(ours_weighted, guinier, atol=1e-4)
    # RELION computes in double and writes float32: the maps agree to float32 round-off (values ~3).
    np.testing.assert_allclose(out.map, relion_map, atol=1e-5)


def test_auto_bfactor_close_to_relion(half_maps, relion_auto_bfac):
    """With our own (independently phase-randomised) FSC the B-factor differs only through the FSC
    tail: RELION fits up to the last shell with a non-zero weight sqrt(2F/(1+F)), where F ~ 0.01-0.06;
    there a random-phase difference of ~0.02 in F moves ln(weight) by up to ~0.6 at the points
    with the largest 1/d^2 leverage. Measured: RELION seeds 0-3 give -198 to -208 Å^2, ours
    (seeds 0-2) -215 to -220 Å^2; 15% bounds that spread. Sharpening does not change phases, so the
    maps' FSC is ~1 wherever both are non-zero."""
    _, h1, h2, mask, _ = half_maps
    star, relion_map = relion_auto_bfac
    out = sharpen(h1, h2, APIX, mask, bfactor="auto", lowpass_angstrom=None, seed=0)
    relion_b = float(star["general"]["rlnBfactorUsedForSharpening"])
    assert relion_b < -100 and out.bfactor_angstrom2 < -100  # the blobs' fall-off is sharpened
    assert out.bfactor_angstrom2 == pytest.approx(relion_b, rel=0.15)
    assert out.resolution_angstrom == pytest.approx(float(star["general"]["rlnFinalResolution"]), rel=0.04)
    shell = int(round(BOX * APIX / out.resolution_angstrom))
    fsc = fsc_3d(torch.from_numpy(out.map).double(), torch.from_numpy(relion_map).double())
    assert float(fsc[: shell + 1].min()) > 0.99


def test_auto_bfactor_fit_to_resolution_matches_relion(half_maps):
    """Fitting only down to the FSC resolution (``--autob_highres``), where F > 0.143 and the two
    corrections differ by ~0.02 (weights by < 2%), the B-factors agree to 3% (measured 0.6%)."""
    folder, h1, h2, mask, _ = half_maps
    fsc = gold_standard_fsc(h1, h2, APIX, mask, seed=0)
    (folder / "highres").mkdir()
    _run(["relion_postprocess", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc", "--angpix", str(APIX),
          "--auto_bfac", "--autob_lowres", "10", "--autob_highres", f"{fsc.resolution_angstrom:.6f}",
          "--o", "highres/postprocess", "--random_seed", "0"], folder)
    relion_b = float(starfile.read(folder / "highres" / "postprocess.star")["general"]["rlnBfactorUsedForSharpening"])
    out = sharpen(h1, h2, APIX, fsc=fsc, autob_highres_angstrom=fsc.resolution_angstrom)
    assert out.bfactor_angstrom2 == pytest.approx(relion_b, rel=0.03)


def test_local_resolution_matches_relion_locres(half_maps):
    """``relion_postprocess --locres`` (25 Å -> 13 px sampling, 12.5 Å -> 6 px radius, 25 Å -> 13 px edge,
    phases randomised beyond 25 Å, worst 50 Å) against ours with the same settings.

    Ours cuts each window into a 40^3 cube (RELION: the whole 64^3 box), so its FSC shells are
    80/i Å instead of 128/i Å apart, and its random phases differ. At ~4.7 Å one of our shells is
    ~6% and one of RELION's ~3.5%; the harmonic-mean map averages several windows per voxel.
    Hence: medians within 5% (measured < 1%), per-voxel median |difference| < 0.3 Å (measured
    0.09 Å), and the quiet/noisy contrast the same in both. With ``crop_size=64`` (RELION's shells)
    the same bounds hold (measured medians within 1%)."""
    folder, h1, h2, mask, x = half_maps
    (folder / "locres").mkdir()
    _run(["relion_postprocess", "--locres", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc",
          "--angpix", str(APIX), "--o", "locres/relion", "--random_seed", "0"], folder)
    relion = read_map(folder / "locres" / "relion_locres.mrc")[0]
    inside = mask.numpy() >= 0.5
    for crop in (None, BOX):
        ours = local_resolution(h1, h2, APIX, mask, sampling_angstrom=25.0, crop_size=crop)
        assert ours.radius_angstrom == 12.0 and ours.edge_angstrom == 26.0  # RELION's ROUND: 6.25 -> 6, 12.5 -> 13 px
        # RELION writes 0 where no window reaches (box corners), we write NaN: compare where both are defined.
        both = inside & np.isfinite(ours.resolution_map) & (relion > 0)
        assert both.sum() > 0.95 * inside.sum()
        ours_v, relion_v = ours.resolution_map[both], relion[both]
        assert np.median(ours_v) == pytest.approx(np.median(relion_v), rel=0.05)
        assert np.median(np.abs(ours_v - relion_v)) < 0.3
        xs = x.numpy()
        quiet, noisy = both & (xs < -4), both & (xs > 4)
        for region in (quiet, noisy):
            assert np.median(ours.resolution_map[region]) == pytest.approx(np.median(relion[region]), rel=0.05)
        assert np.median(ours.resolution_map[noisy]) > np.median(ours.resolution_map[quiet]) + 0.4
        assert np.median(relion[noisy]) > np.median(relion[quiet]) + 0.4


def _read_locres_fscs(path):
    """Window centres and masked FSC curves from RELION's ``<root>_locres_fscs.star`` (its loop
    blocks are interleaved with free-text lines that star parsers reject)."""
    centres, curves, rows = [], [], None
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if line.startswith("data_fsc_"):
            centres.append([int(v) for v in line.strip()[len("data_fsc_"):].split("_")])
            rows = []
            curves.append(rows)
        elif rows is not None and len(fields) == 7:
            rows.append(float(fields[5]))  # rlnFourierShellCorrelationMaskedMaps
    return torch.tensor(centres), np.array(curves)


def test_windowed_fsc_is_relions_with_a_full_box_crop(half_maps):
    """RELION's windows are ``raisedCosineMask(x=kk, y=ii, z=jj)`` for block ``fsc_kk_ii_jj``: the
    same grid as ours, and with ``crop = box`` our windowed masked FSC is RELION's curve."""
    folder, h1, h2, _, _ = half_maps
    (folder / "locres_fscs").mkdir()
    _run(["relion_postprocess", "--locres", "--i", "half1.mrc", "--i2", "half2.mrc", "--angpix", str(APIX),
          "--o", "locres_fscs/relion", "--random_seed", "0"], folder)
    centres, relion = _read_locres_fscs(folder / "locres_fscs" / "relion_locres_fscs.star")
    assert {tuple(c) for c in centres.tolist()} == {tuple(c) for c in locres_sample_centres(BOX, 13, 6).tolist()}
    ours = windowed_fsc_3d(h1.double(), h2.double(), centres, locres_window_3d(BOX, 6, 13, dtype=torch.float64))
    # Same windows, same sums; RELION prints 6 decimals.
    np.testing.assert_allclose(ours.numpy(), relion, atol=2e-5)
