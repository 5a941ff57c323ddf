"""``zhang``: data-driven channel decomposition from output responses (Zhang, Zou, He, Sun,
"Efficient and Accurate Approximations of Nonlinear Convolutional Networks", CVPR 2015;
"Accelerating Very Deep Convolutional Networks for Classification and Detection", TPAMI 2016),
the linear version.

Starts from the trained baseline. For every chosen conv (channel scheme: ``K`` of shape
``(N, C, kh, kw)``) the layer's responses ``y`` (N-dim, one per output pixel, bias included) are
collected on ``calibration`` batches of the training split. ``M`` (N x r) holds the top-r
eigenvectors of their covariance (mean ``y_bar`` removed), and ``y ~ M M^T (y - y_bar) + y_bar``:

- conv ``C -> r`` (kh x kw, the layer's stride/padding/dilation) with weights ``M^T K``;
- conv 1x1 ``r -> N`` with weights ``M`` and bias ``y_bar + M M^T (b - y_bar)``.

The papers put the bias ``M^T (b - y_bar)`` on the first conv; folded into the second conv it
computes the same function, and the layers keep the channel scheme's structure (so MACs are the
``svd`` channel scheme's). A conv without a bias gains one on its 1x1 conv (the mean response).
Ranks come from the responses, as in the papers: the ``rule`` reads each layer's PCA spectrum,
the square roots of the response covariance's eigenvalues, so ``energy:0.9`` keeps the
components holding 90% of the response variance, and ``speedup:S`` keeps the ranks with the
largest product over layers of the kept response energy within the MAC budget (the papers'
criterion; ``lowrank.decompose_model(..., allocation="product")``), matching MACs as for every
method. At full rank the pair reproduces the layer exactly. Optional fine-tuning (``finetune_epochs``).
The asymmetric, non-linear version (reconstructing the next ReLU's input) is not implemented.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from rankbench.methods import lowrank
from rankbench.methods.api.calibration import Collector
from rankbench.methods.svd import DataDriven
from rankbench.methods.api.registry import register


@register("zhang")
class Zhang(DataDriven):
    """Channel decomposition fitted to each conv's output responses on calibration data (Zhang et al. 2015)."""

    scheme = "channel"
    allocation = "product"

    def collector(self, stats: dict[str, Any]) -> Collector:
        def add(name: str, mod: nn.Module, inp: Tensor, out: Tensor) -> None:
            y = out.detach().transpose(1, -1).reshape(-1, out.shape[1]).double()   # (pixels, N)
            s = stats.setdefault(name, {"yy": 0.0, "y": 0.0, "n": 0})
            s["yy"] = s["yy"] + y.T @ y
            s["y"] = s["y"] + y.sum(0)
            s["n"] += y.shape[0]
        return add

    def refit(self, dense: nn.Module, fact: lowrank.Factorized, stats: Any) -> dict[str, float]:
        return fit_channel(dense, fact, stats["yy"] / stats["n"], stats["y"] / stats["n"])

    def rank_spectra(self, model: nn.Module, stats: dict[str, Any]) -> dict[str, Tensor]:
        """Each layer's response PCA spectrum (descending; at most the channel scheme's full rank:
        responses of a conv with fewer inputs than outputs span no more)."""
        out = {}
        for name, st in stats.items():
            mean = st["y"] / st["n"]
            cov = st["yy"] / st["n"] - torch.outer(mean, mean)
            evals = torch.linalg.eigvalsh((cov + cov.T) / 2).flip(-1).clamp_min(0)
            out[name] = evals[: lowrank.full_rank(model.get_submodule(name), self.scheme)].sqrt().cpu()
        return out

    def rebuild(self, model: nn.Module, layers: Sequence[lowrank.LayerReport]) -> nn.Module:
        """The deployed structure: the channel scheme's pairs, each 1x1 conv with a bias."""
        return with_bias(lowrank.build_factorized(model, layers), layers)


def fit_channel(conv: nn.Conv2d, fact: lowrank.Factorized, second_moment: Tensor, mean: Tensor) -> dict[str, float]:
    """Set ``fact`` (the channel scheme's pair for ``conv``) from the responses' moments:
    ``second_moment`` = E[y y^T] (N x N) and ``mean`` = E[y] (N), float64. Returns the share of
    the response variance the kept subspace explains."""
    first, second = fact[0], fact[1]
    r = first.out_channels
    cov = second_moment - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)     # ascending
    m = evecs[:, -r:].flip(-1)                              # (N, r): the top-r eigenvectors
    k = conv.weight.detach().double()
    n = k.shape[0]
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(n, dtype=torch.float64,
                                                                                device=k.device)
    m = m.to(k.device)
    mean = mean.to(k.device)
    bias = mean + m @ (m.T @ (b - mean))
    first.weight.copy_((m.T @ k.reshape(n, -1)).reshape(first.weight.shape).to(first.weight))
    second.weight.copy_(m.reshape(n, r, 1, 1).to(second.weight))
    if second.bias is None:
        second.bias = nn.Parameter(torch.zeros(n, dtype=second.weight.dtype, device=second.weight.device))
    second.bias.copy_(bias.to(second.bias))
    total = float(evals.clamp_min(0).sum())
    return {"explained": float(evals[-r:].clamp_min(0).sum()) / total if total > 0 else 1.0}


def with_bias(model: nn.Module, layers: Sequence[lowrank.LayerReport]) -> nn.Module:
    """Give every decomposed layer's 1x1 conv a bias (what :func:`fit_channel` adds), in place."""
    for rep in layers:
        if rep.get("skipped") is None and rep.get("rank") is not None:
            second = model.get_submodule(rep["name"])[1]
            if second.bias is None:
                second.bias = nn.Parameter(torch.zeros(second.out_channels, dtype=second.weight.dtype,
                                                       device=second.weight.device))
    return model

