"""``s.heterogeneity()`` on the simulator's hinge: per-half models whose latent PC1 follows the
true hinge angle, in the session's particle order, with GMMs and maps along the latent space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.stats import spearmanr

import gmmsession as gs
from tests.conftest import simulated_session
from gmmsession.data.errors import GmmsessionInputError


@pytest.fixture(scope="module")
def hinge_session(tmp_path_factory):
    return simulated_session(tmp_path_factory.mktemp("het") / "data", n_particles=600, box_size=40, pixel_size_angstrom=2.4,
                             snr=0.3, hinge_max_deg=20.0, seed=3, n_gaussians=400, fit_steps=120)


def test_latent_follows_the_hinge_in_each_half(hinge_session):
    s, sim = hinge_session
    domain = sim.domain_masks[1]  # the moving domain (simulator: domain 2)
    h = s.heterogeneity(mask=domain, latent_dim=2, n_epochs=12, progress=False)
    assert h.latent.dims == ("particle", "latent_dim") and h.latent.shape == (600, 2)
    np.testing.assert_array_equal(h.latent["particle"].values, s.particles["particle"].values)
    assert np.isfinite(h.latent.values).all()
    halves = s.particles["half"].values
    for half in (1, 2):
        mean, comps, var = h.pca(half)
        z = h.latent.values[halves == half]
        rho = spearmanr((z - mean) @ comps[0], sim.hinge_angle_deg[halves == half])[0]
        # Acceptance of issue 5 asks |rho| >= 0.8 at full size; this small, noisy case measured 0.9.
        assert abs(rho) >= 0.8, (half, rho)
    rec = s.history.last()
    assert rec.name == "heterogeneity" and rec.params["latent_dim"] == 2 and len(rec.curves["half1_loss"]) == 12


def test_gmms_and_maps_along_the_latent_space(hinge_session):
    s, sim = hinge_session
    h = s.last_heterogeneity
    if h is None:
        h = s.heterogeneity(mask=sim.domain_masks[1], latent_dim=2, n_epochs=2, progress=False)
    neutral = h.gmm_at([0.0, 0.0], half=2)
    np.testing.assert_allclose(neutral["position_angstrom"].values, s.gmm.sel(half=2)["position_angstrom"].values[: neutral.sizes["gaussian"]],
                               atol=1e-4)  # float32 decoder: f(0) - f(0) rounding only
    traj = h.trajectory(pc=1, n=5, half=1)
    assert traj.shape == (5, 2)
    ends = [h.gmm_at(p, half=1)["position_angstrom"].values for p in traj[[0, -1]]]
    moved = np.linalg.norm(ends[1] - ends[0], axis=-1)
    assert moved.max() > 1.0  # the trajectory moves the domain by Å, not by rounding
    vol = h.volume_at(traj[0], half=1)
    assert vol.dims == ("z", "y", "x") and vol.shape == (40, 40, 40) and float(vol.max()) > 0
    with pytest.raises(ValueError, match="pc must be"):
        h.trajectory(pc=3, half=1)
    with pytest.raises(ValueError, match="half must be"):
        h.gmm_at([0, 0], half=3)


def test_latent_is_saved_with_the_session(hinge_session, tmp_path):
    s, sim = hinge_session
    if s.latent is None:
        s.heterogeneity(mask=sim.domain_masks[1], latent_dim=2, n_epochs=1, progress=False)
    reopened = gs.open_session(s.save(tmp_path / "het.gmms"))
    assert reopened.latent is not None
    np.testing.assert_array_equal(reopened.latent.values, s.latent.values)
    assert reopened.latent.dims == ("particle", "latent_dim")
    assert reopened.last_heterogeneity is not None  # the networks are saved too (test_networks_are_saved_with_the_session)


def test_latent_of_another_particle_set_is_not_shown(hinge_session):
    s, _ = hinge_session
    z = xr.DataArray(np.zeros((10, 2), np.float32), dims=("particle", "latent_dim"), coords={"particle": np.arange(10)})
    assert gs.Session(s._set, latent=z).latent is None  # rows would not match the 600 particles
    full = z.reindex(particle=s.particles["particle"].values, fill_value=0.0)
    assert gs.Session(s._set, latent=full).latent is not None


def test_conf_to_pose_moves_poses_to_the_domain_frame(hinge_session, tmp_path):
    """Poses start at the truth A; the moving domain's true pose is A R_h (hinge rotation h about
    the simulator's axis). After conf_to_pose the poses are much closer to A R_h than A was."""
    import json

    import torch

    from gmmsession.kernels.conventions import euler_relion_to_matrix
    from gmmsession.kernels.rotations import geodesic_angle_deg, rotvec_to_matrix

    s, sim = hinge_session
    domain = sim.domain_masks[1]
    s.heterogeneity(mask=domain, latent_dim=2, n_epochs=12, progress=False)
    axis = torch.nn.functional.normalize(torch.tensor(json.loads(sim.parameters_json.read_text())["hinge_axis"], dtype=torch.float64), dim=0)
    r_h = rotvec_to_matrix(axis * torch.deg2rad(torch.as_tensor(sim.hinge_angle_deg, dtype=torch.float64))[:, None])
    truth = torch.as_tensor(sim.rotations, dtype=torch.float64) @ r_h

    def error(session=s) -> torch.Tensor:
        p = session.particles
        a = euler_relion_to_matrix(torch.as_tensor(np.stack([p["rot_deg"].values, p["tilt_deg"].values, p["psi_deg"].values], -1)))
        return geodesic_angle_deg(a, truth)

    before = error()
    kabsch_only = gs.open_session(s.save(tmp_path / "hinge.gmms"))  # same poses and networks
    kabsch_only.conf_to_pose(domain, refine_steps=0, reconstruct=False, progress=False)
    rec = s.conf_to_pose(domain, progress=False)
    after = error()
    m = rec.metrics
    print(f"conf_to_pose: median error to the domain pose {float(before.median()):.2f} -> {float(after.median()):.2f} deg "
          f"(Kabsch only {float(error(kabsch_only).median()):.2f}); refinement moved poses by {m['refine_median_angle_deg']:.3f} deg "
          f"(median), projected RMSD {m['median_rmsd_kabsch_angstrom']:.3f} -> {m['median_rmsd_refined_angstrom']:.3f} A")
    assert rec.name == "conf_to_pose" and rec.metrics["median_angle_change_deg"] > 1.0
    assert float(after.median()) < 0.5 * float(before.median())
    assert s.history.last().name == "reconstruct"  # half maps rebuilt from the converted poses


# ---------------------------------------------------------------------- tiny session (checkpoint, save, conf_to_pose)
TINY = {"latent_dim": 2, "n_anchors": 8, "hidden": 16, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory):
    return simulated_session(tmp_path_factory.mktemp("het_tiny") / "data", n_particles=40, box_size=24, pixel_size_angstrom=4.0,
                             snr=0.5, hinge_max_deg=20.0, seed=3, n_gaussians=60, fit_steps=30)


def _state(h):
    return {f"{half}.{part}.{k}": v.clone() for half, nets in h.models.items() for part, net in zip("ed", nets)
            for k, v in net.state_dict().items()}


def _assert_same_training(a, b):
    # CPU, same operations in the same order on the same batches: measured bitwise equal; the
    # tolerance only allows for a BLAS that splits sums differently between two calls.
    assert a.losses.keys() == b.losses.keys()
    for h in a.losses:
        assert a.losses[h] == pytest.approx(b.losses[h], rel=1e-6)
    np.testing.assert_allclose(a.latent.values, b.latent.values, rtol=1e-5, atol=1e-6)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


def test_checkpoint_resumes_training_where_it_stopped(tiny_session, tmp_path):
    s, sim = tiny_session
    mask, ckpt = sim.domain_masks[1], tmp_path / "het.pt"
    s.heterogeneity(mask=mask, n_epochs=2, progress=False, checkpoint=ckpt, **TINY)
    assert ckpt.exists() and not list(tmp_path.glob(".het.pt*"))  # no temporary file left behind
    saved = torch.load(ckpt, weights_only=True)
    assert [saved["halves"][h]["epoch"] for h in (1, 2)] == [2, 2] and saved["config"]["latent_dim"] == 2
    resumed = s.heterogeneity(mask=mask, n_epochs=3, progress=False, checkpoint=ckpt, **TINY)
    assert resumed.resumed_from == {1: 2, 2: 2}  # one more epoch per half, not three
    assert s.history.last().metrics["half1_resumed_from_epoch"] == 2 and s.history.last().params["checkpoint"] == str(ckpt)
    whole = s.heterogeneity(mask=mask, n_epochs=3, progress=False, **TINY)
    assert whole.resumed_from == {1: 0, 2: 0}
    _assert_same_training(resumed, whole)


def test_interrupted_training_keeps_the_last_finished_epoch(tiny_session, tmp_path, monkeypatch):
    from gmmsession.session.heterogeneity import Heterogeneity

    s, sim = tiny_session
    mask, ckpt = sim.domain_masks[1], tmp_path / "het.pt"
    batches, calls = Heterogeneity._batches, []

    def interrupted(self, positions, epoch):
        calls.append(epoch)
        it = batches(self, positions, epoch)
        yield next(it)
        if calls.count(1) == 2:  # half 2, epoch 2 (0-based 1), after its first batch: Ctrl-C
            raise KeyboardInterrupt
        yield from it

    monkeypatch.setattr(Heterogeneity, "_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.heterogeneity(mask=mask, n_epochs=3, progress=False, checkpoint=ckpt, **TINY)
    monkeypatch.setattr(Heterogeneity, "_batches", batches)
    saved = torch.load(ckpt, weights_only=True)
    assert [saved["halves"][h]["epoch"] for h in (1, 2)] == [3, 1]
    resumed = s.heterogeneity(mask=mask, n_epochs=3, progress=False, checkpoint=ckpt, **TINY)
    assert resumed.resumed_from == {1: 3, 2: 1}
    _assert_same_training(resumed, s.heterogeneity(mask=mask, n_epochs=3, progress=False, **TINY))


def test_checkpoint_of_other_networks_is_refused(tiny_session, tmp_path):
    s, sim = tiny_session
    ckpt = tmp_path / "het.pt"
    s.heterogeneity(n_epochs=1, progress=False, checkpoint=ckpt, **TINY)
    with pytest.raises(GmmsessionInputError, match=r"het\.pt.*hidden is 16 there, 32 here"):
        s.heterogeneity(n_epochs=2, progress=False, checkpoint=ckpt, **{**TINY, "hidden": 32})


def test_networks_are_saved_with_the_session(tiny_session, tmp_path):
    s, sim = tiny_session
    mask = sim.domain_masks[1]
    h = s.heterogeneity(mask=mask, n_epochs=1, progress=False, **TINY)
    reopened = gs.open_session(s.save(tmp_path / "het.gmms"))
    r = reopened.last_heterogeneity
    assert r is not None and r.config == h.config and r.losses == h.losses
    np.testing.assert_array_equal(r.latent.values, h.latent.values)
    _assert_same_training(r, h)  # state_dicts, buffers (neutral centres, anchors, mobility weights) included
    point = h.trajectory(pc=1, n=3, half=2)[-1]
    np.testing.assert_array_equal(r.gmm_at(point, half=2)["position_angstrom"].values, h.gmm_at(point, half=2)["position_angstrom"].values)
    np.testing.assert_array_equal(r.volume_at(point, half=1).values, h.volume_at(point, half=1).values)
    # conf_to_pose on the reopened session gives the poses of the original one.
    pose_vars = ["rot_deg", "tilt_deg", "psi_deg", "origin_x_angstrom", "origin_y_angstrom"]
    original = gs.open_session(tmp_path / "het.gmms")  # the same state, trained networks in memory replaced by the file's
    original.last_heterogeneity = h
    original.conf_to_pose(mask, reconstruct=False, progress=False)
    reopened.conf_to_pose(mask, reconstruct=False, progress=False)
    for v in pose_vars:
        np.testing.assert_array_equal(reopened.particles[v].values, original.particles[v].values, err_msg=v)
    assert not np.array_equal(reopened.particles["rot_deg"].values, s.particles["rot_deg"].values)  # the poses did change


def test_conf_to_pose_reports_what_the_projection_refinement_adds(tiny_session, tmp_path):
    s, sim = tiny_session
    mask = sim.domain_masks[1]
    s.heterogeneity(mask=mask, n_epochs=1, progress=False, **TINY)
    path = s.save(tmp_path / "het.gmms")
    kabsch, refined = gs.open_session(path), gs.open_session(path)
    m0 = kabsch.conf_to_pose(mask, refine_steps=0, reconstruct=False, progress=False).metrics
    rec = refined.conf_to_pose(mask, reconstruct=False, progress=False)
    m1 = rec.metrics
    assert rec.params["refine_steps"] == 30 and rec.params["refine_learning_rate"] == 1e-3
    assert m0["refine_median_angle_deg"] == 0.0 and m0["median_rmsd_refined_angstrom"] == m0["median_rmsd_kabsch_angstrom"]
    assert m1["median_rmsd_kabsch_angstrom"] == pytest.approx(m0["median_rmsd_kabsch_angstrom"], rel=1e-9)
    assert m1["median_rmsd_refined_angstrom"] <= m1["median_rmsd_kabsch_angstrom"]  # best pose seen: never worse
    assert 0.0 <= m1["refine_median_angle_deg"] < 1.8  # 30 steps at lr 1e-3 move at most ~0.03 rad
    with pytest.raises(ValueError, match="refine_steps"):
        refined.conf_to_pose(mask, refine_steps=-1, progress=False)


def test_only_gaussians_inside_the_mask_move_and_they_move_fully(tiny_session):
    """The mobility mask is binary at 0.5: a soft edge would move its Gaussians by a fraction of
    the region's motion (and a rigid superposition would then read a smaller rotation)."""
    from gmmsession.data.gmm import gmm_to_tensors
    from gmmsession.data.io.mrc import read_map
    from gmmsession.kernels.masks import sample_volume_at

    s, sim = tiny_session
    h = s.heterogeneity(mask=sim.domain_masks[1], n_epochs=0, progress=False, **TINY)
    mask = torch.as_tensor(read_map(sim.domain_masks[1])[0])
    for half in (1, 2):
        values = sample_volume_at(mask, gmm_to_tensors(s.gmm, half=half).positions_angstrom, s.pixel_size_angstrom)
        assert bool(((values > 0) & (values < 0.5)).any()) and bool(((values >= 0.5) & (values < 1)).any())  # a soft edge
        rows = h.models[half][1].weights.sum(1)
        torch.testing.assert_close(rows, (values >= 0.5).float())  # 1: moves with the anchors, fully; 0: still


class _RigidHinge(torch.nn.Module):
    """An exact decoder: latent (n, 1) = hinge angle (degrees); the Gaussians flagged ``moving``
    turn about the simulator's hinge axis, the rest stay."""

    def __init__(self, neutral, moving, point, axis):
        super().__init__()
        self.register_buffer("neutral", neutral.float())
        self.register_buffer("moving", moving)
        self.point, self.axis = point, axis

    def forward(self, z):
        from gmmsession.kernels.rotations import rotvec_to_matrix

        r = rotvec_to_matrix(self.axis[None] * torch.deg2rad(z[:, :1].double())).float()
        turned = torch.einsum("nij,gj->ngi", r, self.neutral - self.point) + self.point
        return torch.where(self.moving[None, :, None], turned, self.neutral)


def test_conf_to_pose_recovers_the_domain_pose_exactly_from_an_exact_decoder(tiny_session):
    """With a decoder that turns the masked region rigidly by each particle's true hinge angle,
    the converted poses are the domain's true poses A R_h: the conversion itself adds no error
    (the Gaussians of the soft mask's outside edge, which do not move, are left out of the fit)."""
    import json

    import xarray as xr

    from gmmsession.algorithms.heterogeneity import HeterogeneityConfig
    from gmmsession.data.gmm import gmm_to_tensors
    from gmmsession.data.io.mrc import read_map
    from gmmsession.kernels.conventions import euler_relion_to_matrix
    from gmmsession.kernels.masks import sample_volume_at
    from gmmsession.kernels.rotations import geodesic_angle_deg, rotvec_to_matrix
    from gmmsession.session.heterogeneity import Heterogeneity

    s, sim = tiny_session
    import dataclasses

    s = gs.Session(dataclasses.replace(s._set), half_maps=s.half_maps, gmm=s.gmm)  # the fixture's poses stay as they are
    params = json.loads(sim.parameters_json.read_text())
    point = torch.tensor(params["hinge_point_angstrom"], dtype=torch.float32)
    axis = torch.nn.functional.normalize(torch.tensor(params["hinge_axis"], dtype=torch.float64), dim=0)
    mask = torch.as_tensor(read_map(sim.domain_masks[1])[0])
    het = Heterogeneity(s, HeterogeneityConfig(latent_dim=1))
    for half in (1, 2):
        g = gmm_to_tensors(s.gmm, half=half)
        moving = sample_volume_at(mask, g.positions_angstrom, s.pixel_size_angstrom) >= 0.5
        het.models[half], het.gmms[half] = (None, _RigidHinge(g.positions_angstrom, moving, point, axis.float())), g
    hinge = torch.as_tensor(sim.hinge_angle_deg, dtype=torch.float64)
    het.latent = xr.DataArray(hinge.float().numpy()[:, None], dims=("particle", "latent_dim"),
                              coords={"particle": s.particles["particle"].values, "latent_dim": [0]})
    s.last_heterogeneity, s._latent = het, het.latent
    p = s.particles
    start = euler_relion_to_matrix(torch.as_tensor(np.stack([p[c].values for c in ("rot_deg", "tilt_deg", "psi_deg")], -1)))
    assert float(geodesic_angle_deg(start, torch.as_tensor(sim.rotations, dtype=torch.float64)).max()) < 1e-3  # at the truth A
    s.conf_to_pose(sim.domain_masks[1], refine_steps=0, centre=False, reconstruct=False, progress=False)
    p = s.particles
    a = euler_relion_to_matrix(torch.as_tensor(np.stack([p[c].values for c in ("rot_deg", "tilt_deg", "psi_deg")], -1)))
    truth = torch.as_tensor(sim.rotations, dtype=torch.float64) @ rotvec_to_matrix(axis * torch.deg2rad(hinge)[:, None])
    err = geodesic_angle_deg(a, truth)
    assert float(hinge.abs().max()) > 10  # a real motion to recover
    # float32 decoder positions and Euler angles written back: measured ~1e-3 degrees
    assert float(err.max()) < 0.02, float(err.max())
