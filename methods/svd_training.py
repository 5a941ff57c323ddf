"""``svd-training``: SVD training (Yang, Tang, Wen, Chen, Li, "Learning Low-rank Deep Neural
Networks via Singular Vector Orthogonality Regularization and Singular Value Sparsification",
CVPRW 2020).

Trains from scratch (or from ``model.pretrained``). At ``attach`` every chosen layer is replaced by
:class:`SVDLayer`, which holds its scheme matrix as ``U diag(s) V`` (U m x k, V k x n,
k = min(m, n)), started from the SVD of the layer's weight (so it computes what the layer did),
and trains ``U``, ``s`` and ``V``. The training loss gets (``extra_loss``)::

    orthogonality * sum_layers (||U^T U - I||_F^2 + ||V V^T - I||_F^2) / k^2
    + sparsity_weight * sum_layers ||s||_1            (sparsity: l1)
                                or ||s||_1 / ||s||_2   (sparsity: hoyer)

and ``s`` gets no weight decay (``param_groups``: ``s`` in a group with ``weight_decay: 0``).
At ``compress`` each layer's trained weight ``U diag(s) V`` is pruned to the rank the ``rule``
gives and deployed as the scheme's two layers (``lowrank.decompose_model``: the best rank-r
approximation of the trained weight). The paper prunes by an energy threshold on ``s``; with the
orthogonality term holding U and V orthonormal, ``s`` is the trained weight's spectrum, so
``energy:E`` is that rule, and ``speedup:S`` matches MACs as for every other method. Optional
fine-tuning of the pruned network (``finetune_epochs``).
"""
from __future__ import annotations

import copy
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rankbench.bench.checks import is_int, is_number
from rankbench.methods import lowrank
from rankbench.methods.api.base import Context, Method, MethodReport, check_param
from rankbench.methods.api.registry import register

SVD_SCHEMES = ("channel", "spatial", "linear")
SPARSITY = ("l1", "hoyer")


class SVDLayer(nn.Module):
    """A Conv2d or Linear whose weight (in ``scheme``'s matrix view) is ``u @ diag(s) @ v``;
    ``bias`` and the conv's stride/padding/dilation are the layer's own."""

    def __init__(self, layer: nn.Module, scheme: str) -> None:
        super().__init__()
        w = layer.weight.detach()
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(lowrank.to_matrix(w.double(), scheme), full_matrices=False)
        self.scheme, self.shape = scheme, tuple(w.shape)
        self.u = nn.Parameter(u.to(w))
        self.s = nn.Parameter(s.to(w))
        self.v = nn.Parameter(vh.to(w))
        self.bias = nn.Parameter(layer.bias.detach().clone()) if layer.bias is not None else None
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
            self.groups, self.padding_mode = layer.groups, layer.padding_mode
            self.pad_twice = layer._reversed_padding_repeated_twice   # what nn.Conv2d pads with for non-zero modes

    def weight(self) -> Tensor:
        """The layer's weight in its own shape."""
        return lowrank.from_matrix((self.u * self.s) @ self.v, self.scheme, self.shape)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight()
        if not self.conv:
            return F.linear(x, w, self.bias)
        if self.padding_mode != "zeros":
            return F.conv2d(F.pad(x, self.pad_twice, mode=self.padding_mode), w, self.bias, self.stride, 0,
                            self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def dense(self) -> nn.Module:
        """The plain layer with the trained weight ``U diag(s) V``."""
        with torch.no_grad():
            w = self.weight().detach()
            if self.conv:
                n, c, kh, kw = self.shape
                out: nn.Module = nn.Conv2d(c * self.groups, n, (kh, kw), self.stride, self.padding, self.dilation,
                                           self.groups, self.bias is not None, self.padding_mode,
                                           device=w.device, dtype=w.dtype)
            else:
                out = nn.Linear(self.shape[1], self.shape[0], self.bias is not None, device=w.device, dtype=w.dtype)
            out.weight.copy_(w)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        out.train(self.training)
        return out

    def orthogonality(self) -> Tensor:
        """``(||U^T U - I||_F^2 + ||V V^T - I||_F^2) / k^2``."""
        k = self.s.shape[0]
        eye = torch.eye(k, dtype=self.u.dtype, device=self.u.device)
        return (((self.u.T @ self.u - eye) ** 2).sum() + ((self.v @ self.v.T - eye) ** 2).sum()) / k ** 2

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, shape={self.shape}, rank={self.s.shape[0]}"


@register("svd-training")
class SVDTraining(Method):
    """Layers trained as U diag(s) V with orthogonality and sparsity terms, pruned by rank rule (Yang et al. 2020)."""


    def __init__(self, scheme: Literal["channel", "spatial", "linear"] = "channel", rule: str = "energy:0.9",
                 orthogonality: float = 1.0, sparsity: Literal["l1", "hoyer"] = "hoyer",
                 sparsity_weight: float = 1e-3, finetune_epochs: int = 0, layers: str = "official",
                 include_stride2: bool = True) -> None:
        check_param("scheme", scheme, scheme in SVD_SCHEMES, ", ".join(SVD_SCHEMES))
        lowrank.parse_rule(rule)
        check_param("orthogonality", orthogonality, is_number(orthogonality) and orthogonality >= 0,
                    "a number >= 0 (weight of the orthogonality term; 0 = off)")
        check_param("sparsity", sparsity, sparsity in SPARSITY, ", ".join(SPARSITY))
        check_param("sparsity_weight", sparsity_weight, is_number(sparsity_weight) and sparsity_weight >= 0,
                    "a number >= 0 (weight of the sparsity term on s; 0 = off)")
        check_param("finetune_epochs", finetune_epochs, is_int(finetune_epochs) and finetune_epochs >= 0,
                    "an int >= 0")
        check_param("layers", layers, layers in lowrank.LAYER_CHOICES, ", ".join(lowrank.LAYER_CHOICES))
        check_param("include_stride2", include_stride2, isinstance(include_stride2, bool), "true or false")
        self.scheme, self.rule, self.orthogonality = scheme, rule, float(orthogonality)
        self.sparsity, self.sparsity_weight, self.finetune_epochs = sparsity, float(sparsity_weight), finetune_epochs
        self.layers, self.include_stride2 = layers, include_stride2
        self.names: list[str] = []
        self._reports: list[lowrank.LayerReport] = []

    def attach(self, model: nn.Module, ctx: Context) -> None:
        lowrank.check_reachable(model, self.scheme, self.rule, self.example_input(model), self.layers,
                                self.include_stride2)
        self.names = [n for n, r in self.choose_layers(model) if r is None]
        for n in self.names:
            lowrank.set_module(model, n, SVDLayer(model.get_submodule(n), self.scheme))

    def choose_layers(self, model: nn.Module) -> list[tuple[str, Optional[str]]]:
        """The layers trained as U diag(s) V and factorized at compress (None), or why each stays dense."""
        return lowrank.layer_choice(model, self.scheme, self.layers, self.include_stride2)

    def _layers(self, model: nn.Module) -> list[SVDLayer]:
        return [m for m in (model.get_submodule(n) for n in self.names) if isinstance(m, SVDLayer)]

    def extra_loss(self, model: nn.Module, step: int) -> Optional[Tensor]:
        layers = self._layers(model)
        if not layers or (self.orthogonality == 0 and self.sparsity_weight == 0):
            return None
        total = sum(layer.orthogonality() for layer in layers) * self.orthogonality
        if self.sparsity_weight > 0:
            if self.sparsity == "l1":
                sp = sum(layer.s.abs().sum() for layer in layers)
            else:
                sp = sum(layer.s.abs().sum() / layer.s.norm().clamp_min(1e-12) for layer in layers)
            total = total + self.sparsity_weight * sp
        return total

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        singular = {id(layer.s) for layer in self._layers(model)}
        rest = [p for p in model.parameters() if id(p) not in singular]
        return [{"params": rest}, {"params": [layer.s for layer in self._layers(model)], "weight_decay": 0.0}]

    def compress(self, model: nn.Module) -> nn.Module:
        dense = copy.deepcopy(model)
        for n in self.names:
            layer = dense.get_submodule(n)
            if isinstance(layer, SVDLayer):
                lowrank.set_module(dense, n, layer.dense())
        small, self._reports = lowrank.decompose_model(
            dense, self.scheme, self.rule, self.names, example_input=self.example_input(model),
            include_stride2=self.include_stride2)
        return small

    def report(self) -> MethodReport:
        return MethodReport(layers=list(self._reports), scheme=self.scheme, rule=self.rule,
                            info={"sparsity": self.sparsity})
