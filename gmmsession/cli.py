"""Command line: ``gmmsession demo --out DIR`` and ``gmmsession info FILE``.

The CLI only translates arguments into Session calls; all work happens in the library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


# Defaults of the demo (a few minutes on a 2-core laptop CPU) and of --quick (a smoke test, well under a minute).
_DEMO_DEFAULTS = {"n_particles": 2000, "box": 40, "pixel_size": 1.75, "n_gaussians": 200, "iterations": 2, "patches": 2,
                  "epochs": 10, "gmm_steps": 20, "build_steps": 60}
_DEMO_QUICK = {"n_particles": 100, "box": 24, "pixel_size": 2.8, "n_gaussians": 30, "iterations": 1, "patches": 2,
               "epochs": 1, "gmm_steps": 2, "build_steps": 5}


class _Stages:
    """Records the demo's stages as they finish: prints one line each, keeps its timing and what the report shows."""

    def __init__(self, n: int) -> None:
        self.n, self.done, self.records = n, 0, []
        self.t0 = time.perf_counter()

    def finish(self, name: str, start: float, line: str, **report) -> None:
        from gmmsession.viz.report import ReportStage

        self.done += 1
        seconds = time.perf_counter() - start
        self.records.append(ReportStage(name, seconds, note=line, **report))
        print(f"[{self.done}/{self.n}] {name}: {line} ({seconds:.1f} s)", flush=True)


def _demo_options(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from ``--quick``'s presets or the defaults."""
    preset = _DEMO_QUICK if args.quick else _DEMO_DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _pc1_hinge_correlation(latent, halves, hinge_deg) -> dict[int, float]:
    """|Spearman rank correlation| of each half's latent PC1 with the simulator's true hinge angle."""
    import numpy as np

    from gmmsession.algorithms.heterogeneity import latent_pca

    out = {}
    for h in (1, 2):
        z, truth = latent[halves == h], np.asarray(hinge_deg)[halves == h]
        mean, comps, _ = latent_pca(z)
        pc1 = (z - mean) @ comps[0]
        ranks = [np.argsort(np.argsort(v)) for v in (pc1, truth)]
        out[h] = round(abs(float(np.corrcoef(*ranks)[0, 1])), 3)
    return out


def _demo(args: argparse.Namespace) -> int:
    """``gmmsession demo``: the pipeline on the simulated dataset, then the maps, tables and report."""
    args = _demo_options(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(10)
    s, sim, rho = _demo_pipeline(args, out, stages)
    _demo_write(s, sim, rho, args, out, stages)
    return 0


def _demo_pipeline(args: argparse.Namespace, out: Path, st: _Stages):
    """Simulate -> reconstruct -> GMM -> global -> patches -> heterogeneity -> conformation to pose ->
    focused -> merge; returns the session, the simulated dataset and |Spearman| of PC1 vs the hinge per half."""
    import numpy as np

    import gmmsession as gs
    from gmmsession.algorithms.simulate import perturb_star_poses
    from gmmsession.viz.report import pose_changes

    bars = not args.quiet
    t = time.perf_counter()
    sim = gs.simulate(out / "data", n_particles=args.n_particles, box_size=args.box, pixel_size_angstrom=args.pixel_size,
                      snr=args.snr, hinge_max_deg=args.hinge, seed=args.seed)
    params = json.loads(Path(sim.parameters_json).read_text())
    domain = next(p for p in sim.domain_masks if Path(p).name == f"domain_{params['moving_domain']}_mask.mrc")
    st.finish("simulate", t, f"{args.n_particles} particles, box {args.box}, {args.pixel_size} Å/px, SNR {args.snr}, "
              f"hinge ±{args.hinge}° (domain {params['moving_domain']} moves)")

    t = time.perf_counter()
    star = perturb_star_poses(sim.particles_star, out / "data" / "perturbed.star", args.perturb_angle, args.perturb_shift,
                              seed=args.seed)
    s = gs.Session.from_star(star)
    s.reconstruct(progress=bars)
    fsc = s.fsc(mask=sim.mask)
    st.finish("reconstruct", t, f"from poses perturbed by {args.perturb_angle}° and {args.perturb_shift} Å: "
              f"{fsc.attrs['resolution_angstrom']:.2f} Å (masked)", fsc=fsc)

    t = time.perf_counter()
    step = s.build_gmm(n_gaussians=args.n_gaussians or None, mask=sim.mask, n_iter=args.build_steps, progress=bars)
    st.finish("build GMM", t, f"{step.metrics['n_gaussians']} Gaussians per half, fit FSC mean "
              f"{step.metrics['half1_mean_fsc']:.2f} / {step.metrics['half2_mean_fsc']:.2f}")

    t, before = time.perf_counter(), s.particles
    step = s.refine_global(n_iter=args.iterations, mask=sim.mask, gmm_fit_steps=args.gmm_steps, progress=bars)
    fsc = s.fsc(mask=sim.mask)
    st.finish("global refinement", t, f"{args.iterations} iterations, {step.metrics['start_resolution_angstrom']:.2f} -> "
              f"{step.metrics['resolution_angstrom']:.2f} Å (kept iteration {step.metrics['accepted_iteration']})",
              fsc=fsc, pose_change=pose_changes(before, s.particles))

    t = time.perf_counter()
    p = s.patches(args.patches, mask=sim.mask)
    p.refine(n_iter=1, solvent_mask=sim.mask, gmm_fit_steps=args.gmm_steps, progress=bars)
    step = p.composite(solvent_mask=sim.mask)
    moves = [pose_changes(s.particles, p.results[i].particles) for i in sorted(p.results)]  # s is back at the global poses
    st.finish(f"patches (K={args.patches})", t, f"each patch refined for 1 iteration; composite "
              f"{step.metrics['start_resolution_angstrom']:.2f} -> {step.metrics['resolution_angstrom']:.2f} Å",
              fsc=s.fsc(mask=sim.mask), pose_change=(np.concatenate([a for a, _ in moves]), np.concatenate([b for _, b in moves])))

    t = time.perf_counter()
    het = s.heterogeneity(mask=domain, latent_dim=args.latent_dim, n_epochs=args.epochs, progress=bars)
    rho = _pc1_hinge_correlation(het.latent.values, s.particles["half"].values, sim.hinge_angle_deg)
    st.finish("heterogeneity", t, f"latent dimension {args.latent_dim}, {args.epochs} epochs per half, moving domain's mask; "
              "|Spearman| of PC1 vs the true hinge angle " + ", ".join(f"half {h} {r:.2f}" for h, r in rho.items()))

    t, before = time.perf_counter(), s.particles
    step = s.conf_to_pose(domain, progress=bars)
    fsc = s.fsc(mask=sim.mask)
    st.finish("conformation -> pose", t, f"median pose change {step.metrics['median_angle_change_deg']:.2f}°, "
              f"then reconstructed: {fsc.attrs['resolution_angstrom']:.2f} Å", fsc=fsc, pose_change=pose_changes(before, s.particles))

    t, before = time.perf_counter(), s.particles
    step = s.focus(domain).refine(n_iter=1, solvent_mask=sim.mask, gmm_fit_steps=args.gmm_steps, progress=bars)
    fsc = s.fsc(mask=sim.mask)
    st.finish("focused refinement", t, f"moving domain, 1 iteration: domain "
              f"{step.metrics['start_focus_resolution_angstrom']:.2f} -> {step.metrics['focus_resolution_angstrom']:.2f} Å",
              fsc=fsc, pose_change=pose_changes(before, s.particles))

    t = time.perf_counter()
    p.add(s)  # the focused result joins the patches as one more, in the moving domain's mask
    step = p.composite(solvent_mask=sim.mask)
    fsc = s.fsc(mask=sim.mask)
    st.finish("merge", t, f"focused result added as patch {p.k - 1}; composite {step.metrics['resolution_angstrom']:.2f} Å", fsc=fsc)

    return s, sim, rho


def _demo_write(s, sim, rho: dict[int, float], args: argparse.Namespace, out: Path, st: _Stages) -> None:
    """Half maps, final map, fsc.csv, session.gmms, report.html / .md / .json."""
    import numpy as np
    import torch

    from gmmsession.algorithms.postprocess import gold_standard_fsc
    from gmmsession.data.io._atomic import atomic_path
    from gmmsession.data.io.mrc import read_map
    from gmmsession.viz.report import session_report_html

    t = time.perf_counter()
    fsc, fsc_unmasked = s.fsc(mask=sim.mask), s.fsc()
    truth, _ = read_map(sim.truth_map, pixel_size_angstrom=s.pixel_size_angstrom)
    avg = s.half_maps.mean("half").values
    vs_truth = gold_standard_fsc(torch.as_tensor(avg), torch.as_tensor(truth), s.pixel_size_angstrom, threshold=0.5)
    s.write_half_maps(out)
    final = s.final_map(out / "final_map.mrc", mask=sim.mask)
    columns = {"shell": fsc["shell"].values, "resolution_angstrom": fsc["resolution_angstrom"].values,
               "fsc_unmasked": fsc_unmasked.values, "fsc_masked_corrected": fsc.values, "fsc_average_vs_truth": vs_truth.fsc_unmasked}
    columns.update({f"fsc_masked_{r.name.split(' (')[0].replace(' -> ', '_to_').replace(' ', '_')}": r.fsc.values
                    for r in st.records if r.fsc is not None})
    with atomic_path(out / "fsc.csv") as tmp:
        np.savetxt(tmp, np.column_stack(list(columns.values())), delimiter=",", fmt="%.6g", header=",".join(columns), comments="")
    s.save(out / "session.gmms")
    report = {
        "particles": int(s.particles.sizes["particle"]), "box": s.box_size, "pixel_size_angstrom": s.pixel_size_angstrom,
        "snr": args.snr, "hinge_max_deg": args.hinge,
        "resolution_unmasked_angstrom": float(fsc_unmasked.attrs["resolution_angstrom"]),
        "resolution_masked_angstrom": float(fsc.attrs["resolution_angstrom"]),
        "resolution_vs_truth_fsc05_angstrom": float(vs_truth.resolution_angstrom),
        "simulate_s": round(st.records[0].seconds, 2), "reconstruct_s": round(st.records[1].seconds, 2),
        "latent_pc1_vs_hinge_abs_spearman": {f"half{h}": r for h, r in rho.items()},
        "stages": [{"name": r.name, "seconds": round(r.seconds, 2), "resolution_masked_angstrom":
                    None if r.fsc is None else float(r.fsc.attrs["resolution_angstrom"]), "note": r.note} for r in st.records],
    }
    facts = {"SNR": args.snr, "hinge range (deg)": f"±{args.hinge}", "start poses": f"truth perturbed by {args.perturb_angle}° "
             f"and {args.perturb_shift} Å", "final resolution, unmasked (Å)": report["resolution_unmasked_angstrom"],
             "final resolution, masked (Å)": report["resolution_masked_angstrom"],
             "half-map average vs truth, FSC 0.5 (Å)": report["resolution_vs_truth_fsc05_angstrom"]}
    hinge = np.asarray(sim.hinge_angle_deg)  # the session keeps the star file's particle order
    page = session_report_html(
        s, st.records, facts=facts, latent_color=hinge, latent_color_label="true hinge angle (deg)",
        title="gmmsession demo report", map_volume=final,
        map_label="final map (half-map average, sharpened, FSC-weighted and low-passed to the resolution; final_map.mrc)",
        intro=f"The built-in two-domain protein, simulated with a hinge of up to ±{args.hinge}°, processed from perturbed poses: "
              "reconstruction, GMM, global refinement, patches, heterogeneity, conformation to pose, focused refinement of the "
              "moving domain, merged into the patch composite.",
    )
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    report["total_s"] = round(time.perf_counter() - st.t0, 2)
    lines = ["# gmmsession demo report", "", f"Open report.html for the figures. {report['particles']} particles, box {s.box_size}, "
             f"{s.pixel_size_angstrom} Å/px, SNR {args.snr}, hinge ±{args.hinge}°.", ""]
    lines += [f"- {r['name']}: {r['note']} ({r['seconds']} s)" for r in report["stages"]]
    lines += ["", f"- final gold-standard resolution (FSC 0.143): unmasked {report['resolution_unmasked_angstrom']:.2f} Å, masked "
              f"{report['resolution_masked_angstrom']:.2f} Å; half-map average vs truth (FSC 0.5) "
              f"{report['resolution_vs_truth_fsc05_angstrom']:.2f} Å", "",
              "Files: report.html, half1.mrc, half2.mrc, final_map.mrc, fsc.csv, session.gmms (reopen with "
              "gmmsession.open_session), data/ (star files, stack, truth maps and masks)."]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    st.finish("write", t, f"report.html, half maps, final_map.mrc, fsc.csv, session.gmms in {out}")


def _info(args: argparse.Namespace) -> int:
    import gmmsession as gs

    path = Path(args.file)
    if path.suffix == ".gmms":
        s = gs.open_session(path)
    elif path.suffix == ".cs":
        s = gs.Session.from_cryosparc(path, stacks_root=args.stacks_root)
    else:
        s = gs.Session.from_star(path, stacks_root=args.stacks_root)
    print(repr(s))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gmmsession", description="GMM refinement of cryo-EM particles")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the whole pipeline on the built-in simulated dataset and write maps and an HTML report")
    demo.add_argument("--out", required=True, help="output folder (report.html, maps, fsc.csv, session.gmms, data/)")
    demo.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (options given explicitly still win)")
    d = _DEMO_DEFAULTS
    demo.add_argument("--n-particles", type=int, default=None, help=f"default {d['n_particles']}")
    demo.add_argument("--box", type=int, default=None, help=f"box size in pixels, default {d['box']}")
    demo.add_argument("--pixel-size", type=float, default=None, help=f"Å per pixel, default {d['pixel_size']}")
    demo.add_argument("--snr", type=float, default=0.2)
    demo.add_argument("--hinge", type=float, default=20.0, help="hinge range of the moving domain, ± degrees")
    demo.add_argument("--perturb-angle", type=float, default=3.0, help="start poses: the truth turned by this many degrees")
    demo.add_argument("--perturb-shift", type=float, default=1.5, help="start poses: the truth shifted by this many Å")
    demo.add_argument("--n-gaussians", type=int, default=None, help=f"per GMM, default {d['n_gaussians']} (0: from the resolution)")
    demo.add_argument("--build-steps", type=int, default=None, help=f"GMM fit steps of the first build, default {d['build_steps']}")
    demo.add_argument("--gmm-steps", type=int, default=None, help=f"GMM re-fit steps per refinement iteration, default {d['gmm_steps']}")
    demo.add_argument("--iterations", type=int, default=None, help=f"global refinement iterations, default {d['iterations']}")
    demo.add_argument("--patches", type=int, default=None, help=f"number of patches, default {d['patches']}")
    demo.add_argument("--epochs", type=int, default=None, help=f"heterogeneity epochs per half, default {d['epochs']}")
    demo.add_argument("--latent-dim", type=int, default=2)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="summarise a star, cs or session file")
    info.add_argument("file")
    info.add_argument("--stacks-root", default=None)
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:  # a clear one-line message for input errors; tracebacks for bugs
        from gmmsession.data.errors import GmmsessionInputError

        if isinstance(exc, GmmsessionInputError):
            print(f"gmmsession: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
