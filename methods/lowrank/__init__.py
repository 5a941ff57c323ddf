"""The low-rank building blocks every method shares. No method re-implements a reshape, a rank
rule or a MAC count: they all come from here.

Modules, bottom up (each imports only those above it):

- ``rules``       rank rules (``energy:0.9``, ``value:0.05``, ``ratio``, ``rank``, ``entropy``,
                  ``speedup:2.0``): ``parse_rule``, ``Rule``, ``rank_mask``, ``rank_from_rule``.
- ``schemes``     matrix views of a weight (``channel``, ``spatial``, ``linear``, ``decoupling``)
                  and tiles: ``scheme_for``, ``to_matrix``, ``from_matrix``, ``full_rank``,
                  ``check_tiles``, ``layer_tiles``.
- ``factorized``  the two-layer replacement of a layer: ``Factorized``, ``factorize``, ``reconstruct``,
                  ``numeric_padding``.
- ``macs``        the one MAC counter (fvcore): ``model_macs``, ``probe_layers``; per-layer
                  formulas ``dense_macs``, ``factorized_macs``.
- ``layers``      which layers a method compresses: ``layer_reasons``, ``select_layers``,
                  ``layer_choice``, ``LAYER_CHOICES``, ``set_module``.
- ``solvers``     the batched projection used during training: ``project``, ``check_solver``,
                  ``SOLVERS``, ``WarmStart``.
- ``vbmf``        analytic empirical VBMF rank estimate of a matrix: ``vbmf``, ``vbmf_rank``.
- ``decompose``   whole-model decomposition: ``decompose_model``, ``build_factorized``,
                  ``max_speedup``, ``check_reachable``, ``LayerReport``.

Everything listed is re-exported here, so ``from methods import lowrank; lowrank.project(...)``
works; this package imports nothing else from ``methods``.
"""
from rankbench.methods.lowrank.rules import ACCEPTED_RULES, RULE_KINDS, Rule, parse_rule, rank_from_rule, rank_mask
from rankbench.methods.lowrank.schemes import (CONV_SCHEMES, SCHEMES, Scheme, check_scheme, check_tiles, from_matrix,
                                     full_rank, layer_tiles, scheme_for, to_matrix)
from rankbench.methods.lowrank.factorized import Factorized, factorize, numeric_padding, reconstruct
from rankbench.methods.lowrank.macs import Probe, dense_macs, factorized_macs, mac_handles, model_macs, probe_layers
from rankbench.methods.lowrank.layers import (LAYER_CHOICES, default_kinds, layer_choice, layer_reasons, select_layers,
                                    set_module)
from rankbench.methods.lowrank.solvers import (AUTO_GRAM_ASPECT, CUDA_SVD_DRIVERS, SOLVERS, WARM_BACKOFF_MAX, WARM_GUARD,
                                     WARM_DEGREES, WARM_ITERS, WARM_MAX_FRACTION, WARM_RULES, WARM_SLACK, WARM_TOL,
                                     WARM_TOL_FLOAT64, Warm, WarmStart, check_solver, project, warm_eigs)
from rankbench.methods.lowrank.vbmf import VBMFResult, vbmf, vbmf_rank
from rankbench.methods.lowrank.decompose import (LayerReport, build_factorized, check_reachable, decompose_model,
                                       max_speedup)

__all__ = [
    "ACCEPTED_RULES", "RULE_KINDS", "Rule", "parse_rule", "rank_from_rule", "rank_mask",
    "CONV_SCHEMES", "SCHEMES", "Scheme", "check_scheme", "check_tiles", "from_matrix", "full_rank", "layer_tiles",
    "scheme_for", "to_matrix",
    "Factorized", "factorize", "numeric_padding", "reconstruct",
    "Probe", "dense_macs", "factorized_macs", "mac_handles", "model_macs", "probe_layers",
    "LAYER_CHOICES", "default_kinds", "layer_choice", "layer_reasons", "select_layers", "set_module",
    "AUTO_GRAM_ASPECT", "CUDA_SVD_DRIVERS", "SOLVERS", "WARM_BACKOFF_MAX", "WARM_DEGREES", "WARM_GUARD",
    "WARM_ITERS", "WARM_MAX_FRACTION", "WARM_RULES", "WARM_SLACK", "WARM_TOL", "WARM_TOL_FLOAT64", "Warm", "WarmStart",
    "check_solver", "project", "warm_eigs",
    "VBMFResult", "vbmf", "vbmf_rank",
    "LayerReport", "build_factorized", "check_reachable", "decompose_model", "max_speedup",
]
