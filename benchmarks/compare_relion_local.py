"""Issue 3 benchmarks against RELION 3.1 local auto-refinement (run by hand; not a test).

Two modes.

**Accuracy** (default). Simulates a rigid particle set (``gs.simulate``, hinge 0), perturbs the
true poses by ``--angle`` degrees and ``--shift`` pixels (``perturb_star_poses``) and refines
from the perturbed star with

- gmmsession: ``Session.from_star`` -> ``reconstruct`` -> ``build_gmm`` ->
  ``refine_global(n_iter=5, mask)``; the wall time is the sum of those three calls;
- RELION: ``mpirun -n 3 relion_refine_mpi --j 1 --auto_refine --split_random_halves`` with
  local angular searches only (``--healpix_order 4 --auto_local_healpix_order 4 --sigma_ang``),
  a small offset search (``--offset_range 3 --offset_step 1``), the simulator's solvent mask,
  and as reference the average of the two half maps reconstructed (by gmmsession) from the
  perturbed poses, low-passed by RELION to ``--ini_high``. The input star carries
  ``rlnRandomSubset``; RELION 3.1 keeps subsets that are present (``divideParticlesInRandomHalves``
  only draws new ones when all are 0) and the script checks that its output kept them. The wall
  time is that of the whole ``mpirun`` (initial noise estimate, every iteration and the final
  joined-halves iteration).

It prints one markdown table: start and final median angular error against the truth, the
0.143 resolution measured the same way for every row (gmmsession's masked, phase-randomisation
corrected gold-standard FSC with the simulator's mask, on RELION's final unfiltered half maps
for RELION), RELION's own reported resolution (``rlnCurrentResolution`` of its final model star),
and wall time. A reference row reconstructs from the true poses. The "do no harm" case of the
issue (RELION 3.1 made poses worse: 2.1 -> 6.6 degrees on a 24 kDa protein) is::

    python benchmarks/compare_relion_local.py --snr 0.05 --angle 2

**Timing** (``--timing``). For box 64 (the first ``--timing-n`` particles of the 5,000-particle
box-64 data set) and box 128 (``--timing-n`` particles simulated at box 128, 1.5 Å/px), with
the same 3 degree / 1 px perturbation:

- gmmsession: after ``reconstruct`` and ``build_gmm(n_gaussians=G)`` (G = 2,000 and 8,000; not
  timed), ``refine_global(n_iter=1, mask)``; the time is that of its one iteration
  (``refine_global_iteration`` record: re-fit of both half GMMs to their low-passed half maps,
  alignment of every particle, reconstruction of both half maps, masked FSC);
- RELION: the same local auto-refine options as above with ``--auto_iter_max``; the time of one
  iteration is the difference of the modification times of ``run_it00{k}_optimiser.star`` and
  ``run_it00{k-1}_optimiser.star`` (one expectation over all particles + maximisation of both
  halves + writing its files). Iteration 1 runs at ``--ini_high`` (10 Å); iteration 2 at the
  resolution iteration 1 reached. The ratio uses RELION's iteration 2 (the last timed one).

It prints particles/s of each and the ratio (RELION seconds / gmmsession seconds). Both run on
this machine's CPUs (gmmsession with torch's default threads, RELION with 1 master + 2 workers,
``--j 1``); numbers depend on what else runs: compare numbers from one run. Data sets and RELION
runs are cached under ``/tmp/cmp_relion_*`` (an existing finished RELION run is re-read, not
re-run; ``--rerun-relion`` forces it).

    python benchmarks/compare_relion_local.py                       # accuracy, SNR 0.2, 3 deg
    python benchmarks/compare_relion_local.py --snr 0.05 --angle 2  # do no harm
    python benchmarks/compare_relion_local.py --timing --timing-n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import starfile
import torch

import gmmsession as gs
from gmmsession.algorithms.postprocess import gold_standard_fsc
from gmmsession.algorithms.simulate import perturb_star_poses
from gmmsession.data.io.mrc import read_map, write_map
from gmmsession.kernels.conventions import euler_relion_to_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refine_global import median_error_deg  # noqa: E402

PIXEL_SIZE = 1.5
SEED = 41


# --------------------------------------------------------------------------- data
def dataset(n: int, box: int, snr: float) -> SimpleNamespace:
    """The simulated data set, cached under /tmp (``truth/simulation.json`` is written last)."""
    out = Path(f"/tmp/cmp_relion_n{n}_b{box}_snr{snr:g}_s{SEED}") / "data"
    if not (out / "truth" / "simulation.json").exists():
        t = time.perf_counter()
        gs.simulate(out, n_particles=n, box_size=box, pixel_size_angstrom=PIXEL_SIZE, snr=snr, hinge_max_deg=0.0, seed=SEED)
        print(f"simulated {out}: {time.perf_counter() - t:.0f} s", flush=True)
    params = json.loads((out / "truth" / "simulation.json").read_text())
    truth = np.load(out / "truth" / "truth.npz")
    return SimpleNamespace(
        out_dir=out, particles_star=out / "particles.star", mask=out / "truth" / "mask.mrc",
        euler_deg=truth["euler_deg"], half=truth["half"], diameter_angstrom=float(params["diameter_angstrom"]),
        box=box, n=n, snr=snr,
    )


def subset_star(star: Path, out: Path, n: int) -> Path:
    """The first ``n`` particles of a star file (same folder, so image paths stay valid)."""
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"] = blocks["particles"].iloc[:n].reset_index(drop=True)
    starfile.write(blocks, out, overwrite=True)
    return out


def truth_rotations(sim: SimpleNamespace, n: int | None = None) -> torch.Tensor:
    e = sim.euler_deg if n is None else sim.euler_deg[:n]
    return euler_relion_to_matrix(torch.tensor(e))


def star_median_error(star: Path, truth_star: Path, truth: torch.Tensor) -> tuple[float, float]:
    """Median angular error of a star file's poses vs the truth, matched by rlnImageName; and the
    fraction of particles whose rlnRandomSubset equals the truth star's."""
    df = starfile.read(star, always_dict=True)["particles"]
    ref = starfile.read(truth_star, always_dict=True)["particles"]
    index = pd.Series(np.arange(len(ref)), index=ref["rlnImageName"].to_numpy())
    order = index.loc[df["rlnImageName"].to_numpy()].to_numpy()
    poses = pd.DataFrame({"rot_deg": df["rlnAngleRot"].to_numpy(), "tilt_deg": df["rlnAngleTilt"].to_numpy(),
                          "psi_deg": df["rlnAnglePsi"].to_numpy()})
    same_half = float((df["rlnRandomSubset"].to_numpy() == ref["rlnRandomSubset"].to_numpy()[order]).mean())
    return median_error_deg(poses, truth[order]), same_half


def masked_resolution(half1: Path, half2: Path, mask: Path) -> float:
    """Our gold-standard 0.143 resolution (masked, phase-randomisation corrected), as Session.fsc."""
    h1, _ = read_map(half1, pixel_size_angstrom=PIXEL_SIZE)
    h2, _ = read_map(half2, pixel_size_angstrom=PIXEL_SIZE)
    m, _ = read_map(mask, pixel_size_angstrom=PIXEL_SIZE)
    r = gold_standard_fsc(torch.as_tensor(h1.copy()), torch.as_tensor(h2.copy()), PIXEL_SIZE, mask=torch.as_tensor(m.copy()))
    if r.resolution_corrected_angstrom is not None and r.resolution_angstrom < r.resolution_corrected_angstrom:
        print(f"  note: {half1.name}: the unmasked FSC reaches further ({r.resolution_unmasked_angstrom:.2f} Å) than the "
              f"mask-corrected one ({r.resolution_corrected_angstrom:.2f} Å); reported as Session.fsc does: the unmasked", flush=True)
    return float(r.resolution_angstrom)


# --------------------------------------------------------------------------- RELION
def relion_command(star: Path, ref: Path, mask: Path, out: Path, diameter: float, args: argparse.Namespace,
                   iter_max: int | None) -> list[str]:
    cmd = [
        "mpirun", "-n", "3", "--allow-run-as-root", "--oversubscribe", "relion_refine_mpi", "--j", "1",
        "--i", str(star), "--o", str(out / "run"), "--ref", str(ref), "--ini_high", f"{args.ini_high:g}",
        "--auto_refine", "--split_random_halves", "--ctf", "--particle_diameter", f"{diameter:.0f}",
        "--solvent_mask", str(mask), "--flatten_solvent", "--zero_mask", "--solvent_correct_fsc",
        "--pad", "2", "--oversampling", "1",
        "--healpix_order", str(args.healpix_order), "--auto_local_healpix_order", str(args.healpix_order),
        "--sigma_ang", f"{args.sigma_ang:g}",
        "--offset_range", f"{args.offset_range:g}", "--offset_step", "1",
        "--sym", "C1", "--low_resol_join_halves", "40", "--random_seed", "0", "--dont_check_norm",
        "--dont_combine_weights_via_disc", "--pool", "30",
    ]
    if iter_max is not None:
        cmd += ["--auto_iter_max", str(iter_max)]
    return cmd


def group_cpu_seconds(sid: int) -> float:
    """User + system CPU seconds of the live processes of a session (from /proc): mpirun is started
    in a new session, and its ranks (which it puts in process groups of their own) stay in it."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the command: state ppid pgrp session ... utime(12) stime(13)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_relion(cmd: list[str], cwd: Path, out: Path, done: Path, rerun: bool, reuse_partial: bool = False,
               stop_at: Path | None = None) -> tuple[float | None, bool]:
    """Run RELION (cwd = the data folder: RELION resolves image names against the working directory).

    A finished run in ``out`` (``done`` exists) is re-read instead, and so is an unfinished or
    interrupted one with ``reuse_partial`` (its wall time is then taken from the file times: start
    = ``command.txt``, end = the last ``run_itNNN_optimiser.star``).

    ``stop_at``: stop RELION once this file appears (``--auto_iter_max`` alone may still run the
    final joined iteration); the wall time then ends at that file's modification time.

    Returns (wall seconds, whether it ran now)."""
    t = out / "wall_seconds.txt"
    if done.exists() and not rerun and t.exists():
        return float(t.read_text()), False
    last = sorted(out.glob("run_it*_optimiser.star"))
    if reuse_partial and not rerun and len(last) > 1:
        return last[-1].stat().st_mtime - (out / "command.txt").stat().st_mtime, False
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    print("RELION:", " ".join(cmd), flush=True)
    t = time.perf_counter()
    with open(out / "relion.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stopped = False
        cpu_at: dict[str, float] = {}  # iteration file -> CPU seconds of all ranks when it appeared
        cpu = 0.0
        while proc.poll() is None:
            time.sleep(1.0)
            cpu = max(cpu, group_cpu_seconds(proc.pid))
            for f in sorted(out.glob("run_it*_optimiser.star")):
                cpu_at.setdefault(f.name, cpu)
            (out / "cpu_seconds.json").write_text(json.dumps({"total": cpu, "at_iteration_file": cpu_at}))
            if stop_at is not None and stop_at.exists():
                time.sleep(2.0)  # let RELION finish writing that iteration's files
                os.killpg(proc.pid, signal.SIGTERM)  # our own mpirun's process group
                proc.wait()
                stopped = True
        rc = 0 if stopped else proc.returncode
    wall = (stop_at.stat().st_mtime - (out / "command.txt").stat().st_mtime) if stopped else time.perf_counter() - t
    (out / "wall_seconds.txt").write_text(f"{wall}\n")
    if rc != 0:
        print((out / "relion.log").read_text()[-3000:])
        raise RuntimeError(f"relion_refine_mpi exited with {rc}; log in {out / 'relion.log'}")
    return wall, True


def iteration_seconds(out: Path) -> list[float]:
    """Seconds of each RELION iteration k >= 1 (optimiser.star mtime differences)."""
    times = []
    k = 0
    while (f := out / f"run_it{k:03d}_optimiser.star").exists():
        times.append(f.stat().st_mtime)
        k += 1
    return [float(x) for x in np.diff(times)]


def relion_cpu(out: Path) -> tuple[float | None, list[float]]:
    """RELION's total CPU seconds (all ranks) and CPU seconds of each iteration k >= 1, sampled
    once a second by :func:`run_relion` (None / [] for a run started elsewhere)."""
    f = out / "cpu_seconds.json"
    if not f.exists():
        return None, []
    d = json.loads(f.read_text())
    if not d["total"]:  # nothing sampled (e.g. ranks outside the session)
        return None, []
    at = [d["at_iteration_file"][k] for k in sorted(d["at_iteration_file"])]
    return d["total"], [float(x) for x in np.diff(at)]


def relion_final(out: Path) -> dict:
    """RELION's final poses/half maps/resolution: the converged ``run_*`` files when present, else the
    last iteration's."""
    if (out / "run_data.star").exists() and (out / "run_half1_class001_unfil.mrc").exists():
        data, h1, h2 = out / "run_data.star", out / "run_half1_class001_unfil.mrc", out / "run_half2_class001_unfil.mrc"
        model = next((m for m in (out / "run_model.star", out / "run_half1_model.star") if m.exists()))
        which = "converged"
    else:
        k = len(iteration_seconds(out))
        data = out / f"run_it{k:03d}_data.star"
        h1, h2 = (out / f"run_it{k:03d}_half{h}_class001_unfil.mrc" for h in (1, 2))
        model, which = out / f"run_it{k:03d}_half1_model.star", f"iteration {k} (not converged)"
    general = starfile.read(model, always_dict=True)["model_general"]
    return {"data": data, "half1": h1, "half2": h2, "which": which, "resolution": float(general["rlnCurrentResolution"])}


# --------------------------------------------------------------------------- accuracy
def accuracy(args: argparse.Namespace) -> None:
    sim = dataset(args.n, 64, args.snr)
    tag = f"a{args.angle:g}_s{args.shift:g}"
    star = perturb_star_poses(sim.particles_star, sim.out_dir / f"perturbed_{tag}.star", args.angle,
                              args.shift * PIXEL_SIZE, seed=SEED)
    truth = truth_rotations(sim)
    work = sim.out_dir.parent
    rows = []

    ref = gs.Session.from_star(sim.particles_star)
    t, c = time.perf_counter(), time.process_time()
    ref.reconstruct(progress=False)
    rows.append(("true poses (reconstruct only)", 0.0, 0.0, float(ref.fsc(mask=sim.mask).attrs["resolution_angstrom"]), None,
                 time.perf_counter() - t, time.process_time() - c))

    s = gs.Session.from_star(star)
    start_err = median_error_deg(s.particles, truth)
    t, c = time.perf_counter(), time.process_time()
    s.reconstruct(progress=False)
    t_rec, c_rec = time.perf_counter() - t, time.process_time() - c
    start_res = float(s.fsc(mask=sim.mask).attrs["resolution_angstrom"])
    rows.append(("perturbed poses (reconstruct only)", start_err, start_err, start_res, None, t_rec, c_rec))
    # RELION's reference: the average of the half maps from the perturbed poses.
    h1, h2 = s.write_half_maps(work, prefix=f"start_{tag}_half")
    ref_map = write_map(work / f"start_{tag}_average.mrc",
                        0.5 * (read_map(h1, PIXEL_SIZE)[0] + read_map(h2, PIXEL_SIZE)[0]), PIXEL_SIZE)
    print(f"start: median error {start_err:.2f} deg, masked resolution {start_res:.2f} Å", flush=True)

    cache = work / f"ours_{tag}.json"
    if not args.skip_ours and cache.exists() and not args.rerun_ours:
        row = json.loads(cache.read_text())
        print(f"ours: cached result from {cache} (--rerun-ours runs it again): {row}", flush=True)
        rows.append(tuple(row) + (None,) * (7 - len(row)))
    elif not args.skip_ours:
        t, c = time.perf_counter(), time.process_time()
        s.build_gmm(progress=False)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        s.refine_global(n_iter=5, mask=sim.mask, progress=False)
        t_ref = time.perf_counter() - t
        cpu = c_rec + time.process_time() - c
        for r in s.history:
            if r.name == "refine_global_iteration":
                print(f"  ours iteration {r.params['iteration']}: {r.duration_s:.1f} s, {r.metrics}", flush=True)
        rows.append(("gmmsession refine_global (5 iter)", start_err, median_error_deg(s.particles, truth),
                     float(s.fsc(mask=sim.mask).attrs["resolution_angstrom"]), None, t_rec + t_build + t_ref, cpu))
        cache.write_text(json.dumps(list(rows[-1])))
        print(f"ours: reconstruct {t_rec:.0f} s, build_gmm {t_build:.0f} s, refine_global {t_ref:.0f} s", flush=True)

    if not args.skip_relion:
        out = work / f"relion_{tag}_sig{args.sigma_ang:g}_hp{args.healpix_order}_it{args.relion_iter_max or 'conv'}"
        cmd = relion_command(star, ref_map, sim.mask, out, min(sim.diameter_angstrom + 16, 0.95 * 64 * PIXEL_SIZE),
                             args, args.relion_iter_max)
        stop = None if args.relion_iter_max is None else out / f"run_it{args.relion_iter_max:03d}_optimiser.star"
        wall, ran = run_relion(cmd, sim.out_dir, out, stop or out / "run_data.star", args.rerun_relion,
                               args.reuse_partial_relion, stop_at=stop)
        fin = relion_final(out)
        err, same_half = star_median_error(fin["data"], sim.particles_star, truth)
        res = masked_resolution(fin["half1"], fin["half2"], sim.mask)
        its = iteration_seconds(out)
        print(f"RELION ({'ran now' if ran else 'cached run'}; {fin['which']}): {len(its)} iterations, seconds per iteration "
              f"{[round(x) for x in its]}; halves kept for {100 * same_half:.1f}% of particles; command in {out / 'command.txt'}",
              flush=True)
        g0 = starfile.read(out / "run_it000_half1_model.star", always_dict=True)["model_general"]
        print(f"RELION's local-search prior sigma at iteration 0 (it overrides --sigma_ang in auto-refine): "
              f"rot {float(g0['rlnSigmaPriorRotAngle']):g}, tilt {float(g0['rlnSigmaPriorTiltAngle']):g}, "
              f"psi {float(g0['rlnSigmaPriorPsiAngle']):g} deg (search +/- 3 sigma)", flush=True)
        per_it = [star_median_error(out / f"run_it{k:03d}_data.star", sim.particles_star, truth)[0] for k in range(1, len(its) + 1)]
        print(f"RELION median error per iteration (deg): {[round(e, 2) for e in per_it]}; final {err:.2f}", flush=True)
        cpu_total, cpu_its = relion_cpu(out)
        if cpu_its:
            print(f"RELION CPU seconds per iteration (all ranks): {[round(x) for x in cpu_its]}", flush=True)
        rows.append((f"RELION 3.1 local auto-refine ({fin['which']})", start_err, err, res, fin["resolution"], wall, cpu_total))

    print(f"\nSNR {args.snr:g}, {args.n} particles, box 64, {PIXEL_SIZE} Å/px, start {args.angle:g} deg / {args.shift:g} px; "
          f"load: {os.getloadavg()}\n")
    print("| method | start error (deg) | final error (deg) | resolution, ours-measured (Å) | RELION-reported resolution (Å) "
          "| wall time (s) | CPU time (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, e0, e1, r, rr, w, c in rows:
        print(f"| {name} | {e0:.2f} | {e1:.2f} | {r:.2f} | {'' if rr is None else f'{rr:.2f}'} | "
              f"{'' if w is None else f'{w:.0f}'} | {'' if c is None else f'{c:.0f}'} |")


# --------------------------------------------------------------------------- timing
def timing(args: argparse.Namespace) -> None:
    rows = []
    for box in args.timing_boxes:
        sim = dataset(5000, 64, 0.2) if box == 64 else dataset(args.timing_n, box, 0.2)
        n = args.timing_n
        full = perturb_star_poses(sim.particles_star, sim.out_dir / "perturbed_a3_s1.star", 3.0, PIXEL_SIZE, seed=SEED)
        star = subset_star(full, sim.out_dir / f"perturbed_a3_s1_first{n}.star", n)
        work = sim.out_dir.parent
        for i, ng in enumerate(args.timing_gaussians):
            s = gs.Session.from_star(star)
            s.reconstruct(progress=False)
            if i == 0:  # RELION's reference: the average of the half maps from the perturbed poses
                h1, h2 = s.write_half_maps(work, prefix=f"timing_first{n}_half")
                ref_map = write_map(work / f"timing_first{n}_average.mrc",
                                    0.5 * (read_map(h1, PIXEL_SIZE)[0] + read_map(h2, PIXEL_SIZE)[0]), PIXEL_SIZE)
            s.build_gmm(n_gaussians=ng, progress=False)
            t, c = time.perf_counter(), time.process_time()
            s.refine_global(n_iter=1, mask=sim.mask, progress=False)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            it = [r for r in s.history if r.name == "refine_global_iteration"][0]
            print(f"box {box}, {ng} Gaussians: iteration {it.duration_s:.1f} s (refine_global call {wall:.1f} s wall, "
                  f"{cpu:.1f} s CPU)", flush=True)
            rows.append((box, n, f"gmmsession, {ng} Gaussians", it.duration_s, cpu))
        out = work / f"relion_timing_first{n}_hp{args.healpix_order}_it{args.timing_relion_iters}"
        cmd = relion_command(star, ref_map, sim.mask, out, min(sim.diameter_angstrom + 16, 0.95 * box * PIXEL_SIZE),
                             args, args.timing_relion_iters)
        stop = out / f"run_it{args.timing_relion_iters:03d}_optimiser.star"
        run_relion(cmd, sim.out_dir, out, stop, args.rerun_relion, stop_at=stop)
        its = iteration_seconds(out)
        _, cpu_its = relion_cpu(out)
        print(f"box {box}: RELION seconds per iteration {[round(x, 1) for x in its]}, CPU {[round(x, 1) for x in cpu_its]}", flush=True)
        for k, sec in enumerate(its, 1):
            rows.append((box, n, f"RELION iteration {k}", sec, cpu_its[k - 1] if k <= len(cpu_its) else None))

    print(f"\nTiming (load {os.getloadavg()}; torch threads {torch.get_num_threads()}; RELION 1 master + 2 workers --j 1)\n")
    print("| box | particles | program | wall s / iteration | particles/s (wall) | CPU s / iteration | particles/CPU-s "
          "| ratio RELION last iteration / this (wall) | ratio (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for box, n, name, sec, cpu in rows:
        relion = [r for r in rows if r[0] == box and r[2].startswith("RELION")]
        ratio = f"{relion[-1][3] / sec:.2f}x" if relion and not name.startswith("RELION") else ""
        ratio_cpu = (f"{relion[-1][4] / cpu:.2f}x" if relion and relion[-1][4] and cpu and not name.startswith("RELION") else "")
        cpu_s = "" if cpu is None else f"{cpu:.1f}"
        cpu_rate = "" if not cpu else f"{n / cpu:.1f}"
        print(f"| {box} | {n} | {name} | {sec:.1f} | {n / sec:.1f} | {cpu_s} | {cpu_rate} | {ratio} | {ratio_cpu} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--snr", type=float, default=0.2)
    ap.add_argument("--angle", type=float, default=3.0, help="start error (degrees)")
    ap.add_argument("--shift", type=float, default=1.0, help="start shift error (pixels)")
    ap.add_argument("--sigma-ang", type=float, default=1.5, help="RELION --sigma_ang (local search of +/- 3 sigma)")
    ap.add_argument("--healpix-order", type=int, default=4,
                    help="RELION --healpix_order = --auto_local_healpix_order (4: 3.75 deg before oversampling). Starting "
                         "local, RELION 3.1 auto-refine replaces --sigma_ang by twice the oversampled step (1.875 deg at 4)")
    ap.add_argument("--offset-range", type=float, default=3, help="RELION --offset_range (pixels)")
    ap.add_argument("--ini-high", type=float, default=10.0, help="RELION --ini_high (Å)")
    ap.add_argument("--relion-iter-max", type=int, default=None,
                    help="RELION --auto_iter_max (default: run to convergence)")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--skip-relion", action="store_true")
    ap.add_argument("--rerun-ours", action="store_true", help="ignore the cached gmmsession result (ours_<tag>.json)")
    ap.add_argument("--rerun-relion", action="store_true", help="ignore a cached finished RELION run")
    ap.add_argument("--reuse-partial-relion", action="store_true",
                    help="re-read an unfinished/interrupted RELION run (its last iteration) instead of running it again")
    ap.add_argument("--timing", action="store_true", help="per-iteration speed instead of accuracy")
    ap.add_argument("--timing-n", type=int, default=1000)
    ap.add_argument("--timing-boxes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--timing-gaussians", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--timing-relion-iters", type=int, default=2)
    args = ap.parse_args()
    timing(args) if args.timing else accuracy(args)


if __name__ == "__main__":
    main()
