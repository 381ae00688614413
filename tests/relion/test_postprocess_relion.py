"""Cross-checks against RELION 3.1: relion_postprocess (FSC, mask correction, resolution),
relion_mask_create (threshold masks), relion_image_handler (low-pass, B-factor)."""

import shutil
import subprocess

import numpy as np
import pytest
import starfile
import torch

from gmmsession.algorithms.postprocess import gold_standard_fsc
from gmmsession.data.io.mrc import read_map, write_map
from gmmsession.kernels.filters import apply_bfactor_3d, lowpass_3d
from gmmsession.kernels.fsc import last_shell_above_threshold, shell_index_rfft
from gmmsession.kernels.masks import threshold_mask_3d
from tests.conftest import requires_relion

BOX, APIX = 64, 2.0

requires_postprocess_tools = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("relion_postprocess", "relion_mask_create", "relion_image_handler")),
    reason="relion_postprocess / relion_mask_create / relion_image_handler are not installed; `apt-get install relion`",
)
pytestmark = [requires_relion, requires_postprocess_tools, pytest.mark.relion]


def _run(args, cwd, tolerated_error: str | None = None):
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    if not (tolerated_error and tolerated_error in out.stderr):
        assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def half_maps(tmp_path_factory):
    """Thirty Gaussian blobs (sigma 1-2.5 px) plus independent white noise per half: the unmasked
    FSC crosses 0.8 near shell 12 and 0.143 near shell 16, the masked one near shell 20."""
    folder = tmp_path_factory.mktemp("postprocess")
    g = torch.Generator().manual_seed(1)
    pos = (torch.rand(30, 3, generator=g, dtype=torch.float64) - 0.5) * 28
    sig = 1.0 + torch.rand(30, generator=g, dtype=torch.float64) * 1.5
    c = torch.arange(BOX, dtype=torch.float64) - BOX // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(BOX, BOX, BOX, dtype=torch.float64)
    for p, s in zip(pos, sig):
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s**2))
    h1 = (vol + 0.05 * torch.randn(vol.shape, generator=g, dtype=torch.float64)).float()
    h2 = (vol + 0.05 * torch.randn(vol.shape, generator=g, dtype=torch.float64)).float()
    average = lowpass_3d((h1 + h2) / 2, APIX, 15.0)
    mask = threshold_mask_3d(average, 0.1, extend_px=3.0, soft_edge_px=6.0)
    write_map(folder / "half1.mrc", h1.numpy(), APIX)
    write_map(folder / "half2.mrc", h2.numpy(), APIX)
    write_map(folder / "mask.mrc", mask.numpy(), APIX)
    write_map(folder / "average.mrc", average.numpy(), APIX)
    return folder, h1, h2, mask


def _shell(resolution_angstrom: float) -> float:
    return BOX * APIX / resolution_angstrom


def test_masked_postprocess_matches_relion(half_maps):
    folder, h1, h2, mask = half_maps
    # --o is a root name whose folder must exist (RELION writes <folder>/logfile.pdf beside it).
    (folder / "masked").mkdir()
    _run(
        ["relion_postprocess", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc",
         "--angpix", str(APIX), "--o", "masked/postprocess", "--random_seed", "0"],
        folder,
    )
    star = starfile.read(folder / "masked" / "postprocess.star")
    general, fsc = star["general"], star["fsc"]
    ours = gold_standard_fsc(h1, h2, APIX, mask, seed=0)

    # Same maps, same definition: the unmasked and masked curves agree to the 6 digits RELION writes.
    np.testing.assert_allclose(ours.fsc_unmasked[1:], fsc["rlnFourierShellCorrelationUnmaskedMaps"].to_numpy()[1:], atol=1e-4)
    np.testing.assert_allclose(ours.fsc_masked, fsc["rlnFourierShellCorrelationMaskedMaps"].to_numpy(), atol=1e-4)
    # Same randomisation shell (rule: first shell > 0 with unmasked FSC < 0.8).
    assert ours.randomize_from_angstrom == pytest.approx(float(general["rlnRandomiseFrom"]), rel=1e-4)
    assert 8 <= ours.randomize_from_shell <= 16  # the data cross 0.8 at a mid shell, as designed

    # Resolutions: RELION's rule on RELION's unmasked column equals ours; the final (corrected)
    # resolution may differ by one shell because the random phases differ.
    relion_unmasked_shell = int(last_shell_above_threshold(torch.tensor(fsc["rlnFourierShellCorrelationUnmaskedMaps"].to_numpy())))
    assert abs(_shell(ours.resolution_unmasked_angstrom) - relion_unmasked_shell) <= 1
    assert ours.mask_used
    assert abs(_shell(ours.resolution_angstrom) - _shell(float(general["rlnFinalResolution"]))) <= 1 + 1e-6
    assert ours.resolution_angstrom < ours.resolution_unmasked_angstrom  # the mask helps here

    # Corrected curves beyond the randomisation edge differ only by the randomised maps' FSC noise,
    # whose standard deviation is ~1/sqrt(2 n) per shell of n elements; 6/sqrt(n) bounds the
    # difference of two such draws (> 5 sigma).
    start = ours.randomize_from_shell + 2
    counts = torch.bincount(shell_index_rfft(BOX, 3).flatten(), minlength=BOX // 2 + 2)[: BOX // 2 + 1].numpy()
    diff = np.abs(ours.fsc_corrected - fsc["rlnFourierShellCorrelationCorrected"].to_numpy())
    assert np.all(diff[start:] < 6 / np.sqrt(counts[start:])), diff
    np.testing.assert_allclose(ours.fsc_corrected[:start], fsc["rlnFourierShellCorrelationCorrected"].to_numpy()[:start], atol=1e-4)


def test_unmasked_postprocess_matches_relion(half_maps):
    folder, h1, h2, _ = half_maps
    (folder / "unmasked").mkdir()
    # RELION 3.1.3 without a mask writes postprocess.star, then fails drawing its PDF plot (it asks
    # for the corrected-FSC column, which only exists with a mask); the star file is complete.
    _run(
        ["relion_postprocess", "--i", "half1.mrc", "--i2", "half2.mrc", "--angpix", str(APIX), "--o", "unmasked/postprocess"],
        folder,
        tolerated_error="cannot find y-axis label",
    )
    star = starfile.read(folder / "unmasked" / "postprocess.star")
    ours = gold_standard_fsc(h1, h2, APIX)
    np.testing.assert_allclose(ours.fsc, star["fsc"]["rlnFourierShellCorrelationUnmaskedMaps"].to_numpy(), atol=1e-4)
    # Identical curves and rule: the same shell (the 1-shell allowance only guards against a value
    # sitting within 1e-6 of 0.143).
    assert abs(_shell(ours.resolution_angstrom) - _shell(float(star["general"]["rlnFinalResolution"]))) <= 1 + 1e-6


@pytest.mark.parametrize("threshold, extend_px, soft_edge_px", [(0.1, 3.0, 6.0), (0.3, -1.5, 3.0)])
def test_threshold_mask_matches_relion_mask_create(half_maps, threshold, extend_px, soft_edge_px):
    folder = half_maps[0]
    name = f"mask_{threshold}_{extend_px}.mrc"
    _run(
        ["relion_mask_create", "--i", "average.mrc", "--o", name, "--ini_threshold", str(threshold),
         "--extend_inimask", str(extend_px), "--width_soft_edge", str(soft_edge_px)],
        folder,
    )
    relion_mask, _ = read_map(folder / name)
    average, _ = read_map(folder / "average.mrc")
    ours = threshold_mask_3d(torch.from_numpy(average), threshold, extend_px, soft_edge_px).numpy()
    # Same voxels, same distances; float32 cosines only.
    np.testing.assert_allclose(ours, relion_mask, atol=1e-6)


@pytest.mark.parametrize("args", [["--lowpass", "9"], ["--lowpass", "7", "--filter_edge_width", "5"], ["--bfactor", "200"], ["--bfactor", "-100"]])
def test_filters_match_relion_image_handler(half_maps, args):
    folder = half_maps[0]
    name = "filtered_" + "_".join(a.strip("-") for a in args) + ".mrc"
    _run(["relion_image_handler", "--i", "half1.mrc", "--o", name, "--angpix", str(APIX)] + args, folder)
    relion_map, _ = read_map(folder / name)
    half1 = torch.from_numpy(read_map(folder / "half1.mrc")[0]).double()
    if args[0] == "--lowpass":
        edge = int(args[3]) if len(args) > 2 else 2
        ours = lowpass_3d(half1, APIX, float(args[1]), edge_width_shells=edge)
    else:
        ours = apply_bfactor_3d(half1, APIX, float(args[1]))
    # RELION computes in double and writes float32: agreement to float32 round-off of values ~1-2.
    np.testing.assert_allclose(ours.numpy(), relion_map, atol=1e-6)
