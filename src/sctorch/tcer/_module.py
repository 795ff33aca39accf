"""TCER torch code: ER-Net, the self-supervised masks and the loss (Wei et al. 2024, bbae031).

Torch modules and tensor functions only; they know nothing of AnnData. ER-Net's input
and output are GenoMap images of shape ``(batch, 1, H, W)``; any ``H``, ``W`` are
accepted (the network pads to a multiple of 4 and crops back). The masks
(:func:`mask_nonzero`, :func:`mask_blind_spot`) and the loss (:func:`tcer_loss`) work on
batches of images ``(B, H, W)``.

Architecture (TCER paper §ER-Net, Figure 9):

- encoder: a stride-1 convolution and two stride-2 convolutions
  (``F`` → ``2F`` → ``4F`` channels, ``F = n_features``);
- bottleneck: three cascaded DFA modules (:class:`DFAModule`): conv → ReLU → conv →
  deformable convolution whose offsets a convolution predicts from the same input
  (eq. 11) → channel attention → pixel attention, with a residual connection;
- decoder: two stride-2 transposed convolutions and a stride-1 convolution; each skip
  connection is fused with the decoder feature by concatenation, a 1×1 convolution
  and CBAM (channel then spatial attention, :class:`CBAM`).

Where the paper leaves widths open we double the channels at each stride-2 step.

On the CPU the deformable convolution is torchvision's ``deform_conv2d`` run on
slices of the batch in parallel threads (:class:`BatchParallelDeformConv2d`): its
CPU kernel samples and scatters in a serial loop, so one ``deform_conv2d`` call uses
one core whatever ``torch.get_num_threads()`` says. The values are torchvision's, up
to float rounding (its matrix products are then taken over smaller batches).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d

from ..models._fit import LossOutput
from ._config import OBJECTIVES

__all__ = [
    "CBAM",
    "PLACEHOLDER",
    "BatchParallelDeformConv2d",
    "DFAModule",
    "ERNet",
    "mask_blind_spot",
    "mask_nonzero",
    "pixel_error",
    "poisson_rate",
    "tcer_loss",
]

PLACEHOLDER = -1.0  # δ: below every (non-negative, scaled) expression value

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool_in_child() -> None:
    # a forked child has none of the parent's pool threads: a pool inherited from the
    # parent would queue work that never runs, so the child makes its own on first use
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _in_threads(fn, items: list) -> list:
    """``[fn(item) for item in items]``, run concurrently in a process-wide thread pool."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < len(items):
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="sctorch-dcn")
        pool = _POOL
    return list(pool.map(fn, items))


class _ChunkedDeformConv(torch.autograd.Function):
    """``deform_conv2d`` on ``n`` slices of the batch, forward and backward in threads.

    Each slice's forward is recorded with its own autograd graph (leaf copies of the
    inputs); the backward runs ``torch.autograd.grad`` on every slice in parallel,
    concatenates the input and offset gradients and sums the weight and bias gradients
    in a fixed order, so results do not depend on thread timing.
    """

    @staticmethod
    def forward(ctx, x, offset, weight, bias, n, stride, padding, dilation):
        def run(xo):
            with torch.enable_grad():
                leaves = (
                    xo[0].detach().requires_grad_(),
                    xo[1].detach().requires_grad_(),
                    weight.detach().requires_grad_(),
                    bias.detach().requires_grad_(),
                )
                y = deform_conv2d(*leaves, stride=stride, padding=padding, dilation=dilation)
            return y, leaves

        ctx.parts = _in_threads(run, list(zip(x.chunk(n), offset.chunk(n), strict=True)))
        return torch.cat([y.detach() for y, _ in ctx.parts])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        parts, ctx.parts = ctx.parts, None
        gs = grad.split([y.shape[0] for y, _ in parts])
        grads = _in_threads(
            lambda pg: torch.autograd.grad(pg[0][0], pg[0][1], pg[1]),
            list(zip(parts, gs, strict=True)),
        )
        gw, gb = grads[0][2], grads[0][3]
        for g in grads[1:]:
            gw, gb = gw + g[2], gb + g[3]
        return (
            torch.cat([g[0] for g in grads]),
            torch.cat([g[1] for g in grads]),
            gw,
            gb,
            None,
            None,
            None,
            None,
        )


class BatchParallelDeformConv2d(DeformConv2d):
    """:class:`torchvision.ops.DeformConv2d` that splits a CPU batch over threads.

    Same parameters, state-dict keys and values as ``DeformConv2d`` (no mask / DCNv2
    modulation); ``forward(x, offset)`` takes ``x`` of shape ``(B, C_in, H, W)`` and
    ``offset`` of shape ``(B, 2·k_h·k_w, H_out, W_out)`` and returns
    ``(B, C_out, H_out, W_out)``, on any scale (it is a convolution). On a CPU tensor with
    a batch of at least 2 and more than one torch thread, the batch is cut into
    ``min(torch.get_num_threads(), B)`` slices that run torchvision's ``deform_conv2d``
    concurrently (forward and backward); elsewhere (CUDA, one thread, batch 1, CPU
    autocast) it is plain ``DeformConv2d``. Outputs and gradients equal torchvision's up
    to float rounding (about 1e-7 relative: the matrix products run over smaller batches
    and the weight gradients are summed over slices). Errors are torchvision's (e.g. for
    mismatched shapes). Why: torchvision's CPU kernel samples and scatters in a serial
    loop, the largest part of an ER-Net training step on the CPU (measurements:
    ``benchmarks/results/tcer_speed.md``).
    """

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        n = min(torch.get_num_threads(), x.shape[0])
        if (
            mask is not None
            or x.device.type != "cpu"
            or n < 2
            or self.bias is None
            or torch.is_autocast_enabled("cpu")
        ):  # autocast state is thread-local
            return super().forward(x, offset, mask)
        if torch.is_grad_enabled() and (
            x.requires_grad or offset.requires_grad or self.weight.requires_grad
        ):
            return _ChunkedDeformConv.apply(
                x, offset, self.weight, self.bias, n, self.stride, self.padding, self.dilation
            )

        def run(xo):  # grad mode is thread-local: switch it off in the worker too
            with torch.no_grad():
                return deform_conv2d(
                    *xo,
                    self.weight,
                    self.bias,
                    stride=self.stride,
                    padding=self.padding,
                    dilation=self.dilation,
                )

        return torch.cat(_in_threads(run, list(zip(x.chunk(n), offset.chunk(n), strict=True))))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (FFA-Net style, used in the DFA module)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class PixelAttention(nn.Module):
    """Pixel attention: one weight in (0, 1) per spatial position (FFA-Net style)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class DFAModule(nn.Module):
    """Deformable feature-attention module (TCER eq. 11).

    ``y = x + PA(CA(DeformConv(h, offset(h))))`` with ``h = conv(ReLU(conv(x)))``;
    the offsets (2 per kernel tap) are predicted by a 3×3 convolution of ``h``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, *, deformable: bool = True):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        if deformable:
            self.offset = nn.Conv2d(
                channels, 2 * kernel_size * kernel_size, kernel_size, padding=pad
            )
            nn.init.zeros_(self.offset.weight)  # start as a regular convolution
            nn.init.zeros_(self.offset.bias)
            self.deform = BatchParallelDeformConv2d(channels, channels, kernel_size, padding=pad)
        else:  # the ablation: a plain convolution in place of the deformable one
            self.offset = None
            self.deform = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.ca = ChannelAttention(channels)
        self.pa = PixelAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x)))
        h = self.deform(h) if self.offset is None else self.deform(h, self.offset(h))
        return x + self.pa(self.ca(h))


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al. 2018): channel then spatial attention."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(avg + mx)
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(s))


class SkipFusion(nn.Module):
    """Fuse a skip connection with the upsampled decoder feature: concat → 1×1 conv → CBAM."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(2 * channels, channels, 1)
        self.cbam = CBAM(channels)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.cbam(F.relu(self.reduce(torch.cat([up, skip], dim=1))))


class ERNet(nn.Module):
    """Encoder–DFA–decoder network that maps a masked GenoMap to a recovered GenoMap.

    Parameters
    ----------
    n_features
        Channels after the first convolution (``F``; the paper uses 64). The two
        stride-2 stages have ``2F`` and ``4F`` channels.
    n_dfa
        Number of cascaded DFA modules in the bottleneck (3 in the paper).
    in_channels
        Input channels: 1 (the paper: the cell's GenoMap) or 2 (sctorch's default adds
        the GenoMap of the mean of the cell's nearest neighbours, the cross-cell context;
        how the output relates to it is the loss's business, :func:`poisson_rate`).
    deformable
        ``False`` replaces the deformable convolution of every DFA module by a plain
        3×3 convolution (an ablation).

    Notes
    -----
    Input ``(B, in_channels, H, W)`` → output ``(B, 1, H, W)`` for any ``H``, ``W``: the
    input is zero-padded on the bottom/right to multiples of 4 and the output cropped back.
    """

    def __init__(
        self, n_features: int = 64, n_dfa: int = 3, in_channels: int = 1, deformable: bool = True
    ):
        super().__init__()
        f = n_features
        self.n_features = n_features
        self.n_dfa = n_dfa
        self.in_channels = in_channels
        self.enc1 = nn.Sequential(nn.Conv2d(in_channels, f, 3, padding=1), nn.ReLU(inplace=True))
        self.enc2 = nn.Sequential(
            nn.Conv2d(f, 2 * f, 3, stride=2, padding=1), nn.ReLU(inplace=True)
        )
        self.enc3 = nn.Sequential(
            nn.Conv2d(2 * f, 4 * f, 3, stride=2, padding=1), nn.ReLU(inplace=True)
        )
        self.dfa = nn.Sequential(*[DFAModule(4 * f, deformable=deformable) for _ in range(n_dfa)])
        self.up1 = nn.ConvTranspose2d(4 * f, 2 * f, 4, stride=2, padding=1)
        self.fuse1 = SkipFusion(2 * f)
        self.up2 = nn.ConvTranspose2d(2 * f, f, 4, stride=2, padding=1)
        self.fuse2 = SkipFusion(f)
        self.out = nn.Conv2d(f, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ERNet expects input of shape (batch, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}."
            )
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        z = self.dfa(self.enc3(e2))
        d2 = self.fuse1(F.relu(self.up1(z)), e2)
        d1 = self.fuse2(F.relu(self.up2(d2)), e1)
        return self.out(d1)[..., :h, :w]


# ---------------------------------------------------------------------- masks and loss
def mask_nonzero(x, ratio_low: float, ratio_high: float, gene_px, generator):
    """Self-supervised masking of a batch of GenoMaps (TCER eqs. 12–13).

    For each image a dropout ratio ``r ~ U[ratio_low, ratio_high]`` is drawn and
    ``round(r × n_nonzero)`` of its non-zero gene pixels are chosen at random. The input
    has the placeholder δ on those pixels *and* on every zero gene pixel (eq. 13: a zero
    is unknown — a dropout or a true zero); pixels with no gene (padding, unused grid
    cells) are never masked and stay 0.

    Parameters
    ----------
    x
        Tensor ``(B, H, W)`` of scaled log-normalised images (≥ 0).
    ratio_low, ratio_high
        Range of the per-image dropout ratio.
    gene_px
        Bool tensor ``(H, W)``: pixels that hold a gene.
    generator
        ``torch.Generator`` for reproducible masks.

    Returns
    -------
    ``(inputs, masked)``: the masked input ``(B, H, W)`` and the bool tensor of the
    non-zero pixels that were hidden.
    """
    B = x.shape[0]
    nonzero = (x > 0) & gene_px
    r = ratio_low + (ratio_high - ratio_low) * torch.rand(B, generator=generator, device=x.device)
    k = torch.round(r * nonzero.flatten(1).sum(1)).long()  # (B,)
    scores = torch.rand(x.shape, generator=generator, device=x.device)
    scores = torch.where(nonzero, scores, torch.full_like(scores, 2.0)).flatten(1)
    rank = scores.argsort(dim=1).argsort(dim=1)
    masked = (rank < k[:, None]).reshape(x.shape) & nonzero
    hidden = masked | (gene_px & ~nonzero)
    inputs = torch.where(hidden, torch.full_like(x, PLACEHOLDER), x)
    return inputs, masked


def mask_blind_spot(x, ratio_low: float, ratio_high: float, gene_px, generator):
    """Blind-spot masking: hide a random fraction ``r`` of *all* gene pixels, zero or not.

    The alternative objective of :func:`sctorch.tl.tcer_impute` (``objective="blind_spot"``): the
    hidden pixels (placeholder δ in the input) are the training targets with their
    observed values, zeros included, so the network learns the conditional expectation
    of each pixel given the rest of the GenoMap (Noise2Self, Batson & Royer 2019).

    Returns
    -------
    ``(inputs, hidden)`` as for :func:`mask_nonzero`.
    """
    B = x.shape[0]
    r = ratio_low + (ratio_high - ratio_low) * torch.rand(B, generator=generator, device=x.device)
    u = torch.rand(x.shape, generator=generator, device=x.device)
    hidden = (u < r[:, None, None]) & gene_px
    inputs = torch.where(hidden, torch.full_like(x, PLACEHOLDER), x)
    return inputs, hidden


def tcer_loss(pred, target, known, fft_weight: float, *, squared: bool = False):
    """L1 in the spatial domain plus ``fft_weight`` × L1 between 2-D FFTs (TCER eqs. 14–16).

    Both terms compare the prediction with the observed values on the ``known`` pixels
    (``objective="dropout"``: the non-zero gene pixels of the observed GenoMap, masked or
    not, since observed zeros may be dropouts; ``"blind_spot"``: the hidden pixels).
    ``squared=True`` uses the squared error in the spatial term.
    """
    known_f = known.to(pred.dtype)
    n = known_f.sum().clamp_min(1.0)
    err = (pred - target) ** 2 if squared else torch.abs(pred - target)
    spatial = (err * known_f).sum() / n
    if fft_weight <= 0:
        return spatial
    fp = torch.fft.rfft2(pred * known_f)
    ft = torch.fft.rfft2(target * known_f)
    freq = torch.abs(fp - ft).mean()
    return spatial + fft_weight * freq


#: pseudo-rate added to the context before its log: the network's output is a log-ratio
#: to (context + RATE_FLOOR), so a gene no neighbour expresses can still be predicted
RATE_FLOOR = 0.01


def poisson_rate(out, inputs, scale: float):
    """Rates (counts per ``target_sum``) predicted by ER-Net for ``objective="poisson"``.

    ``out`` is ER-Net's output ``(B, H, W)``, read as a log-ratio clamped to ±10; with a
    context channel (``inputs`` ``(B, 2, H, W)``, scaled ``log1p`` of the neighbours'
    mean rate) the rate is ``(context + RATE_FLOOR) · exp(out)``: a residual on the
    context, equal to it for ``out = 0``. Without one it is ``RATE_FLOOR · exp(out)``.
    ``scale`` maps the scaled images back to ``log1p`` rates.
    """
    base = torch.full_like(out, RATE_FLOOR)
    if inputs.shape[1] > 1:
        base = base + torch.expm1(inputs[:, 1] * scale)
    return base * torch.exp(out.clamp(-10.0, 10.0))


def pixel_error(objective: str, out, x, inputs, scale: float):
    """Per-pixel training error ``(B, H, W)`` of ER-Net's output ``out`` against ``x``.

    ``x`` holds the cells' own scaled images. ``"dropout"``: absolute error (TCER eq. 14);
    ``"blind_spot"``: squared error; ``"poisson"``: the Poisson deviance-type loss
    ``μ − r·log μ`` of the predicted rate μ (:func:`poisson_rate`) against the observed
    rate ``r`` (minimised by ``μ = E[r]``, the expected rate whatever the depth);
    ``"sqrt"``: ``(√μ − √r)²`` (minimised by ``μ = (E√r)²``).
    """
    kind = OBJECTIVES[objective]
    if kind["poisson"]:
        mu = poisson_rate(out, inputs, scale)
        r = torch.expm1(x * scale)
        if kind["squared"]:  # "sqrt": the squared error of the root rates
            return (torch.sqrt(mu) - torch.sqrt(r.clamp_min(0.0))) ** 2
        return mu - r * torch.log(mu)
    return (out - x) ** 2 if kind["squared"] else torch.abs(out - x)


def training_loss(module, batch, *, objective: str, fft_weight: float, scale: float) -> LossOutput:
    """The training loss of ER-Net on one masked batch, for each objective (one place).

    ``batch`` is ``(x, inputs, known)`` from :class:`sctorch.tcer._data.MaskedBatches`:
    the cells' own scaled images ``(B, H, W)``, the network input ``(B, C, H, W)`` and the
    pixels scored. ``"poisson"``: the mean :func:`pixel_error` over the scored pixels;
    ``"dropout"`` and ``"blind_spot"``: :func:`tcer_loss` (TCER eqs. 14–16; squared spatial
    error for ``"blind_spot"``).
    """
    x, inputs, known = batch
    pred = module(inputs).squeeze(1)
    kind = OBJECTIVES[objective]
    if kind["poisson"]:
        err = pixel_error(objective, pred, x, inputs, scale)
        return LossOutput((err * known).sum() / known.sum().clamp_min(1))
    return LossOutput(tcer_loss(pred, x, known, fft_weight, squared=kind["squared"]))


def predicted_image(module, inputs, *, objective: str, scale: float):
    """ER-Net's prediction for ``inputs`` as a scaled ``log1p`` image ``(B, H, W)``.

    ``"poisson"``: the predicted rate (:func:`poisson_rate`) on the images' scale; the other
    objectives: the output, clamped at 0.
    """
    out = module(inputs).squeeze(1)
    if OBJECTIVES[objective]["poisson"]:
        return torch.log1p(poisson_rate(out, inputs, scale)) / scale
    return out.clamp_min(0.0)
