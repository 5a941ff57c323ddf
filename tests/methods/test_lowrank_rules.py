"""rankbench.methods.lowrank.rules: rank rules on hand-made spectra, parsing and its errors."""
from __future__ import annotations

import pytest
import torch

from rankbench.methods import lowrank as L

S = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22: cumulative .727 .909 .955 1


@pytest.mark.parametrize("rule,s,expected", [
    ("energy:0.9", torch.tensor([3.0, 1.0]), 1),          # 9/10 = 0.9 exactly: reached at k=1
    ("energy:0.91", torch.tensor([3.0, 1.0]), 2),
    ("energy:0.7", S, 1), ("energy:0.9", S, 2), ("energy:0.95", S, 3), ("energy:0.96", S, 4), ("energy:1", S, 4),
    ("value:0.05", torch.tensor([1.0, 0.5, 0.05, 0.01]), 3),  # keep s_i >= t
    ("value:2", torch.tensor([1.0, 0.5]), 1),                 # never rank 0
    ("ratio:0.5", torch.ones(5), 3), ("ratio:0.01", torch.ones(5), 1), ("ratio:1", torch.ones(5), 5),
    ("rank:2", torch.ones(5), 2), ("rank:8", torch.ones(5), 5),
    # entropy: s = 6,3,1 -> p = .6,.3,.1 -> -p log p = .3065 .3612 .2303, cumulative share .341 .744 1
    ("entropy:0.3", torch.tensor([6.0, 3.0, 1.0]), 1), ("entropy:0.5", torch.tensor([6.0, 3.0, 1.0]), 2),
    ("entropy:0.75", torch.tensor([6.0, 3.0, 1.0]), 3),
    ("entropy:0.5", torch.ones(4), 2), ("entropy:0.51", torch.ones(4), 3),  # uniform: equal shares
    ("energy:0.9", torch.zeros(3), 1),                       # all-zero layer: rank 1, no NaN
])
def test_rank_rules_on_hand_made_spectra(rule, s, expected):
    assert L.rank_from_rule(s, rule) == expected
    assert L.rank_from_rule(s.double(), rule) == expected


def test_rank_mask_is_batched_prefix_and_rowwise():
    spectra = torch.stack([S, torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([5.0, 0.1, 0.0, 0.0])])
    for rule in ("energy:0.9", "value:0.5", "ratio:0.5", "rank:3", "entropy:0.8"):
        mask = L.rank_mask(spectra, rule)
        assert mask.shape == spectra.shape and mask.dtype == torch.bool
        for row, s in zip(mask, spectra):
            k = L.rank_from_rule(s, rule)
            assert row.tolist() == [i < k for i in range(4)]


@pytest.mark.parametrize("text,needle", [
    ("energy", "rule: 'energy'; accepted: "), ("tucker:1", "rule: 'tucker:1': unknown kind 'tucker'; accepted: "), ("energy:abc", "not a number"),
    ("energy:1.5", "out of range"), ("rank:2.5", "out of range"), ("rank:inf", "out of range"),
    ("speedup:0.5", "out of range"), ("value:-1", "out of range"), (0.9, "rule: 0.9; accepted: "),
])
def test_parse_rule_errors_name_field_value_and_accepted(text, needle):
    with pytest.raises(ValueError, match="accepted") as e:
        L.parse_rule(text)
    assert needle in str(e.value)
    with pytest.raises(ValueError, match="^export: "):
        L.parse_rule(text, "export")


def test_parse_rule_round_trip_and_speedup_is_model_level():
    assert L.parse_rule("energy:0.9") == L.Rule("energy", 0.9)
    assert str(L.parse_rule("rank:8")) == "rank:8"
    assert L.parse_rule(" Speedup:2").is_global
    with pytest.raises(ValueError, match="whole-model rule"):
        L.rank_mask(S, "speedup:2.0")
