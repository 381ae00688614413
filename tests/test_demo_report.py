"""``gmmsession demo``: the whole pipeline at a tiny size, and its self-contained HTML report."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr

from gmmsession.cli import main
from gmmsession.session.history import History
from gmmsession.viz.report import REPORT_SECTIONS, ReportStage, pose_changes, session_report_html

STAGES = ["simulate", "reconstruct", "build GMM", "global refinement", "patches (K=2)", "heterogeneity", "conformation -> pose",
          "focused refinement", "merge", "write"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One tiny demo run (about 30 s on a 2-core CPU), shared by the tests below."""
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "--out", str(out), "--quick", "--quiet", "--n-particles", "60"])
    return SimpleNamespace(out=out, rc=rc, stdout=buf.getvalue(), html=(out / "report.html").read_text(encoding="utf-8"))


def _sections(page: str) -> dict[str, str]:
    parts = re.findall(r"<section id='(\w+)'>(.*?)</section>", page, flags=re.S)
    return dict(parts)


def test_demo_runs_every_stage_and_writes_the_outputs(demo):
    assert demo.rc == 0
    lines = [ln for ln in demo.stdout.splitlines() if ln.startswith("[")]
    assert [re.match(r"\[(\d+)/10\] ([^:]+):", ln).group(2) for ln in lines] == STAGES
    for name in ("report.html", "report.json", "report.md", "half1.mrc", "half2.mrc", "final_map.mrc", "fsc.csv", "session.gmms"):
        assert (demo.out / name).stat().st_size > 0, name
    report = json.loads((demo.out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == STAGES[:-1]
    assert report["particles"] == 60 and report["box"] == 24
    assert set(report["latent_pc1_vs_hinge_abs_spearman"]) == {"half1", "half2"}
    header = (demo.out / "fsc.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["shell", "resolution_angstrom", "fsc_unmasked", "fsc_masked_corrected", "fsc_average_vs_truth"]
    assert "fsc_masked_global_refinement" in header and "fsc_masked_merge" in header


def test_report_is_self_contained_with_plotly_embedded_once(demo):
    page = demo.html
    assert page.count("* plotly.js v") == 1  # the bundle's licence header: embedded exactly once
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)  # no external script at all (no CDN)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", page)
    assert page.count("Plotly.newPlot(") == len(REPORT_SECTIONS) - 1


def test_report_has_one_figure_per_section(demo):
    sections = _sections(demo.html)
    assert list(sections) == list(REPORT_SECTIONS)
    assert "plotly-graph-div" not in sections["summary"]
    for sid in REPORT_SECTIONS[1:]:
        assert sections[sid].count("class=\"plotly-graph-div\"") == 1, sid
        assert f'id="fig-{sid}"' in sections[sid]
    summary = sections["summary"]
    for stage in STAGES[:-1]:
        assert f"<td>{stage.replace('>', '&gt;')}</td>" in summary
    assert "<td>particles</td><td class='num'>60</td>" in summary


def test_report_figures_carry_the_data(demo):
    page = demo.html
    # the latent scatter is coloured by the true hinge angle, the pose figure has histograms
    latent = _sections(page)["latent"]
    assert "true hinge angle" in latent and '"type":"scatter"' in latent
    assert '"type":"histogram"' in _sections(page)["poses"]
    assert '"type":"heatmap"' in _sections(page)["map"]


def test_report_says_which_sections_were_not_run():
    """A session with half maps only: the GMM, patches, latent and pose sections say so and hold no figure."""
    vol = np.zeros((2, 8, 8, 8))
    vol[:, 3:5, 3:5, 3:5] = 1.0
    session = SimpleNamespace(
        pixel_size_angstrom=2.0, box_size=8, history=History(), gmm=None, last_patches=None, latent=None,
        particles=xr.Dataset(coords={"particle": np.arange(4)}),
        half_maps=xr.DataArray(vol, dims=("half", "z", "y", "x"), coords={"half": [1, 2]}),
    )
    still = (np.zeros(4), np.zeros(4))
    page = session_report_html(session, [ReportStage("simulate", 1.5, note="tiny"), ReportStage("focused", 2.0, pose_change=still)])
    sections = _sections(page)
    assert list(sections) == list(REPORT_SECTIONS)
    assert sections["map"].count("plotly-graph-div") == 1
    for sid in ("fsc", "iterations", "gmm", "patches", "latent"):
        assert "Not run" in sections[sid] and "plotly-graph-div" not in sections[sid], sid
    assert "Poses unchanged: focused" in sections["poses"] and "plotly-graph-div" not in sections["poses"]
    assert page.count("* plotly.js v") == 1


def test_pose_changes_measures_angle_and_shift():
    from gmmsession.kernels.conventions import euler_relion_to_matrix, matrix_to_euler_relion
    from gmmsession.kernels.rotations import rotvec_to_matrix

    rng = np.random.default_rng(1)
    n = 5
    euler = rng.uniform(-180, 180, (n, 3))
    euler[:, 1] = rng.uniform(10, 170, n)
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    turned = euler_relion_to_matrix(torch.as_tensor(euler)) @ rotvec_to_matrix(torch.as_tensor(axis * np.deg2rad(4.0)))
    after_euler = matrix_to_euler_relion(turned).numpy()

    def table(e: np.ndarray, ox: np.ndarray, oy: np.ndarray) -> xr.Dataset:
        return xr.Dataset({"rot_deg": ("particle", e[:, 0]), "tilt_deg": ("particle", e[:, 1]), "psi_deg": ("particle", e[:, 2]),
                           "origin_x_angstrom": ("particle", ox), "origin_y_angstrom": ("particle", oy)})

    before = table(euler, np.zeros(n), np.zeros(n))
    after = table(after_euler, np.full(n, 3.0), np.full(n, -4.0))
    angle, shift = pose_changes(before, after)
    np.testing.assert_allclose(angle, 4.0, atol=1e-6)
    np.testing.assert_allclose(shift, 5.0)
    with pytest.raises(ValueError, match="not the same particles"):
        pose_changes(before, after.isel(particle=slice(0, 3)))
