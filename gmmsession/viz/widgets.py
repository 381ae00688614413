"""Interactive notebook views (ipywidgets 8, PNG images and plotly ``FigureWidget``) over the view models.

Each view keeps its controls and figures as attributes (tests move them without a browser)
and displays as the live widget plus a static ``text/html`` fallback without JavaScript
(PNG slices, SVG scatter), which a notebook saved with outputs shows when the kernel is gone
(and GitHub / nbviewer / nbconvert show where widget state was not saved).

2D pictures (map slices, projections) are PNG images in :class:`ipywidgets.Image`, encoded
here by the code that also writes the static fallback; each view has at most one
``FigureWidget``. In plotly >= 6 a FigureWidget runs on anywidget, whose front end (0.11)
gives each widget 2 s to import its module; plotly's is ~5 MB and imported once per
FigureWidget, so on a loaded machine a second or third one times out and then silently
ignores the kernel. The map view therefore builds its isosurface only on request.

Built by :meth:`Session.show_map`, :meth:`Session.show_gmm` and :meth:`Heterogeneity.show`;
this module is imported only then (ipywidgets and plotly take about a second to import).
"""

from __future__ import annotations

import base64
import html
import struct
import zlib
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gmmsession.kernels.masks import MASK_INSIDE
from gmmsession.viz import viewmodels as vm

__all__ = ["MapView", "GmmView", "LatentView", "map_view", "gmm_view", "latent_view"]

_PATCH_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
_MASK_COLOUR = "#e4572e"


class _View:
    """A live widget (``widget``) that displays with a static HTML fallback (``static_html()``)."""

    widget: widgets.Widget

    def static_html(self) -> str:  # pragma: no cover - every view overrides it
        raise NotImplementedError

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        bundle["text/html"] = self.static_html()
        bundle["text/plain"] = repr(self)  # not the widget tree's repr: shown where neither renders
        return bundle


# ---------------------------------------------------------------------- maps
_SLICE_DISPLAY_PX = 240  # slices are enlarged (whole pixels, nearest neighbour) to at least this many pixels a side


class MapView(_View):
    """Orthogonal slices with one slider per axis, and an isosurface on demand.

    The slices are PNG images (:class:`ipywidgets.Image`) re-encoded by the kernel when a slider
    moves: they need no plotting library in the browser, so they show and update wherever
    ipywidgets do. The isosurface is one plotly ``FigureWidget``, built only when the
    "3D isosurface" toggle is first switched on: plotly's ~5 MB widget bundle then loads for it
    alone, and if the browser fails to start it (anywidget 0.11 gives a widget 2 s to import
    its module) the slices are unaffected.

    Attributes
    ----------
    volume : (box, box, box) float32, ``(z, y, x)``.
    sliders : {"z", "y", "x"}: IntSlider of the slice index along each axis.
    images : {"z", "y", "x"}: Image (PNG) of each slice, dark = dense, row axis pointing up,
        mask / patch outlines in colour; enlarged ``scale`` times.
    captions : {"z", "y", "x"}: HTML with the slice position and the axes in Å.
    scale : whole-pixel enlargement of the slice images.
    level : FloatSlider of the isosurface level (range :func:`viewmodels.isosurface_levels`).
    show_surface : ToggleButton that shows (building it the first time) or hides the isosurface.
    surface : None until first shown, then a FigureWidget with the isosurface (trace ``"map"``)
        and ``"mask"`` when given.
    """

    def __init__(self, volume: Any, pixel_size_angstrom: float = 1.0, *, mask: Any = None, patch_masks: Any = None,
                 title: str = "map", max_surface_size: int = 48) -> None:
        self.volume = vm._volume(volume)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.mask = None if mask is None else vm._volume(mask)
        self.patch_masks = None if patch_masks is None else np.asarray(patch_masks, dtype=np.float32)
        self.title = title
        self.max_surface_size = int(max_surface_size)
        box = self.volume.shape[0]
        self._levels = vm.isosurface_levels(self.volume)
        self.scale = max(1, -(-_SLICE_DISPLAY_PX // box))
        self.images = {a: widgets.Image(format="png") for a in vm.AXES}
        self.captions = {a: widgets.HTML() for a in vm.AXES}
        for a in vm.AXES:
            self.images[a].add_class("gmmsession-slice")
            self.images[a].add_class(f"gmmsession-slice-{a}")
        views = vm.orthogonal_slices(self.volume, pixel_size_angstrom=self.pixel_size_angstrom, mask=self.mask)
        for a in vm.AXES:
            self._draw(views[a])
        self.sliders = {a: widgets.IntSlider(value=views[a]["index"], min=0, max=box - 1, description=f"{a} slice",
                                             continuous_update=False) for a in vm.AXES}
        for a, slider in self.sliders.items():
            slider.observe(lambda change, a=a: self.set_index(a, change["new"]), names="value")
        lv = self._levels
        self.level = widgets.FloatSlider(value=lv["default"], min=lv["min"], max=lv["max"], step=lv["step"], readout_format=".4g",
                                         description="level", continuous_update=False)
        self.level.observe(lambda change: self.set_level(change["new"]), names="value")
        self.surface: go.FigureWidget | None = None
        self.show_surface = widgets.ToggleButton(value=False, description="3D isosurface", icon="cube",
                                                 tooltip="show the isosurface (plotly; loads a few MB in the browser the first time)")
        self.show_surface.observe(lambda change: self._toggle_surface(change["new"]), names="value")
        self._surface_box = widgets.VBox([])
        columns = [widgets.VBox([self.captions[a], self.images[a]], layout=widgets.Layout(margin="0 12px 0 0")) for a in vm.AXES]
        self.widget = widgets.VBox([widgets.HTML(f"<b>{html.escape(title)}</b>"), widgets.HBox(list(self.sliders.values())),
                                    widgets.HBox(columns), self.show_surface, self._surface_box])

    def _overlays(self, view: dict[str, Any]) -> list[tuple[np.ndarray, str]]:
        """(outline image, colour) of the mask and each patch on a slice."""
        out: list[tuple[np.ndarray, str]] = []
        if view["mask"] is not None:
            out.append((view["mask"], _MASK_COLOUR))
        if self.patch_masks is not None:
            take = vm.AXES.index(view["axis"])
            out += [(np.take(m, view["index"], axis=take), _PATCH_COLOURS[i % len(_PATCH_COLOURS)]) for i, m in enumerate(self.patch_masks)]
        return out

    def _rgb(self, view: dict[str, Any], scale: int) -> np.ndarray:
        return _slice_rgb(view["image"], self._levels["min"], self._levels["max"], self._overlays(view), scale)

    def _draw(self, view: dict[str, Any]) -> None:
        a = view["axis"]
        self.images[a].value = _png_bytes(self._rgb(view, self.scale))
        self.captions[a].value = _slice_caption(view)

    def __repr__(self) -> str:
        idx = ", ".join(f"{a}={s.value}" for a, s in self.sliders.items())
        return f"MapView({self.title!r}, box {self.volume.shape[0]}, slices {idx}, level {self.level.value:.4g})"

    def set_index(self, axis: str, index: int) -> None:
        """Show slice ``index`` along ``axis`` (what the axis' slider does)."""
        if self.sliders[axis].value != index:
            self.sliders[axis].value = index  # its observer calls back here
            return
        self._draw(vm.slice_view(self.volume, axis, index, self.pixel_size_angstrom, self.mask))

    def set_level(self, level: float) -> None:
        """Draw the isosurface at ``level`` (what the level slider does); kept for when it is shown."""
        if self.level.value != level:
            self.level.value = level  # its observer calls back here
            return
        if self.surface is not None:
            with self.surface.batch_update():
                self.surface.data[0].isomin = float(level)
                self.surface.layout.title.text = f"isosurface at {float(level):.4g}"

    def _toggle_surface(self, show: bool) -> None:
        if show and self.surface is None:
            self.surface = go.FigureWidget(self._surface_figure(self.level.value))
        self._surface_box.children = [self.level, self.surface] if show else []

    def _surface_figure(self, level: float) -> go.Figure:
        caps = {"x_show": False, "y_show": False, "z_show": False}
        grid = vm.isosurface_grid(self.volume, self.pixel_size_angstrom, max_size=self.max_surface_size)
        fig = go.Figure(go.Isosurface(x=grid["x"], y=grid["y"], z=grid["z"], value=grid["value"], isomin=float(level),
                                      isomax=self._levels["max"], surface_count=1, caps=caps, showscale=False, name="map",
                                      colorscale=[[0, "#8fa8c8"], [1, "#8fa8c8"]], opacity=1.0))
        if self.mask is not None:
            mgrid = vm.isosurface_grid(self.mask, self.pixel_size_angstrom, max_size=self.max_surface_size)
            fig.add_trace(go.Isosurface(x=mgrid["x"], y=mgrid["y"], z=mgrid["z"], value=mgrid["value"], isomin=0.5, isomax=1.0,
                                        surface_count=1, caps=caps, opacity=0.2, showscale=False, name="mask",
                                        colorscale=[[0, _MASK_COLOUR], [1, _MASK_COLOUR]]))
        fig.update_layout(title=f"isosurface at {float(level):.4g}", height=420, template="plotly_white",
                          scene={"xaxis_title": "x (Å)", "yaxis_title": "y (Å)", "zaxis_title": "z (Å)", "aspectmode": "data"},
                          margin={"l": 0, "r": 0, "t": 40, "b": 0})
        return fig

    def static_html(self) -> str:
        views = vm.orthogonal_slices(self.volume, {a: s.value for a, s in self.sliders.items()}, self.pixel_size_angstrom, self.mask)
        cells = [f"<figure style='margin:4px'><img alt='{a} slice' style='width:200px;image-rendering:pixelated' "
                 f"src='data:image/png;base64,{base64.b64encode(_png_bytes(self._rgb(views[a], 1))).decode('ascii')}'/>"
                 f"<figcaption style='font:11px sans-serif'>{_slice_caption(views[a])}</figcaption></figure>" for a in vm.AXES]
        return (f"<div><b>{html.escape(self.title)}</b> (static view; run the cell for sliders and the isosurface)"
                f"<div style='display:flex'>{''.join(cells)}</div></div>")


def map_view(volume: Any, pixel_size_angstrom: float = 1.0, *, mask: Any = None, patch_masks: Any = None, title: str = "map") -> MapView:
    """:class:`MapView` of a ``(z, y, x)`` volume (see :meth:`Session.show_map`)."""
    return MapView(volume, pixel_size_angstrom, mask=mask, patch_masks=patch_masks, title=title)


# ---------------------------------------------------------------------- GMMs
def _gmm_trace(data: dict[str, Any], name: str, cmin: float, cmax: float) -> go.Scatter3d:
    text = [f"Gaussian {int(i)}<br>amplitude {a:.4g}<br>width {w:.2f} Å" for i, a, w in zip(data["index"], data["amplitude"], data["width_angstrom"])]
    return go.Scatter3d(x=data["x"], y=data["y"], z=data["z"], mode="markers", name=name, text=text,
                        hovertemplate="%{text}<br>(%{x:.1f}, %{y:.1f}, %{z:.1f}) Å<extra></extra>",
                        marker={"size": data["size"], "color": data["amplitude"], "colorscale": "Viridis", "cmin": cmin, "cmax": cmax,
                                "showscale": True, "colorbar": {"title": {"text": "amplitude"}, "x": 1.0}, "opacity": 0.8, "line": {"width": 0}})


def _amplitude_range(gmm: Any) -> tuple[float, float]:
    amp = np.asarray(gmm["amplitude"].values, dtype=float)
    amp = amp[np.isfinite(amp)]
    return (float(amp.min()), float(amp.max())) if amp.size else (0.0, 1.0)


def _scene_layout(title: str) -> dict[str, Any]:
    return {"title": title, "height": 480, "template": "plotly_white", "legend": {"x": 0.0, "y": 1.0},
            "scene": {"xaxis_title": "x (Å)", "yaxis_title": "y (Å)", "zaxis_title": "z (Å)", "aspectmode": "data"},
            "margin": {"l": 0, "r": 0, "t": 40, "b": 0}}


class GmmView(_View):
    """3D scatter of a GMM (colour = amplitude, size = width) with a half selector.

    Attributes
    ----------
    gmm : the dataset shown (``Session.gmm``).
    half : Dropdown of the half shown (absent values: the dataset has no half dimension).
    figure : FigureWidget; trace 0 (``"GMM"``) the Gaussians, then one trace per patch and its
        centres (``"patch <i>"``) and the mask surface (``"mask"``) when given.
    """

    def __init__(self, gmm: Any, half: int | None = None, *, patches: Any = None, mask: Any = None,
                 pixel_size_angstrom: float = 1.0, max_surface_size: int = 48) -> None:
        self.gmm = gmm
        halves = [int(h) for h in gmm["half"].values] if "half" in gmm.dims else [None]
        shown = half if half is not None else halves[0]
        if shown not in halves:
            raise ValueError(f"half must be one of {halves}, got {half}")
        self._cmin, self._cmax = _amplitude_range(gmm)
        self.patches = patches
        data = vm.gmm_scatter(gmm, shown)
        fig = go.Figure(_gmm_trace(data, "GMM", self._cmin, self._cmax))
        if patches is not None:
            for i, p in enumerate(vm.patch_overlay(patches)):
                colour = _PATCH_COLOURS[i % len(_PATCH_COLOURS)]
                c = p["centre"]
                fig.add_trace(go.Scatter3d(x=p["x"], y=p["y"], z=p["z"], mode="markers", name=p["name"],
                                           marker={"size": 2, "color": colour, "opacity": 0.5}, hoverinfo="name"))
                fig.add_trace(go.Scatter3d(x=[c[0]], y=[c[1]], z=[c[2]], mode="markers+text", text=[str(i)], showlegend=False,
                                           name=f"{p['name']} centre", marker={"size": 8, "color": colour, "symbol": "diamond"},
                                           hovertext=[f"{p['name']}: centre ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) Å, "
                                                      f"radius {p['radius_angstrom']:.1f} Å"], hoverinfo="text"))
        if mask is not None:
            g = vm.isosurface_grid(mask, pixel_size_angstrom, max_size=max_surface_size)
            fig.add_trace(go.Isosurface(x=g["x"], y=g["y"], z=g["z"], value=g["value"], isomin=0.5, isomax=1.0, surface_count=1,
                                        caps={"x_show": False, "y_show": False, "z_show": False}, opacity=0.15, showscale=False,
                                        colorscale=[[0, _MASK_COLOUR], [1, _MASK_COLOUR]], name="mask"))
        fig.update_layout(**_scene_layout(self._title(shown, data)))
        self.figure = go.FigureWidget(fig)
        self.half = widgets.Dropdown(options=[(f"half {h}", h) for h in halves] if halves != [None] else [("GMM", None)],
                                     value=shown, description="show")
        self.half.observe(lambda change: self.set_half(change["new"]), names="value")
        self.widget = widgets.VBox([self.half, self.figure])

    def __repr__(self) -> str:
        return f"GmmView({self.figure.layout.title.text})"

    @staticmethod
    def _title(half: int | None, data: dict[str, Any]) -> str:
        return f"GMM{'' if half is None else f' half {half}'}: {len(data['x'])} Gaussians"

    def set_half(self, half: int | None) -> None:
        """Show half ``half``'s GMM (what the dropdown does)."""
        data = vm.gmm_scatter(self.gmm, half)
        with self.figure.batch_update():
            t = self.figure.data[0]
            t.x, t.y, t.z = data["x"], data["y"], data["z"]
            t.marker.size, t.marker.color = data["size"], data["amplitude"]
            t.text = [f"Gaussian {int(i)}<br>amplitude {a:.4g}<br>width {w:.2f} Å"
                      for i, a, w in zip(data["index"], data["amplitude"], data["width_angstrom"])]
            self.figure.layout.title.text = self._title(half, data)

    def static_html(self) -> str:
        data = vm.gmm_scatter(self.gmm, self.half.value)
        patches = None if self.patches is None else vm.patch_overlay(self.patches)
        return (f"<div><b>{html.escape(self._title(self.half.value, data))}</b> (static x–y projection; run the cell for the 3D view)"
                f"<div>{_scatter_svg(data, self._cmin, self._cmax, patches)}</div></div>")


def gmm_view(gmm: Any, half: int | None = None, *, patches: Any = None, mask: Any = None, pixel_size_angstrom: float = 1.0) -> GmmView:
    """:class:`GmmView` of a GMM dataset (see :meth:`Session.show_gmm`)."""
    return GmmView(gmm, half, patches=patches, mask=mask, pixel_size_angstrom=pixel_size_angstrom)


# ---------------------------------------------------------------------- latent space
class LatentView(_View):
    """One half's latent space on two principal components, and the GMM / map at a chosen point.

    Attributes
    ----------
    heterogeneity : the :class:`~gmmsession.session.heterogeneity.Heterogeneity` shown.
    half : Dropdown of the half (each half has its own latent space).
    particle : BoundedIntText, a particle's index in the session (click a point to set it).
    pc, position : Dropdown of the principal component and FloatSlider of the position along it
        (standard deviations from the mean).
    point : (latent_dim,) the latent point shown; ``source`` says how it was chosen
        (``"particle"`` or ``"pc"``).
    figure : the view's one FigureWidget: left the half's particles on (PC1, PC2) (trace 0,
        ``"particles"``) and the point shown (trace 1, ``"shown"``); right, in a 3D scene,
        ``h.gmm_at(point, half)`` (trace 2, ``"GMM"``).
    map_image : Image (PNG) of the map ``h.volume_at(point, half)`` summed along z (x across,
        y up, dark = dense), with ``map_caption``; None with ``show_volume=False``.
    """

    def __init__(self, heterogeneity: Any, particle_half: np.ndarray, half: int = 1, *, show_volume: bool = True,
                 extent: float = 2.0) -> None:
        self.heterogeneity = heterogeneity
        self.particle_half = np.asarray(particle_half)
        halves = sorted(heterogeneity.models)
        if half not in halves:
            raise ValueError(f"half must be one of {halves}, got {half}")
        d = int(heterogeneity.latent.sizes["latent_dim"])
        self.half = widgets.Dropdown(options=[(f"half {h}", h) for h in halves], value=half, description="half")
        first = int(np.flatnonzero(self.particle_half == half)[0])
        self.particle = widgets.BoundedIntText(value=first, min=0, max=len(self.particle_half) - 1, description="particle")
        self.pc = widgets.Dropdown(options=[(f"PC{i}", i) for i in range(1, d + 1)], value=1, description="along")
        self.position = widgets.FloatSlider(value=0.0, min=-extent, max=extent, step=extent / 20, description="σ from mean",
                                            continuous_update=False)
        self.status = widgets.HTML()
        g0 = heterogeneity.gmm_at(np.zeros(d, dtype=np.float32), half)
        self._cmin, self._cmax = _amplitude_range(g0)
        fig = make_subplots(rows=1, cols=2, specs=[[{"type": "xy"}, {"type": "scene"}]], column_widths=[0.45, 0.55],
                            subplot_titles=["latent space", "GMM at the latent point"], horizontal_spacing=0.08)
        fig.add_trace(go.Scattergl(x=[], y=[], mode="markers", marker={"size": 4, "color": "#1f77b4", "opacity": 0.5},
                                   name="particles", hovertemplate="particle %{customdata}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=[0.0], y=[0.0], mode="markers", name="shown", marker={"size": 14, "color": "#d62728", "symbol": "x"},
                                 hoverinfo="skip"), row=1, col=1)
        fig.add_trace(_gmm_trace(vm.gmm_scatter(g0, None), "GMM", self._cmin, self._cmax), row=1, col=2)
        fig.update_xaxes(title_text="PC1", row=1, col=1)
        fig.update_yaxes(title_text="PC2", row=1, col=1)
        fig.update_layout(height=460, template="plotly_white", showlegend=False, margin={"l": 50, "r": 10, "t": 60, "b": 50},
                          scene={"xaxis_title": "x (Å)", "yaxis_title": "y (Å)", "zaxis_title": "z (Å)", "aspectmode": "data"})
        self.figure = go.FigureWidget(fig)
        self.figure.data[0].on_click(self._clicked)
        self.map_image: widgets.Image | None = None
        self.map_caption: widgets.HTML | None = None
        if show_volume:
            self.map_image = widgets.Image(format="png")
            self.map_image.add_class("gmmsession-projection")
            self.map_caption = widgets.HTML()
        self.point = np.zeros(d)
        self.source = "pc"
        self.half.observe(lambda change: self.set_half(change["new"]), names="value")
        self.particle.observe(lambda change: self.select_particle(change["new"]), names="value")
        self.pc.observe(lambda change: self.move_along_pc(change["new"], self.position.value), names="value")
        self.position.observe(lambda change: self.move_along_pc(self.pc.value, change["new"]), names="value")
        rows: list[widgets.Widget] = [widgets.HBox([self.half, self.particle]), widgets.HBox([self.pc, self.position]), self.status,
                                      self.figure]
        if self.map_image is not None:
            rows.append(widgets.VBox([self.map_caption, self.map_image]))
        self.widget = widgets.VBox(rows)
        self._show_half(half)
        self.select_particle(first)

    def __repr__(self) -> str:
        return f"LatentView(half {self.half.value}, {self.source} point {np.round(self.point, 3).tolist()}; {self.heterogeneity!r})"

    def _pca(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.heterogeneity.pca(self.half.value)

    def _show_half(self, half: int) -> None:
        idx = np.flatnonzero(self.particle_half == half)
        mean, comps, _ = self.heterogeneity.pca(half)
        pcs = vm.latent_view(self.heterogeneity.latent.values[idx], mean, comps)
        self._indices = idx
        with self.figure.batch_update():
            t = self.figure.data[0]
            t.x, t.y, t.customdata = pcs["pc_a"], pcs["pc_b"], idx
            self.figure.layout.annotations[0].text = f"latent space, half {half}: {len(idx)} particles"

    def set_half(self, half: int) -> None:
        """Show half ``half``'s latent space (what the half dropdown does) at its mean."""
        self._show_half(half)
        self.move_along_pc(self.pc.value, 0.0)

    def select_particle(self, index: int) -> None:
        """Show the GMM / map at particle ``index``'s latent point (a click or the index box)."""
        index = int(index)
        h = int(self.particle_half[index])
        if h != self.half.value:
            self.half.value = h  # shows that half, then the particle below
        self._show(self.heterogeneity.latent.values[index], "particle", f"particle {index} (half {h})")
        if self.particle.value != index:
            self.particle.value = index

    def move_along_pc(self, pc: int, position: float) -> None:
        """Show the GMM / map ``position`` standard deviations along ``pc`` from the mean (the PC controls)."""
        mean, comps, var = self._pca()
        self._show(vm.latent_point(mean, comps, var, int(pc), float(position)), "pc", f"PC{int(pc)} at {float(position):+.2f} σ")

    def _clicked(self, trace: Any, points: Any, selector: Any) -> None:
        if points.point_inds:
            self.select_particle(int(self._indices[points.point_inds[0]]))

    def _show(self, point: np.ndarray, source: str, label: str) -> None:
        half = self.half.value
        self.point, self.source = np.asarray(point, dtype=float), source
        mean, comps, _ = self._pca()
        xy = vm.latent_view(self.point[None], mean, comps)
        data = vm.gmm_scatter(self.heterogeneity.gmm_at(self.point, half), None)
        with self.figure.batch_update():
            self.figure.data[1].x, self.figure.data[1].y = xy["pc_a"], xy["pc_b"]
            t = self.figure.data[2]
            t.x, t.y, t.z = data["x"], data["y"], data["z"]
            self.figure.layout.annotations[1].text = f"GMM at {label}"
        if self.map_image is not None:
            vol = self.heterogeneity.volume_at(self.point, half)
            proj = np.asarray(vol.values, dtype=np.float64).sum(axis=0)  # (y, x)
            scale = max(1, -(-_SLICE_DISPLAY_PX // proj.shape[0]))
            self.map_image.value = _png_bytes(_slice_rgb(proj, float(proj.min()), float(proj.max()), [], scale))
            x, y = np.asarray(vol["x"].values), np.asarray(vol["y"].values)
            self.map_caption.value = (f"<div style='font:12px sans-serif;line-height:1.4'><b>map at {html.escape(label)}, summed along z"
                                      f"</b><br>x → {x[0]:.1f} … {x[-1]:.1f} Å<br>y ↑ {y[0]:.1f} … {y[-1]:.1f} Å</div>")
        self.status.value = f"<span style='font:12px monospace'>half {half}, {html.escape(label)}: z = {np.round(self.point, 3).tolist()}</span>"

    def static_html(self) -> str:
        data = vm.gmm_scatter(self.heterogeneity.gmm_at(self.point, self.half.value), None)
        t = self.figure.data[0]
        latent = {"x": np.asarray(t.x, dtype=float), "y": np.asarray(t.y, dtype=float)}
        marker = (float(self.figure.data[1].x[0]), float(self.figure.data[1].y[0]))
        return (f"<div><b>Latent space, half {self.half.value}</b> (static; run the cell to explore)"
                f"<div style='display:flex;gap:12px'>{_points_svg(latent, marker, 'PC1', 'PC2')}"
                f"{_scatter_svg(data, self._cmin, self._cmax, None)}</div>"
                f"<div style='font:11px monospace'>GMM at z = {html.escape(str(np.round(self.point, 3).tolist()))}</div></div>")


def latent_view(heterogeneity: Any, particle_half: np.ndarray, half: int = 1, *, show_volume: bool = True) -> LatentView:
    """:class:`LatentView` of a heterogeneity result (see :meth:`Heterogeneity.show`)."""
    return LatentView(heterogeneity, particle_half, half, show_volume=show_volume)


# ---------------------------------------------------------------------- PNG images (live slices and static fallbacks)
def _png_bytes(rgb: np.ndarray) -> bytes:
    """PNG file of an (h, w, 3) uint8 image (8-bit RGB, no filtering, zlib level 6)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _slice_rgb(image: np.ndarray, vmin: float, vmax: float, overlays: list[tuple[np.ndarray, str]], scale: int = 1) -> np.ndarray:
    """(h * scale, w * scale, 3) uint8 picture of a (h, w) slice.

    Grey, dark = dense (``vmin`` white, ``vmax`` black); rows flipped so that the row axis points
    up; each pixel enlarged to ``scale`` x ``scale``; then the one-pixel outline of each
    ``(mask slice, "#rrggbb")`` overlay (values >= ``MASK_INSIDE`` inside) drawn in its colour.
    """
    span = vmax - vmin if vmax > vmin else 1.0
    grey = (255 * (1 - np.clip((np.nan_to_num(np.asarray(image, dtype=np.float64)) - vmin) / span, 0, 1))).astype(np.uint8)

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a[::-1], scale, axis=0), scale, axis=1)

    rgb = np.repeat(up(grey)[..., None], 3, axis=-1)
    for m, colour in overlays:
        inside = np.pad(up(np.asarray(m) >= MASK_INSIDE), 1)
        edge = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1))
        rgb[edge[1:-1, 1:-1]] = [int(colour[k:k + 2], 16) for k in (1, 3, 5)]
    return np.ascontiguousarray(rgb)


def _slice_caption(view: dict[str, Any]) -> str:
    """HTML caption of a slice: its position and both image axes' extents, in Å."""
    def extent(c: np.ndarray) -> str:
        return f"{float(c[0]):.1f} … {float(c[-1]):.1f} Å"

    return (f"<div style='font:12px sans-serif;line-height:1.4'><b>{view['axis']} = {view['position_angstrom']:.1f} Å</b>"
            f" (slice {view['index']})<br>{view['columns']} → {extent(view['column_angstrom'])}"
            f"<br>{view['rows']} ↑ {extent(view['row_angstrom'])}</div>")


# ---------------------------------------------------------------------- static fallbacks (no JavaScript)
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)


def _viridis(t: np.ndarray) -> list[str]:
    t = np.clip(np.nan_to_num(t), 0, 1) * (len(_VIRIDIS) - 1)
    i = np.minimum(t.astype(int), len(_VIRIDIS) - 2)
    c = _VIRIDIS[i] + (t - i)[:, None] * (_VIRIDIS[i + 1] - _VIRIDIS[i])
    return [f"rgb({int(r)},{int(g)},{int(b)})" for r, g, b in c]


def _frame(x: np.ndarray, y: np.ndarray, size: int, pad: int) -> tuple[Any, Any]:
    lo = float(min(x.min(initial=0), y.min(initial=0)))
    hi = float(max(x.max(initial=1), y.max(initial=1)))
    span = hi - lo or 1.0
    return (lambda v: pad + (size - 2 * pad) * (v - lo) / span), (lambda v: size - pad - (size - 2 * pad) * (v - lo) / span)


def _scatter_svg(data: dict[str, Any], cmin: float, cmax: float, patches: list[dict[str, Any]] | None, size: int = 300) -> str:
    """x–y projection of a GMM: circles coloured by amplitude, radius by width; patch centres and radii as circles."""
    x, y = np.asarray(data["x"], float), np.asarray(data["y"], float)
    fx, fy = _frame(x, y, size, 12)
    colours = _viridis((np.asarray(data["amplitude"], float) - cmin) / ((cmax - cmin) or 1.0))
    order = np.argsort(data["z"])  # far ones first
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' style='font:10px sans-serif'>",
             f"<rect width='{size}' height='{size}' fill='white' stroke='#ccc'/>"]
    parts += [f"<circle cx='{fx(x[i]):.1f}' cy='{fy(y[i]):.1f}' r='{max(float(data['size'][i]) / 4, 1.0):.1f}' fill='{colours[i]}' "
              f"fill-opacity='0.8'/>" for i in order]
    for i, p in enumerate(patches or []):
        c, colour = p["centre"], _PATCH_COLOURS[i % len(_PATCH_COLOURS)]
        r = abs(fx(c[0] + p["radius_angstrom"]) - fx(c[0]))
        parts.append(f"<circle cx='{fx(c[0]):.1f}' cy='{fy(c[1]):.1f}' r='{r:.1f}' fill='none' stroke='{colour}' stroke-width='1.5'/>"
                     f"<text x='{fx(c[0]):.1f}' y='{fy(c[1]):.1f}' fill='{colour}'>{i}</text>")
    parts.append(f"<text x='4' y='{size - 4}'>x → (Å), y ↑; colour amplitude {cmin:.3g}–{cmax:.3g}</text></svg>")
    return "".join(parts)


def _points_svg(points: dict[str, np.ndarray], marker: tuple[float, float], xlabel: str, ylabel: str, size: int = 300) -> str:
    x, y = points["x"], points["y"]
    fx, fy = _frame(np.append(x, marker[0]), np.append(y, marker[1]), size, 12)
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' style='font:10px sans-serif'>",
             f"<rect width='{size}' height='{size}' fill='white' stroke='#ccc'/>"]
    parts += [f"<circle cx='{fx(a):.1f}' cy='{fy(b):.1f}' r='1.5' fill='#1f77b4' fill-opacity='0.5'/>" for a, b in zip(x, y)]
    mx, my = fx(marker[0]), fy(marker[1])
    parts.append(f"<path d='M{mx - 6:.1f},{my - 6:.1f}L{mx + 6:.1f},{my + 6:.1f}M{mx - 6:.1f},{my + 6:.1f}L{mx + 6:.1f},{my - 6:.1f}' "
                 f"stroke='#d62728' stroke-width='2'/>")
    parts.append(f"<text x='4' y='{size - 4}'>{xlabel} →, {ylabel} ↑</text></svg>")
    return "".join(parts)
