import json
import math

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from gmmsession.algorithms.protein import build_protein
from gmmsession.algorithms.simulate import atom_gaussians, simulate
from gmmsession.data.io.mrc import read_map
from gmmsession.kernels.conventions import euler_relion_to_matrix, image_shift_angstrom_from_origin
from gmmsession.kernels.ctf import ctf_2d
from gmmsession.kernels.fourier import irfft_centered_2d, rfft_frequencies_2d
from gmmsession.kernels.gmm import project_gaussians_rfft_2d

BOX = 48  # 72 Å at 1.5 Å: holds the 60 Å default protein
PIX = 1.5
N = 200
SNR = 0.5


@pytest.fixture(scope="module")
def protein():
    return build_protein(seed=0)


@pytest.fixture(scope="module")
def runs(protein, tmp_path_factory):
    base = tmp_path_factory.mktemp("sim")
    calls: list[int] = []
    kw = dict(n_particles=N, box_size=BOX, pixel_size_angstrom=PIX, model=protein, chunk_size=64, hinge_max_deg=8.0)
    noisy = simulate(base / "noisy", snr=SNR, seed=7, progress=calls.append, **kw)
    again = simulate(base / "again", snr=SNR, seed=7, **kw)
    clean = simulate(base / "clean", snr=math.inf, seed=7, **kw)
    other = simulate(base / "other", snr=SNR, seed=8, **kw)
    return {"noisy": noisy, "again": again, "clean": clean, "other": other, "calls": calls}


def test_files_exist_and_are_consistent(runs):
    ds = runs["noisy"]
    for path in (ds.particles_star, ds.stack, ds.truth_map, ds.mask, ds.truth_star, ds.truth_npz, ds.model_pdb, ds.parameters_json, *ds.domain_masks):
        assert path.is_file(), path
    assert [p.name for p in ds.domain_masks] == ["domain_1_mask.mrc", "domain_2_mask.mrc"]
    assert (ds.truth_dir / "truth_map_conf1.mrc").is_file() and (ds.truth_dir / "truth_map_conf2.mrc").is_file()
    blocks = starfile.read(ds.particles_star, always_dict=True)
    assert list(blocks) == ["optics", "particles"]
    optics, particles = blocks["optics"], blocks["particles"]
    assert list(optics.columns) == [
        "rlnOpticsGroup", "rlnOpticsGroupName", "rlnAmplitudeContrast", "rlnSphericalAberration",
        "rlnVoltage", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
    ]
    assert optics["rlnImagePixelSize"].iloc[0] == PIX and optics["rlnImageSize"].iloc[0] == BOX
    assert optics["rlnVoltage"].iloc[0] == 300 and optics["rlnSphericalAberration"].iloc[0] == 2.7
    for col in ("rlnImageName", "rlnMicrographName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
                "rlnOpticsGroup", "rlnRandomSubset", "rlnClassNumber"):
        assert col in particles.columns, col
    assert len(particles) == N
    assert particles["rlnImageName"].iloc[0] == "000001@particles.mrcs"
    assert particles["rlnImageName"].iloc[-1] == f"{N:06d}@particles.mrcs"
    # The file holds exactly the truth (values were rounded to the 6 decimals starfile writes).
    assert np.array_equal(particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(), ds.euler_deg)
    assert np.array_equal(particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), ds.origins_angstrom)
    assert np.abs(ds.origins_angstrom).max() <= 2 * PIX
    assert (particles["rlnDefocusU"] >= particles["rlnDefocusV"]).all()
    assert particles["rlnDefocusU"].between(8000 - 100, 25000 + 100).all()
    with mrcfile.open(ds.stack, permissive=False) as mrc:
        assert mrc.data.shape == (N, BOX, BOX)
        assert mrc.is_image_stack()
        assert float(mrc.voxel_size.x) == pytest.approx(PIX)
    truth_map, px = read_map(ds.truth_map)
    assert truth_map.shape == (BOX, BOX, BOX) and px == pytest.approx(PIX)
    assert truth_map.max() == pytest.approx(1.0, rel=1e-5)
    masks = [read_map(p)[0] for p in ds.domain_masks]
    whole = read_map(ds.mask)[0]
    assert np.allclose(sum(masks), whole, atol=1e-5)
    assert whole.min() >= 0 and whole.max() <= 1 + 1e-6
    # The truth density lies inside the mask: outside it only the band limit's ringing remains
    # (a few % of the maximum).
    assert (truth_map * whole).sum() > 0.98 * truth_map.sum()
    assert np.abs(truth_map[whole == 0]).max() < 0.05
    truth_tab = starfile.read(ds.truth_star, always_dict=True)["particles"]
    assert np.array_equal(truth_tab["rlnGmmHingeAngle"].to_numpy(), ds.hinge_angle_deg)
    npz = np.load(ds.truth_npz)
    assert np.array_equal(npz["half"], ds.half)
    params = json.loads(ds.parameters_json.read_text())
    assert params["snr"] == SNR and params["n_particles"] == N and params["seed"] == 7
    assert params["gmmsession_version"]


def test_measured_snr_matches_requested(runs):
    noisy = mrcfile.read(runs["noisy"].stack).astype(np.float64)
    clean = mrcfile.read(runs["clean"].stack).astype(np.float64)
    noise = noisy - clean
    signal_var = clean.var(axis=(1, 2)).mean()
    measured = signal_var / noise.var()
    # The signal part is exact (same seed, clean images identical); the only spread is the
    # sample variance of N * box^2 = 460,800 Gaussian noise values: relative sd sqrt(2 / 460800)
    # = 0.2 %. 1.5 % is 7 sd. float32 storage adds < 1e-6.
    assert measured == pytest.approx(SNR, rel=0.015)
    assert runs["noisy"].noise_std == pytest.approx(math.sqrt(signal_var / SNR), rel=1e-5)
    # White and independent of the signal: no correlation with the clean images, flat mean.
    corr = np.corrcoef(noise.ravel(), clean.ravel())[0, 1]
    assert abs(corr) < 5 / math.sqrt(noise.size)
    assert abs(noise.mean()) < 5 * noise.std() / math.sqrt(noise.size)


def test_infinite_snr_images_equal_analytic_projections(runs, protein):
    ds = runs["clean"]
    images = torch.as_tensor(mrcfile.read(ds.stack).astype(np.float64))
    amp, sig = atom_gaussians(protein)
    params = json.loads(ds.parameters_json.read_text())
    amp = amp * params["amplitude_scale"]
    idx = torch.arange(0, N, 17)
    positions = protein.conformation(None, ds.hinge_angle_deg[idx.numpy()])
    rot = euler_relion_to_matrix(torch.as_tensor(ds.euler_deg[idx.numpy()]))
    shift = image_shift_angstrom_from_origin(torch.as_tensor(ds.origins_angstrom[idx.numpy()]))
    spectrum = project_gaussians_rfft_2d(positions, amp, sig, rot, shift, BOX, PIX)
    ctf = ctf_2d(
        rfft_frequencies_2d(BOX, PIX, dtype=torch.float64),
        torch.as_tensor(ds.defocus_u_angstrom[idx.numpy()]),
        torch.as_tensor(ds.defocus_v_angstrom[idx.numpy()]),
        torch.as_tensor(ds.defocus_angle_deg[idx.numpy()]),
        300.0, 2.7, 0.1,
    )
    expected = irfft_centered_2d(spectrum * ctf, BOX)
    # The simulator projects in float32 (phases up to ~60 rad): 1e-4 of the image range.
    scale = expected.abs().max().item()
    assert torch.allclose(images[idx], expected, atol=1e-4 * scale)
    # RELION sign: CTF(0) = +Q0 > 0, so every image integrates to a positive value.
    assert (images.sum(dim=(1, 2)) > 0).all()
    # Conformations differ: the hinge moves the images.
    assert np.ptp(ds.hinge_angle_deg) > 10.0
    assert np.abs(ds.hinge_angle_deg).max() <= 8.0


def test_half_sets_balanced_and_random(runs):
    half = runs["noisy"].half
    assert set(np.unique(half)) == {1, 2}
    assert abs((half == 1).sum() - (half == 2).sum()) <= 1
    assert not np.array_equal(half, np.where(np.arange(N) % 2 == 0, 1, 2))
    assert not np.array_equal(half, runs["other"].half)


def test_deterministic_with_seed(runs):
    a, b, c = runs["noisy"], runs["again"], runs["other"]
    # MRC and star headers carry creation times, so compare contents.
    assert np.array_equal(mrcfile.read(a.stack), mrcfile.read(b.stack))
    star_a = starfile.read(a.particles_star, always_dict=True)
    star_b = starfile.read(b.particles_star, always_dict=True)
    assert all(star_a[k].equals(star_b[k]) for k in ("optics", "particles"))
    assert np.array_equal(a.euler_deg, b.euler_deg) and np.array_equal(a.hinge_angle_deg, b.hinge_angle_deg)
    assert not np.array_equal(a.euler_deg, c.euler_deg)
    assert not np.array_equal(mrcfile.read(a.stack), mrcfile.read(c.stack))
    # The clean run shares every parameter with the noisy one: only the noise differs.
    assert np.array_equal(a.euler_deg, runs["clean"].euler_deg)


def test_progress_reports_both_passes(runs):
    calls = runs["calls"]
    assert calls[-1] == N and calls.count(N) == 2 and len(calls) == 2 * math.ceil(N / 64)


def test_poses_cover_the_sphere(runs):
    # Uniform on SO(3): the viewing direction's z component (cos tilt) is uniform on [-1, 1].
    cos_tilt = np.cos(np.deg2rad(runs["noisy"].euler_deg[:, 1]))
    hist, _ = np.histogram(cos_tilt, bins=4, range=(-1, 1))
    # 50 expected per bin; a uniform sample stays within +-25 with probability > 0.999.
    assert hist.min() > 25 and hist.max() < 75


def test_atomic_model_input_and_box_check(runs, tmp_path):
    ds = simulate(tmp_path / "from_pdb", n_particles=4, box_size=BOX, pixel_size_angstrom=PIX, snr=1.0,
                  model=runs["noisy"].model_pdb, hinge_max_deg=0.0, chunk_size=2)
    assert mrcfile.read(ds.stack).shape == (4, BOX, BOX)
    with pytest.raises(ValueError, match="box"):
        simulate(tmp_path / "too_small", n_particles=4, box_size=32, pixel_size_angstrom=PIX, model=runs["noisy"].model_pdb)
    with pytest.raises(ValueError, match="snr"):
        simulate(tmp_path / "bad", n_particles=4, box_size=BOX, snr=0.0, model=runs["noisy"].model_pdb)


def test_perturb_star_poses_moves_each_pose_by_exactly_the_asked_amount(tmp_path):
    from gmmsession.algorithms.simulate import perturb_star_poses
    from gmmsession.kernels.conventions import euler_relion_to_matrix
    from gmmsession.kernels.rotations import geodesic_angle_deg

    sim = simulate(tmp_path / "d", n_particles=40, box_size=24, pixel_size_angstrom=3.0, snr=1.0, seed=2)
    out = perturb_star_poses(sim.particles_star, tmp_path / "p.star", angle_deg=3.0, shift_angstrom=1.5, seed=1)
    a = starfile.read(sim.particles_star, always_dict=True)["particles"]
    b = starfile.read(out, always_dict=True)["particles"]
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    ra = euler_relion_to_matrix(torch.tensor(a[cols].to_numpy(dtype=np.float64)))
    rb = euler_relion_to_matrix(torch.tensor(b[cols].to_numpy(dtype=np.float64)))
    # 3 degrees each, up to the 6 decimals starfile writes
    assert torch.allclose(geodesic_angle_deg(ra, rb), torch.full((40,), 3.0, dtype=torch.float64), atol=1e-3)
    d = np.hypot(b["rlnOriginXAngst"] - a["rlnOriginXAngst"], b["rlnOriginYAngst"] - a["rlnOriginYAngst"])
    np.testing.assert_allclose(d, 1.5, atol=1e-4)
    assert list(a.columns) == list(b.columns)
    # written in another folder: the stack paths are rewritten, and both files read the same images
    from gmmsession.data.io.relion import read_relion_star
    from gmmsession.data.io.stack import ParticleImageReader

    assert (b["rlnImageName"] != a["rlnImageName"]).all()
    images = []
    for path in (sim.particles_star, out):
        ps = read_relion_star(path)
        with ParticleImageReader(ps.particles, ps.optics) as reader:
            images.append(reader.read(np.arange(40)))
    np.testing.assert_array_equal(images[0], images[1])
    same_folder = perturb_star_poses(sim.particles_star, sim.particles_star.parent / "p.star", angle_deg=3.0, shift_angstrom=1.5, seed=1)
    assert (starfile.read(same_folder, always_dict=True)["particles"]["rlnImageName"] == a["rlnImageName"]).all()
