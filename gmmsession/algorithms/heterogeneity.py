"""Heterogeneity analysis: per-half encoder/decoder networks over a GMM (paper: "Heterogeneity
analysis"; its reference design: a hierarchical GMM driven by 32 anchor Gaussians).

For each half set separately (two models that never see the other half's particles):

* **Feature** of a particle (the encoder's input): the gradient of the band score between the
  particle image and the GMM's projection at the particle's pose, with respect to the
  displacements of the decoder's anchor points at the neutral GMM, i.e. ``W^T dS/dc`` with
  ``dS/dc`` the gradient with respect to the Gaussian centres and ``W`` the decoder's
  anchor weights (:func:`particle_features`). It lives in the map frame, so it does not depend
  on the pose, and it says which way each anchor should move to match the particle. Pooling
  the ``(G, 3)`` gradient onto ``A`` anchors gives the encoder ``3 A`` inputs instead of
  ``3 G`` at the same measured quality (simulator's hinge, SNR 0.1, 500 particles per half:
  PC1 against the true hinge angle, Spearman 0.80 / 0.73 per half pooled, 0.79 / 0.74 from
  the ``(G, 3)`` gradient); with a focus mask the weights are zero outside it, so the feature
  only sees the masked region (0.90 / 0.90 on the same data with the moving domain's mask).
  Each particle's feature is scaled to unit RMS (the score's scale varies with defocus and
  noise; the direction carries the conformation).
* **Encoder** (:class:`GmmEncoder`): an MLP from the ``(A, 3)`` feature to a latent vector.
* **Decoder** (:class:`AnchorDecoder`): an MLP from the latent vector to displacements of
  ``A`` anchor points (default 32, K-means of the GMM's centres); every Gaussian moves by a
  fixed, smooth combination of the anchor displacements (Gaussian weights of its distance to
  the anchors, normalised). Amplitudes and widths stay those of the neutral GMM. An optional
  mobility per Gaussian in [0, 1] (a focus mask sampled at the centres) scales the movement,
  so only Gaussians inside the mask move.
* **Neutral at zero**: the decoder outputs ``f(z) - f(0)``, so the zero latent vector gives the
  neutral (consensus) GMM by construction (up to float rounding). The issue asks for a decoder *pre-trained*
  to do this; building it in is exact and costs nothing, so there is no pre-training stage.
* **Loss** per particle: ``-score(projection of the decoded GMM at the particle's pose, image)
  + latent_weight * |z|^2`` with the alignment's score (CTF-exact projection, pooled band
  correlation; :mod:`gmmsession.algorithms.align`). Poses are fixed.

* **Checkpoints**: :func:`train_half` reports its state after every epoch (``on_epoch``) and
  resumes from such a state (``resume``); training draws no random numbers, so a resumed run
  equals an uninterrupted one.
* **Conformation -> pose**: :func:`conformation_poses` (exact weighted 3D superposition of
  the masked region), then :func:`refine_conformation_poses` (the paper's Adam steps on the
  projected RMSD, started there).

Every step is chunked over particles (:func:`train_half` takes a function that yields batches),
so a later multi-GPU runner can split particles the same way as alignment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gmmsession.data.bridge import ParticleTensors
from gmmsession.data.gmm import GmmTensors
from gmmsession.algorithms.align import ScoringGrid, pixel_size_groups, prepare_batch, scoring_grid
from gmmsession.kernels.conventions import image_shift_angstrom_from_origin, origin_angstrom_from_image_shift
from gmmsession.kernels.gmm import project_gaussians_rfft_2d
from gmmsession.kernels.masks import MASK_INSIDE
from gmmsession.kernels.rotations import geodesic_angle_deg, kabsch_superposition, rotvec_to_matrix

__all__ = [
    "HeterogeneityConfig",
    "GmmEncoder",
    "AnchorDecoder",
    "anchor_points",
    "build_networks",
    "network_state",
    "networks_from_state",
    "scoring_setup",
    "prepare_batch",
    "particle_features",
    "train_half",
    "training_state",
    "encode_half",
    "latent_pca",
    "mobility_from_mask",
    "conformation_poses",
    "mean_conformation",
    "refine_conformation_poses",
    "projected_rmsd_angstrom",
]


@dataclass(frozen=True)
class HeterogeneityConfig:
    """Settings of the heterogeneity networks and their training.

    Attributes
    ----------
    latent_dim : size of the latent vector.
    n_anchors : anchor points driving the decoder's movement (paper's reference: 32).
    anchor_width_angstrom : width of the anchors' influence; None: the median distance from an
        anchor to its nearest other anchor.
    hidden : width of the hidden layers of both MLPs.
    n_epochs : passes over the half set's particles.
    batch_size : particles per optimisation step.
    learning_rate : Adam learning rate of both networks.
    latent_weight : weight of ``|z|^2`` in the loss (keeps the latent space centred and bounded).
    max_resolution_angstrom : finest resolution scored (Å); None: the session's current resolution.
    min_resolution_angstrom : coarsest resolution scored (Å).
    seed : network initialisation and batch order.
    """

    latent_dim: int = 4
    n_anchors: int = 32
    anchor_width_angstrom: float | None = None
    hidden: int = 256
    n_epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    latent_weight: float = 1e-2
    max_resolution_angstrom: float | None = None
    min_resolution_angstrom: float | None = 40.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latent_dim < 1 or self.n_anchors < 1 or self.hidden < 1:
            raise ValueError(f"need latent_dim, n_anchors, hidden >= 1, got {self.latent_dim}, {self.n_anchors}, {self.hidden}")
        if self.n_epochs < 0 or self.batch_size < 1 or not self.learning_rate > 0 or self.latent_weight < 0:
            raise ValueError(
                f"need n_epochs >= 0, batch_size >= 1, learning_rate > 0, latent_weight >= 0; got "
                f"{self.n_epochs}, {self.batch_size}, {self.learning_rate}, {self.latent_weight}"
            )


# ----------------------------------------------------------------------------- networks


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class GmmEncoder(nn.Module):
    """Feature ``(n, A, 3)`` -> latent ``(n, latent_dim)`` (an MLP on the flattened feature)."""

    def __init__(self, n_anchors: int, latent_dim: int, hidden: int = 256):
        super().__init__()
        self.n_anchors = int(n_anchors)
        self.latent_dim = int(latent_dim)
        self.net = _mlp(3 * self.n_anchors, hidden, latent_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[1:] != (self.n_anchors, 3):
            raise ValueError(f"features must have shape (n, {self.n_anchors}, 3), got {tuple(features.shape)}")
        return self.net(features.reshape(features.shape[0], -1))


def anchor_points(positions_angstrom: torch.Tensor, amplitudes: torch.Tensor, n_anchors: int, seed: int = 0) -> torch.Tensor:
    """``(A, 3)`` anchor points: amplitude-weighted K-means of the Gaussian centres (A <= G)."""
    from sklearn.cluster import KMeans  # imported here: scikit-learn takes ~1 s to import

    pts = positions_angstrom.detach().cpu().double().numpy()
    w = amplitudes.detach().cpu().double().clamp_min(0).numpy()
    k = min(int(n_anchors), pts.shape[0])
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(pts, sample_weight=w if w.sum() > 0 else None)
    return torch.as_tensor(km.cluster_centers_, dtype=positions_angstrom.dtype)


class AnchorDecoder(nn.Module):
    """Latent ``(n, latent_dim)`` -> Gaussian centres ``(n, G, 3)`` of the GMM at that point.

    ``centres = neutral + W @ (D(z) - D(0))`` with ``D`` an MLP giving ``(A, 3)`` anchor
    displacements (Å) and ``W`` (G, A) fixed weights: Gaussian weights of the distance from each
    centre to each anchor (width ``anchor_width``), normalised over the anchors, times the
    Gaussian's mobility (1 everywhere, or a focus mask at the centres).
    """

    def __init__(
        self,
        neutral_positions_angstrom: torch.Tensor,
        anchors_angstrom: torch.Tensor,
        latent_dim: int,
        hidden: int = 256,
        anchor_width_angstrom: float | None = None,
        mobility: torch.Tensor | None = None,
    ):
        super().__init__()
        pos = neutral_positions_angstrom.detach().float()
        anchors = anchors_angstrom.detach().float().to(pos.device)
        if pos.ndim != 2 or pos.shape[1] != 3 or anchors.ndim != 2 or anchors.shape[1] != 3:
            raise ValueError(f"need neutral positions (G, 3) and anchors (A, 3), got {tuple(pos.shape)}, {tuple(anchors.shape)}")
        if anchor_width_angstrom is None:
            d = torch.cdist(anchors, anchors) + torch.diag(torch.full((anchors.shape[0],), math.inf, device=pos.device))
            anchor_width_angstrom = float(d.min(1).values.median()) if anchors.shape[0] > 1 else 10.0
        if not anchor_width_angstrom > 0:
            raise ValueError(f"anchor_width_angstrom must be > 0, got {anchor_width_angstrom}")
        logits = -torch.cdist(pos, anchors).square() / (2 * anchor_width_angstrom**2)
        weights = torch.softmax(logits, dim=1)
        if mobility is not None:
            if mobility.shape != pos.shape[:1]:
                raise ValueError(f"mobility must have shape ({pos.shape[0]},), got {tuple(mobility.shape)}")
            weights = weights * mobility.detach().float().to(pos.device).clamp(0, 1)[:, None]
        self.register_buffer("neutral", pos)
        self.register_buffer("anchors", anchors)
        self.register_buffer("weights", weights)
        self.anchor_width_angstrom = float(anchor_width_angstrom)
        self.latent_dim = int(latent_dim)
        self.n_anchors = int(anchors.shape[0])
        self.net = _mlp(self.latent_dim, hidden, 3 * self.n_anchors)

    def anchor_displacements(self, latent: torch.Tensor) -> torch.Tensor:
        """(n, A, 3) displacements of the anchors (Å), zero at ``latent = 0``."""
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"latent must have shape (n, {self.latent_dim}), got {tuple(latent.shape)}")
        zero = self.net(torch.zeros(1, self.latent_dim, device=latent.device, dtype=latent.dtype))
        return (self.net(latent) - zero).reshape(latent.shape[0], self.n_anchors, 3)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.neutral + self.weights @ self.anchor_displacements(latent)


def mobility_from_mask(values: torch.Tensor) -> torch.Tensor:
    """Mobility of each Gaussian from the mask's value at its centre: 1 inside (value >=
    :data:`~gmmsession.kernels.masks.MASK_INSIDE`, as everywhere in gmmsession), else 0.

    Binary on purpose: a soft mask's edge (the particle's surface, the interface to the rest)
    would otherwise move its Gaussians by only a fraction of the domain's motion, and the rigid
    superposition of :meth:`gmmsession.Session.conf_to_pose`, over the same Gaussians, would
    read a smaller rotation than the domain makes (5 % smaller with the simulator's soft domain
    mask and an exact decoder).
    """
    return (values >= MASK_INSIDE).to(values.dtype)


def build_networks(
    gmm: GmmTensors, config: HeterogeneityConfig, mobility: torch.Tensor | None = None
) -> tuple[GmmEncoder, AnchorDecoder]:
    """A fresh encoder and decoder for one half's GMM (seeded by ``config.seed``).

    With ``mobility`` (G,) in [0, 1] (a focus mask at the centres) the anchors are K-means of
    the Gaussians with mobility >= ``MASK_INSIDE`` (so all anchors sit where things move) and the decoder
    moves each Gaussian in proportion to its mobility. Measured on the simulator's hinge (SNR
    0.1, box 48, 500 particles per half): PC1 against the true hinge angle, Spearman 0.90 in
    both halves with the moving domain's mask, 0.75-0.80 without a mask.
    """
    pos, amp = gmm.positions_angstrom, gmm.amplitudes
    if mobility is not None:
        keep = mobility.detach().cpu() >= MASK_INSIDE
        if int(keep.sum()) == 0:
            raise ValueError(f"the mobility mask covers no Gaussian (no centre has mobility >= {MASK_INSIDE})")
        pos, amp = pos[keep.to(pos.device)], amp[keep.to(pos.device)]
    anchors = anchor_points(pos, amp, config.n_anchors, seed=config.seed)
    torch.manual_seed(config.seed)
    decoder = AnchorDecoder(
        gmm.positions_angstrom, anchors, config.latent_dim, config.hidden, config.anchor_width_angstrom, mobility
    )
    encoder = GmmEncoder(decoder.n_anchors, config.latent_dim, config.hidden)
    return encoder, decoder


def network_state(encoder: GmmEncoder, decoder: AnchorDecoder) -> dict[str, Any]:
    """Everything needed to rebuild a trained pair with :func:`networks_from_state`: both
    state_dicts (the decoder's holds the neutral centres, anchors and mobility-weighted
    anchor weights as buffers), the sizes and the anchor width. Tensors, numbers and dicts
    only, so ``torch.load(..., weights_only=True)`` reads it back."""
    return {
        "latent_dim": decoder.latent_dim,
        "n_anchors": decoder.n_anchors,
        "hidden": int(decoder.net[0].out_features),
        "anchor_width_angstrom": decoder.anchor_width_angstrom,
        "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "decoder": {k: v.detach().cpu() for k, v in decoder.state_dict().items()},
    }


def networks_from_state(state: Mapping[str, Any]) -> tuple[GmmEncoder, AnchorDecoder]:
    """Rebuild the encoder and decoder that :func:`network_state` described (on the CPU, eval mode)."""
    dec_sd = state["decoder"]
    decoder = AnchorDecoder(dec_sd["neutral"], dec_sd["anchors"], int(state["latent_dim"]), int(state["hidden"]),
                            float(state["anchor_width_angstrom"]))
    decoder.load_state_dict(dec_sd)  # the weights buffer carries the mobility the decoder was trained with
    encoder = GmmEncoder(int(state["n_anchors"]), int(state["latent_dim"]), int(state["hidden"]))
    encoder.load_state_dict(state["encoder"])
    return encoder.eval(), decoder.eval()


# ----------------------------------------------------------------------------- scoring


def scoring_setup(
    box: int, pixel_size_angstrom: float, config: HeterogeneityConfig, device: torch.device, resolution_angstrom: float | None = None
) -> ScoringGrid:
    """The alignment's scoring grid (CTF-exact, pooled) up to ``config.max_resolution_angstrom``
    or else ``resolution_angstrom`` (:func:`~gmmsession.algorithms.align.scoring_grid`)."""
    res = config.max_resolution_angstrom or resolution_angstrom
    return scoring_grid(box, pixel_size_angstrom, config.min_resolution_angstrom, res, "pooled", device)


#: One scoring grid, or one per pixel size (optics groups of one box may differ in pixel size).
Setups = ScoringGrid | Mapping[float, ScoringGrid]


def _first_grid(setups: Setups) -> ScoringGrid:
    return setups if isinstance(setups, ScoringGrid) else next(iter(setups.values()))


def _pixel_groups(params: ParticleTensors, setups: Setups) -> list[tuple[torch.Tensor | None, ScoringGrid]]:
    """``(index or None for all, grid)`` per pixel size in a batch: each particle is scored on
    its own pixel grid (as :func:`~gmmsession.algorithms.align.refine_poses_per_pixel_size`)."""
    if isinstance(setups, ScoringGrid):
        return [(None, setups)]
    out = []
    for value, sel in pixel_size_groups(params.pixel_size_angstrom):
        match = [g for px, g in setups.items() if abs(px - value) <= 1e-4 * px]
        if not match:
            raise ValueError(f"no scoring grid for pixel size {value:g} Å (grids for {sorted(setups)})")
        out.append((sel, match[0]))
    return out


def _batch_scores(positions: torch.Tensor, gmm: GmmTensors, batch: tuple[torch.Tensor, ...], setup: ScoringGrid) -> torch.Tensor:
    spectra, ctf, rot, shift = batch
    proj = project_gaussians_rfft_2d(
        positions, gmm.amplitudes, gmm.widths_angstrom, rot, shift, setup.box, setup.pixel_size_angstrom, setup.max_frequency
    )
    return setup.score(proj * ctf, spectra)


def particle_features(gmm: GmmTensors, weights: torch.Tensor, batch: tuple[torch.Tensor, ...], setup: ScoringGrid) -> torch.Tensor:
    """(n, A, 3): gradient of each particle's score with respect to the anchor displacements, unit RMS.

    ``gmm`` and ``weights`` (G, A) (the decoder's :attr:`AnchorDecoder.weights`) on the setup's
    device; ``batch`` from :func:`prepare_batch`.
    """
    n = batch[0].shape[0]
    with torch.enable_grad():
        pos = gmm.positions_angstrom.detach().expand(n, -1, -1).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_batch_scores(pos, gmm, batch, setup).sum(), pos)
    pooled = weights.transpose(0, 1) @ grad  # (n, A, 3)
    rms = pooled.square().mean(dim=(1, 2), keepdim=True).sqrt()
    return pooled / rms.clamp_min(1e-30)


# ----------------------------------------------------------------------------- training


def train_half(
    batches: Callable[[int], Iterable[tuple[torch.Tensor, ParticleTensors]]],
    gmm: GmmTensors,
    encoder: GmmEncoder,
    decoder: AnchorDecoder,
    setup: Setups,
    config: HeterogeneityConfig,
    progress: Callable[[int, float], None] | None = None,
    *,
    resume: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[float]:
    """Train one half set's encoder and decoder (in place); returns the mean loss per epoch.

    ``batches(epoch)`` yields ``(images (n, box, box), params)`` of this half's particles only
    (shuffled as the caller likes); ``progress(epoch, mean_loss)`` after each epoch.

    Checkpointing: ``on_epoch(state)`` is called after every finished epoch (before
    ``progress``) with the training state (:func:`training_state`: epochs done, losses so far,
    the networks' and the optimiser's state_dicts, which reference the live tensors: write or
    copy them during the call). Given such a state as ``resume``, the networks and the
    optimiser are restored and training continues at epoch ``resume["epoch"]`` up to
    ``config.n_epochs`` (a state already at or past ``n_epochs`` trains no further). Training
    draws no random numbers (the batch order is the caller's, seeded per epoch; initialisation
    is :func:`build_networks`'), so a resumed run repeats the uninterrupted one's operations.

    ``setup``: the scoring grid, or ``{pixel size: grid}`` when the particles' optics groups
    differ in pixel size; each particle is then scored on its own grid and a batch's loss is
    the mean over all its particles.
    """
    gmm = gmm.to(_first_grid(setup).device, torch.float32)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=config.learning_rate)
    losses: list[float] = []
    start = 0
    if resume is not None:
        encoder.load_state_dict(resume["encoder"])
        decoder.load_state_dict(resume["decoder"])
        opt.load_state_dict(resume["optimizer"])
        for group in opt.param_groups:  # the current config's rate, not the checkpoint's
            group["lr"] = config.learning_rate
        losses, start = [float(v) for v in resume["losses"]], int(resume["epoch"])
    for epoch in range(start, config.n_epochs):
        total, count = 0.0, 0
        for images, p in batches(epoch):
            loss = torch.zeros((), device=gmm.positions_angstrom.device)
            for sel, grid in _pixel_groups(p, setup):
                batch = prepare_batch(images if sel is None else images[sel], p if sel is None else p.select(sel), grid)
                features = particle_features(gmm, decoder.weights, batch, grid)
                latent = encoder(features)
                scores = _batch_scores(decoder(latent), gmm, batch, grid)
                loss = loss + (-scores + config.latent_weight * latent.square().sum(-1)).sum()
            loss = loss / images.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * images.shape[0]
            count += images.shape[0]
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(training_state(encoder, decoder, opt, epoch + 1, losses))
        if progress is not None:
            progress(epoch + 1, losses[-1])
    return losses


def training_state(
    encoder: GmmEncoder, decoder: AnchorDecoder, optimizer: torch.optim.Optimizer, epoch: int, losses: list[float]
) -> dict[str, Any]:
    """The state :func:`train_half` resumes from: ``{"epoch", "losses", "encoder", "decoder", "optimizer"}``
    (epochs done, mean loss per epoch, state_dicts)."""
    return {
        "epoch": int(epoch),
        "losses": [float(v) for v in losses],
        "encoder": encoder.state_dict(),
        "decoder": decoder.state_dict(),
        "optimizer": optimizer.state_dict(),
    }


@torch.no_grad()
def encode_half(
    batches: Iterable[tuple[torch.Tensor, ParticleTensors]],
    gmm: GmmTensors,
    encoder: GmmEncoder,
    decoder: AnchorDecoder,
    setup: Setups,
) -> torch.Tensor:
    """(n, latent_dim) latent vectors of the particles ``batches`` yields, in that order (CPU);
    ``setup`` as for :func:`train_half`."""
    gmm = gmm.to(_first_grid(setup).device, torch.float32)
    out = []
    for images, p in batches:
        z = torch.empty(images.shape[0], encoder.latent_dim)
        for sel, grid in _pixel_groups(p, setup):
            batch = prepare_batch(images if sel is None else images[sel], p if sel is None else p.select(sel), grid)
            z[slice(None) if sel is None else sel] = encoder(particle_features(gmm, decoder.weights, batch, grid)).cpu()
        out.append(z)
    return torch.cat(out) if out else torch.zeros(0, encoder.latent_dim)


def latent_pca(latent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of latent vectors: (mean (d,), components (d, d) rows = directions, explained variance (d,))."""
    z = np.asarray(latent, dtype=np.float64)
    mean = z.mean(0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    return mean, vt, s**2 / max(len(z) - 1, 1)


def mean_conformation(
    neutral_angstrom: torch.Tensor, conformations: Iterable[torch.Tensor], weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked region at its mean rigid placement over a half's particles.

    Each conformation's masked region is rigidly superposed onto the neutral one (weighted
    Kabsch: ``conf_i ~= R_i neutral + t_i``); the mean motion is the chordal mean of the ``R_i``
    (their average projected onto SO(3)) and the mean of the ``t_i``. Returns
    ``(R_mean neutral + t_mean, angle of R_mean in degrees)``.

    Why: the neutral GMM is fitted to the consensus map, which averages the conformations, so
    it should sit at their mean; a decoder trained on one half set can still carry a small bias,
    and poses converted against the neutral region would then carry that bias as one rotation
    of the half's domain frame (measured on the simulator's hinge: 2.6 degrees between the two
    halves). Converting against the half's own mean placement keeps both halves' domain frames
    on their common mean, each from its own data only.

    Parameters
    ----------
    neutral_angstrom : (G, 3); conformations : iterable of (n_b, G, 3) batches; weights : (G,).
    """
    dtype = torch.float64
    neutral = neutral_angstrom.to(dtype)
    w = weights.to(neutral.device, dtype)
    r_sum = torch.zeros(3, 3, dtype=dtype, device=neutral.device)
    t_sum = torch.zeros(3, dtype=dtype, device=neutral.device)
    n = 0
    for conf in conformations:
        r, t = kabsch_superposition(neutral.expand(conf.shape[0], -1, -1), conf.to(dtype), w)
        r_sum, t_sum, n = r_sum + r.sum(0), t_sum + t.sum(0), n + conf.shape[0]
    if n == 0:
        raise ValueError("mean_conformation needs at least one conformation")
    u, _, vt = torch.linalg.svd(r_sum / n)
    d = torch.sign(torch.det(u @ vt))
    r_mean = u @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ vt
    angle = geodesic_angle_deg(r_mean, torch.eye(3, dtype=dtype, device=neutral.device))
    return (neutral @ r_mean.T + t_sum / n).to(neutral_angstrom.dtype), angle


def conformation_poses(
    rotation: torch.Tensor,
    origin_angstrom: torch.Tensor,
    neutral_angstrom: torch.Tensor,
    conformation_angstrom: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conformation -> pose by rigid superposition (paper: "Conformation to pose conversion";
    the issue's Kabsch initialisation).

    For each particle, ``R, t`` superpose the neutral centres onto the particle's conformational
    centres, weighted by the mask (``conf ~= R neutral + t`` over the masked Gaussians). The
    particle shows the conformational GMM at pose ``A`` with in-plane shift ``s = -origin``, so
    the masked region appears as the *neutral* one seen at ``A' = A R`` shifted by
    ``s + (A t)_xy``: the new origin is ``origin - (A t)_xy``.

    Parameters
    ----------
    rotation : (n, 3, 3) RELION matrices; origin_angstrom : (n, 2).
    neutral_angstrom : (G, 3); conformation_angstrom : (n, G, 3); weights : (G,) mask at the centres.

    Returns
    -------
    (new rotations (n, 3, 3), new origins (n, 2), superposition angles (n,) in degrees).
    """
    n = rotation.shape[0]
    if conformation_angstrom.shape != (n, *neutral_angstrom.shape):
        raise ValueError(
            f"conformation_angstrom must have shape ({n}, {neutral_angstrom.shape[0]}, 3), got {tuple(conformation_angstrom.shape)}"
        )
    dtype = torch.float64
    r, t = kabsch_superposition(
        neutral_angstrom.to(dtype).expand(n, -1, -1), conformation_angstrom.to(dtype), weights.to(dtype)
    )
    a = rotation.to(dtype)
    new_rotation = a @ r
    shift = image_shift_angstrom_from_origin(origin_angstrom.to(dtype)) + (a @ t[..., None])[..., :2, 0]
    angle = geodesic_angle_deg(r, torch.eye(3, dtype=dtype, device=r.device).expand_as(r))
    return new_rotation.to(rotation.dtype), origin_angstrom_from_image_shift(shift).to(origin_angstrom.dtype), angle.to(rotation.dtype)


def projected_rmsd_angstrom(
    rotation_new: torch.Tensor,
    shift_new_angstrom: torch.Tensor,
    target_xy_angstrom: torch.Tensor,
    neutral_angstrom: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """(n,) weighted RMS distance (Å) between the neutral centres projected at ``rotation_new``
    (n, 3, 3) shifted by ``shift_new_angstrom`` (n, 2) and ``target_xy_angstrom`` (n, G, 2),
    weights (G,) (normalised here)."""
    seen = (neutral_angstrom @ rotation_new.transpose(-1, -2))[..., :2] + shift_new_angstrom[:, None, :]
    w = weights / weights.sum()
    return ((seen - target_xy_angstrom).square().sum(-1) * w).sum(-1).clamp_min(0).sqrt()


def refine_conformation_poses(
    rotation_old: torch.Tensor,
    origin_old_angstrom: torch.Tensor,
    rotation_init: torch.Tensor,
    origin_init_angstrom: torch.Tensor,
    neutral_angstrom: torch.Tensor,
    conformation_angstrom: torch.Tensor,
    weights: torch.Tensor,
    n_steps: int = 30,
    learning_rate: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's conformation -> pose step: per particle, Adam on the new pose so that the
    masked region's projection matches (paper: 30 steps, learning rate 1e-3), started from
    :func:`conformation_poses` (the exact 3D superposition).

    What is compared: the particle image shows the *conformational* GMM at the old pose; the
    new pose is the one at which the *neutral* GMM's masked region projects to the same place.
    So the RMSD is between ``(A_old c_j)_xy + s_old`` (conformational centres ``c_j`` at the old
    pose) and ``(A_new n_j)_xy + s_new`` (neutral centres ``n_j`` at the new pose), over the
    masked Gaussians weighted by ``weights`` (the caller's mask x mass), with ``s = -origin``
    (:func:`~gmmsession.kernels.conventions.image_shift_angstrom_from_origin`). The paper's
    formula reads ``Project(neutral, old) - Project(conf, new)``; taken literally that solves
    for the inverse motion (``A R^-1`` instead of ``A R``), which contradicts both the 3D
    superposition and its stated purpose (the neutral frame made to fit each particle), so the
    roles are as above. "Projection" here is the projected *centres*, not rendered images: for
    a rigidly moved region with unchanged widths and amplitudes the two have the same
    minimiser, the centres need no grid or box, and the RMSD is in Å. Where the decoded region
    is not rigid, the 2D fit weights the in-plane error only, which is what the image sees;
    that is what the refinement can add to the 3D fit.

    Parameterisation as :mod:`gmmsession.algorithms.align`: ``A_new = rotvec_to_matrix(delta)
    @ A_init`` and ``s_new = s_init + u L``, with ``L`` the weighted RMS radius (Å) of the
    masked neutral centres about the map origin (so a unit of ``u`` moves the region as much as a
    radian of ``delta``; Adam's steps are then comparable in both). Computed in float64: at
    an exact optimum the gradient is rounding noise, far below Adam's ``eps``, so the pose
    stays put; the best pose seen per particle (the start included) is returned, so the RMSD
    never gets worse.

    Parameters
    ----------
    rotation_old : (n, 3, 3) RELION matrices the particles had; origin_old_angstrom : (n, 2).
    rotation_init, origin_init_angstrom : the start (:func:`conformation_poses`), same shapes.
    neutral_angstrom : (G, 3); conformation_angstrom : (n, G, 3); weights : (G,) >= 0, not all 0.
    n_steps, learning_rate : Adam steps and rate (0 steps: the start is returned).

    Returns
    -------
    (rotations (n, 3, 3), origins (n, 2) Å, RMSD at the start (n,) Å, RMSD at the result (n,) Å),
    in the dtypes of ``rotation_old`` / ``origin_old_angstrom``.
    """
    n = rotation_old.shape[0]
    if rotation_old.shape != (n, 3, 3) or rotation_init.shape != (n, 3, 3):
        raise ValueError(f"rotations must have shape (n, 3, 3), got {tuple(rotation_old.shape)} and {tuple(rotation_init.shape)}")
    if origin_old_angstrom.shape != (n, 2) or origin_init_angstrom.shape != (n, 2):
        raise ValueError(f"origins must have shape ({n}, 2), got {tuple(origin_old_angstrom.shape)} and {tuple(origin_init_angstrom.shape)}")
    if conformation_angstrom.shape != (n, *neutral_angstrom.shape) or neutral_angstrom.shape[-1:] != (3,):
        raise ValueError(f"need neutral (G, 3) and conformation ({n}, G, 3), got {tuple(neutral_angstrom.shape)}, {tuple(conformation_angstrom.shape)}")
    if weights.shape != neutral_angstrom.shape[:1] or not float(weights.sum()) > 0:
        raise ValueError(f"weights must have shape ({neutral_angstrom.shape[0]},) and a positive sum, got {tuple(weights.shape)}")
    dtype = torch.float64
    neutral, w = neutral_angstrom.to(dtype), weights.to(dtype).clamp_min(0)
    target = (conformation_angstrom.to(dtype) @ rotation_old.to(dtype).transpose(-1, -2))[..., :2]
    target = target + image_shift_angstrom_from_origin(origin_old_angstrom.to(dtype))[:, None, :]
    rot0 = rotation_init.to(dtype)
    shift0 = image_shift_angstrom_from_origin(origin_init_angstrom.to(dtype))
    length = float(((neutral.square().sum(-1) * w).sum() / w.sum()).sqrt().clamp_min(1.0))

    def msd(theta: torch.Tensor) -> torch.Tensor:
        rot = rotvec_to_matrix(theta[:, :3]) @ rot0
        return projected_rmsd_angstrom(rot, shift0 + theta[:, 3:] * length, target, neutral, w).square()

    theta = torch.zeros(n, 5, dtype=dtype, device=neutral.device, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=learning_rate)
    with torch.no_grad():
        start = best = msd(theta)
    best_theta = theta.detach().clone()
    for _ in range(n_steps):
        with torch.enable_grad():
            opt.zero_grad(set_to_none=True)
            msd(theta).sum().backward()  # per-particle terms: gradients do not mix
        opt.step()
        with torch.no_grad():
            now = msd(theta)
            better = now < best
            best = torch.where(better, now, best)
            best_theta = torch.where(better[:, None], theta.detach(), best_theta)
    rotation = rotvec_to_matrix(best_theta[:, :3]) @ rot0
    origin = origin_angstrom_from_image_shift(shift0 + best_theta[:, 3:] * length)
    return (rotation.to(rotation_old.dtype), origin.to(origin_old_angstrom.dtype),
            start.sqrt().to(rotation_old.dtype), best.sqrt().to(rotation_old.dtype))
