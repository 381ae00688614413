import json

from gmmsession.session.display import html_for, register_html_renderer
from gmmsession.session.history import History, StepRecord, Timer, environment_versions


def test_history_json_round_trip_keeps_every_field():
    import numpy as np

    with Timer() as t:
        pass
    rec = StepRecord(
        name="reconstruct",
        params={"chunk_size": np.int64(1000), "device": "cpu"},
        started_utc=t.started_utc,
        duration_s=t.duration_s,
        versions=environment_versions(),
        metrics={"resolution_angstrom": np.float32(3.5), "inf": float("inf")},
        curves={"fsc": np.linspace(1, 0, 5)},
    )
    h = History([rec])
    back = History.from_json(h.to_json())
    assert len(back) == 1
    r = back[0]
    assert r.name == "reconstruct" and r.params["chunk_size"] == 1000
    assert r.metrics["resolution_angstrom"] == 3.5 and r.metrics["inf"] == "inf"
    assert r.curves["fsc"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert "torch" in r.versions and "gmmsession" in r.versions
    json.loads(h.to_json())  # strict JSON (no NaN/Infinity tokens)
    assert back.last("reconstruct") is r and back.last("nothing") is None
    assert list(back.to_dataframe()["step"]) == ["reconstruct"]


def test_display_falls_back_to_escaped_text_and_uses_registered_renderers():
    class Thing:
        def __repr__(self):
            return "<thing & co>"

    assert html_for(Thing()) == "<pre>&lt;thing &amp; co&gt;</pre>"
    register_html_renderer(Thing, lambda obj: "<b>thing</b>")
    assert html_for(Thing()) == "<b>thing</b>"


def test_change_histogram_counts_every_value_and_folds_outliers_into_the_last_bin():
    from gmmsession.session.history import change_histogram

    values = list(range(100)) + [1e6]  # one outlier beyond the 99th percentile
    counts, edges = change_histogram(values, n_bins=10)
    assert sum(counts) == 101 and len(edges) == 11 and edges[0] == 0.0
    assert edges[-1] < 1e3 and counts[-1] >= 2  # the outlier is counted in the last bin, not stretching the axis
    assert change_histogram([0.0, 0.0], n_bins=4) == ([2, 0, 0, 0], [0.0, 0.25, 0.5, 0.75, 1.0])
