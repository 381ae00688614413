"""Issue 5 benchmark and acceptance experiment: heterogeneity training and conformation -> pose.

Simulates a two-domain protein whose smaller domain turns about a hinge (uniform in
``+-hinge`` degrees), reconstructs it at the true poses, then for each GMM size:

1. builds one GMM per half map (``--gaussians``, e.g. 2000 and 8000),
2. trains the per-half encoder/decoder pairs with the moving domain's mask as mobility mask,
   timing every epoch: seconds per epoch per 10,000 particles (one half's epoch covers that
   half's particles; the first epoch, which includes warm-up, is left out of the median) and
   the peak memory (CUDA: ``torch.cuda.max_memory_allocated`` over training; CPU: the
   process's peak resident size so far, which includes the data set),
3. reports |Spearman rho| of PC1 (and of latent dimension 0) against the true hinge angle per half
   (acceptance: >= 0.8),
4. runs ``conf_to_pose`` on the moving domain and reports particles/s and the median angle
   between each particle's new pose and its true domain pose ``A R_hinge``, raw and after
   removing one global rotation offset per half (acceptance: < 2 degrees after the offset),
5. with ``--focus``: the moving domain's resolution against its truth map (FSC 0.5) after
   focused refinement alone and after conf_to_pose + focused refinement (acceptance: better).

Run by hand (a GPU is used when present)::

    python benchmarks/bench_heterogeneity.py --n 2000 --box 48 --pixel-size 2.0 --gaussians 2000 8000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import gmmsession as gs
from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.rotations import geodesic_angle_deg, matrix_to_rotvec, rotvec_to_matrix
from gmmsession.algorithms.heterogeneity import HeterogeneityConfig, latent_pca
from gmmsession.data.io.mrc import read_map
from gmmsession.kernels.fsc import fsc_3d, resolution_at_threshold
from gmmsession.session.heterogeneity import Heterogeneity


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (no ties expected: continuous values)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def pose_errors(s, truth: torch.Tensor) -> tuple[dict[int, tuple[float, float]], dict[int, torch.Tensor]]:
    """Per half: median angle (deg) between the session's poses and ``truth``, raw and after removing
    the half's mean rotation offset (``a = truth @ O``, ``O`` the mean of the per-particle offsets);
    and each half's offset ``O`` (3, 3)."""
    p = s.particles
    a = euler_relion_to_matrix(torch.as_tensor(np.stack([p[c].values for c in ("rot_deg", "tilt_deg", "psi_deg")], -1)))
    out, offsets = {}, {}
    for h in (1, 2):
        m = torch.as_tensor(p["half"].values == h)
        offsets[h] = rotvec_to_matrix(matrix_to_rotvec(truth[m].transpose(-1, -2) @ a[m]).mean(0))
        out[h] = (float(geodesic_angle_deg(a[m], truth[m]).median()), float(geodesic_angle_deg(a[m], truth[m] @ offsets[h]).median()))
    return out, offsets


def domain_resolution(s, truth: torch.Tensor, domain_mask: torch.Tensor, threshold: float = 0.5) -> float:
    """Resolution (Å) where the FSC of the masked half-map average against the masked truth falls below ``threshold``."""
    fsc = fsc_3d(torch.as_tensor(s.half_maps.mean("half").values) * domain_mask, truth * domain_mask)
    return float(resolution_at_threshold(fsc, s.box_size, s.pixel_size_angstrom, threshold))


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--box", type=int, default=48)
    ap.add_argument("--pixel-size", type=float, default=2.0)
    ap.add_argument("--snr", type=float, default=0.3)
    ap.add_argument("--hinge", type=float, default=20.0, help="hinge range, +- degrees")
    ap.add_argument("--gaussians", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--latent-dim", type=int, default=2)
    ap.add_argument("--fit-steps", type=int, default=60, help="GMM fit steps (not timed)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--focus", action="store_true",
                    help="also compare the moving domain's FSC against its truth map (at 0.5) after focused refinement "
                         "alone and after conf_to_pose + focused refinement (first GMM size only; 3 iterations each)")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"torch {torch.__version__}, device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
          f", {torch.get_num_threads()} threads"), flush=True)
    work = Path(tempfile.mkdtemp(prefix="gmms-het-"))
    t = time.perf_counter()
    sim = gs.simulate(work / "data", n_particles=args.n, box_size=args.box, pixel_size_angstrom=args.pixel_size,
                      snr=args.snr, hinge_max_deg=args.hinge, seed=args.seed, device=device)
    params = json.loads(Path(sim.parameters_json).read_text())
    domain = next(p for p in sim.domain_masks if Path(p).name == f"domain_{params['moving_domain']}_mask.mrc")
    axis = torch.nn.functional.normalize(torch.tensor(params["hinge_axis"], dtype=torch.float64), dim=0)
    hinge = np.asarray(sim.hinge_angle_deg)
    truth = torch.as_tensor(sim.rotations, dtype=torch.float64) @ rotvec_to_matrix(axis * torch.deg2rad(torch.as_tensor(hinge))[:, None])
    print(f"simulated {args.n} particles, box {args.box}, {args.pixel_size} Å/px, SNR {args.snr}, hinge +-{args.hinge} deg "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    rows = []
    for n_gauss in args.gaussians:
        s = gs.Session.from_star(sim.particles_star, device=device)
        s.reconstruct(progress=False)
        res = float(s.fsc().attrs["resolution_angstrom"])
        t = time.perf_counter()
        s.build_gmm(n_gaussians=n_gauss, n_iter=args.fit_steps, progress=False)
        print(f"\n{n_gauss} Gaussians: GMM fit {time.perf_counter() - t:.0f} s, gold-standard {res:.2f} Å", flush=True)
        config = HeterogeneityConfig(latent_dim=args.latent_dim, n_epochs=args.epochs)
        het = Heterogeneity(s, config, s.focus(domain).mask)
        stamps: dict[int, list[float]] = {1: [], 2: []}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

        def tick(h: int, epoch: int, loss: float) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps[h].append(time.perf_counter())

        t0 = time.perf_counter()
        het.run(device, res, progress=tick)
        total = time.perf_counter() - t0
        mem = peak_memory_gib(device)
        halves = s.particles["half"].values
        per10k = []
        for h in (1, 2):
            d = np.diff(stamps[h])  # epochs 2.. of this half
            if d.size:
                per10k.append(float(np.median(d)) / int((halves == h).sum()) * 10000)
        s.last_heterogeneity, s._latent = het, het.latent
        rho = {}
        for h in (1, 2):
            z = het.latent.values[halves == h]
            mean, comps, _ = latent_pca(z)
            rho[h] = (abs(spearman((z - mean) @ comps[0], hinge[halves == h])), abs(spearman(z[:, 0], hinge[halves == h])))
        t = time.perf_counter()
        s.conf_to_pose(domain, reconstruct=False, progress=False)
        c2p = time.perf_counter() - t
        c2p_metrics = dict(s.history.last().metrics)
        errs, offsets = pose_errors(s, truth)
        eye = torch.eye(3, dtype=torch.float64)
        offset_deg = [float(geodesic_angle_deg(offsets[h], eye)) for h in (1, 2)]
        between = float(geodesic_angle_deg(offsets[1], offsets[2]))
        start_rot = torch.as_tensor(sim.rotations, dtype=torch.float64)
        p = s.particles
        moved = geodesic_angle_deg(start_rot, euler_relion_to_matrix(torch.as_tensor(
            np.stack([p[c].values for c in ("rot_deg", "tilt_deg", "psi_deg")], -1)))).numpy()
        slope = float((moved * np.abs(hinge)).sum() / (hinge**2).sum())  # 1: the full motion turned into pose
        row = {
            "gaussians": n_gauss, "epoch_s_per_10k": float(np.median(per10k)) if per10k else float("nan"),
            "training_total_s": total, "peak_memory_gib": mem, "conf_to_pose_particles_per_s": args.n / c2p,
            "spearman_pc1": [rho[1][0], rho[2][0]], "spearman_z0": [rho[1][1], rho[2][1]],
            "conf_to_pose_median_error_deg": [errs[1][0], errs[2][0]], "offset_removed_deg": [errs[1][1], errs[2][1]],
            "conf_to_pose_metrics": c2p_metrics, "offset_deg": offset_deg, "offset_between_halves_deg": between, "pose_change_vs_hinge_slope": slope,
        }
        if args.focus and n_gauss == args.gaussians[0]:
            truth_map = torch.as_tensor(read_map(sim.truth_map)[0])
            domain_mask = torch.as_tensor(read_map(domain)[0])
            focus_only = gs.Session.from_star(sim.particles_star, device=device)
            focus_only.reconstruct(progress=False)
            focus_only.build_gmm(n_gaussians=n_gauss, n_iter=args.fit_steps, progress=False)
            before = domain_resolution(focus_only, truth_map, domain_mask)
            focus_only.focus(domain).refine(n_iter=3, solvent_mask=sim.mask, progress=False)
            s.reconstruct(progress=False)  # the converted poses
            converted = domain_resolution(s, truth_map, domain_mask)
            s.focus(domain).refine(n_iter=3, solvent_mask=sim.mask, progress=False)
            after, _ = pose_errors(s, truth)
            alone, _ = pose_errors(focus_only, truth)
            row["median_error_after_focus_deg"] = {"conf_to_pose_then_focused": [after[1][1], after[2][1]],
                                                   "focused_alone": [alone[1][1], alone[2][1]]}
            print(f"  median error to the domain pose (offset removed): conf_to_pose + focused {after[1][1]:.2f} / {after[2][1]:.2f}, "
                  f"focused alone {alone[1][1]:.2f} / {alone[2][1]:.2f} deg (half 1 / half 2)", flush=True)
            row["moving_domain_vs_truth_angstrom"] = {
                "consensus": before, "focused": domain_resolution(focus_only, truth_map, domain_mask),
                "conf_to_pose": converted, "conf_to_pose_then_focused": domain_resolution(s, truth_map, domain_mask)}
            print("  moving domain vs truth @0.5: " + ", ".join(f"{k} {v:.2f} Å" for k, v in row["moving_domain_vs_truth_angstrom"].items())
                  + " (target: conf_to_pose_then_focused better than focused)", flush=True)
        rows.append(row)
        print(f"  epoch per 10k particles {row['epoch_s_per_10k']:.2f} s (training {total:.1f} s for 2 x {args.epochs} epochs + encoding), "
              f"peak memory {mem:.2f} GiB", flush=True)
        print(f"  |Spearman| PC1 vs hinge: half 1 {rho[1][0]:.3f}, half 2 {rho[2][0]:.3f} (z0: {rho[1][1]:.3f}, {rho[2][1]:.3f}; target >= 0.8)")
        print(f"  conf_to_pose {row['conf_to_pose_particles_per_s']:.0f} particles/s; median error to the domain pose: "
              f"half 1 {errs[1][0]:.2f} ({errs[1][1]:.2f} offset removed), half 2 {errs[2][0]:.2f} ({errs[2][1]:.2f}) deg; "
              f"median |hinge| {np.median(np.abs(hinge)):.1f} deg", flush=True)
        print(f"  projection refinement after Kabsch: median change {c2p_metrics.get('refine_median_angle_deg', float('nan')):.2f} deg, "
              f"projected RMSD {c2p_metrics.get('median_rmsd_kabsch_angstrom', float('nan')):.3f} -> "
              f"{c2p_metrics.get('median_rmsd_refined_angstrom', float('nan')):.3f} Å (median)", flush=True)
        print(f"  global offsets: half 1 {offset_deg[0]:.2f}, half 2 {offset_deg[1]:.2f} deg; between the halves {between:.2f} deg "
              f"(the halves' converted poses stay in one frame when this is small); pose change vs |hinge| slope {slope:.2f} (1: full motion)",
              flush=True)
    (work / "bench_heterogeneity.json").write_text(json.dumps(rows, indent=1))
    print(f"\nresults in {work / 'bench_heterogeneity.json'}")


if __name__ == "__main__":
    main()
