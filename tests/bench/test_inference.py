"""rankbench.bench.measure.inference: BN folding, the layout menu, and each layout's outputs against eager; and how
``rankbench.bench.measure.metrics`` times two models on that menu (each on its fastest, numerics checked first)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rankbench.bench.measure.metrics import measure_latency


def _random_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking BN statistics: a fold that dropped or misapplied one would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


@pytest.mark.parametrize("conv, bn", [
    (nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)),
    (nn.Conv2d(6, 8, 3, padding=2, dilation=2, groups=2, bias=True), nn.BatchNorm2d(8)),
    (nn.Conv2d(6, 8, 1), nn.BatchNorm2d(8, affine=False)),
    (nn.Conv1d(6, 8, 5, padding=2), nn.BatchNorm1d(8, eps=1e-3)),
])
def test_fold_conv_bn_computes_the_conv_then_the_eval_mode_bn(conv, bn):
    from rankbench.bench.measure.inference import fold_conv_bn

    _random_bn_stats(bn)
    x = torch.randn(3, 6, *(9, 9)[: conv.weight.dim() - 2])
    before = [t.clone() for t in (*conv.parameters(), *bn.buffers())]
    folded = fold_conv_bn(conv, bn)
    assert type(folded) is type(conv) and folded.bias is not None     # one conv, the BN's shift in its bias
    with torch.no_grad():
        assert torch.allclose(folded(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, (*conv.parameters(), *bn.buffers())))   # inputs unchanged


def test_fold_conv_bn_rejects_what_it_cannot_fold():
    from rankbench.bench.measure.inference import fold_conv_bn

    with pytest.raises(ValueError, match=r"^bn.num_features: 4; accepted: the conv's out_channels \(8\)$"):
        fold_conv_bn(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"^bn: 'BatchNorm2d': no running statistics to fold; accepted: a BatchNorm "
                                         r"with running statistics \(track_running_stats=True\)$"):
        fold_conv_bn(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))
    with pytest.raises(ValueError, match=r"^conv: 'Linear'; accepted: nn.Conv1d, nn.Conv2d, nn.Conv3d$"):
        fold_conv_bn(nn.Linear(3, 8), nn.BatchNorm1d(8))


class FoldCases(nn.Module):
    """A BN after a conv, after a factorized pair, after a conv whose output is read twice, after a
    ReLU, and after a conv module called twice: only the first two may be folded."""

    def __init__(self):
        super().__init__()
        from rankbench.methods.lowrank import factorize

        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pair, self.bn2 = factorize(nn.Conv2d(8, 8, 3, padding=1, bias=False), "channel", 3), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)        # output also used
        self.bn4 = nn.BatchNorm2d(8)                                                    # after a ReLU
        self.shared, self.bn5 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)                  # called twice

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.pair(x)))
        y = self.conv3(x)
        x = self.bn4(torch.relu(self.bn3(y) + y))
        return self.bn5(self.shared(x)) + self.shared(x)


def test_fold_batchnorm_folds_only_where_the_graph_proves_it_safe_and_keeps_the_function():
    from rankbench.bench.measure.inference import fold_batchnorm

    torch.manual_seed(0)
    m = _random_bn_stats(FoldCases()).train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    folded, n = fold_batchnorm(m)
    assert n == 2
    kinds = [type(mod).__name__ for mod in folded.modules()]
    assert kinds.count("BatchNorm2d") == 3                      # bn3, bn4, bn5 remain
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), m.eval()(x), atol=1e-5, rtol=1e-5)
    m.train()   # the caller's model: not changed (weights, BN statistics, mode)
    assert m.training and all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())


def test_fold_batchnorm_names_a_model_fx_cannot_trace():
    from rankbench.bench.measure.inference import fold_batchnorm

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x         # data-dependent control flow

    with pytest.raises(ValueError, match="fold_batchnorm: torch.fx cannot trace Branchy"):
        fold_batchnorm(Branchy())


def _tiny_resnet_pair():
    from rankbench.bench.models.builtin import build_model
    from rankbench.methods import lowrank

    torch.manual_seed(0)
    dense = _random_bn_stats(build_model("resnet20", 10, (3, 16, 16)))
    small, _ = lowrank.decompose_model(dense, "channel", "speedup:2.0", example_input=torch.zeros(1, 3, 16, 16))
    return dense, small.eval()


def test_every_cpu_layout_gives_the_eager_outputs_of_a_dense_and_a_factorized_resnet():
    from rankbench.bench.measure.inference import CPU_LAYOUTS, inference_model

    x = torch.randn(2, 3, 16, 16)
    for model in _tiny_resnet_pair():
        with torch.inference_mode():
            ref = model(x)
            for layout in CPU_LAYOUTS:
                fn, xx = inference_model(model, layout, "cpu", torch.float32, x)
                assert torch.allclose(fn(xx), ref, atol=1e-4, rtol=1e-4), layout


def test_compare_latency_gives_both_models_the_same_menu_and_each_its_fastest():
    from rankbench.bench.measure.inference import CPU_LAYOUTS
    from rankbench.bench.measure.metrics import compare_latency

    dense, small = _tiny_resnet_pair()
    r = compare_latency({"dense": dense, "compressed": small}, (3, 16, 16), repeats=4, warmup=1)
    for res in r.values():
        assert set(res["candidates"]) == set(CPU_LAYOUTS) and res["skipped"] == {}
        assert res["layout"] in CPU_LAYOUTS and res["ms"] == res["candidates"][res["layout"]] > 0
        assert res["ms"] == min(res["candidates"].values())      # the fastest, never a slower one
        assert res["device"].startswith("cpu") and res["batch"] == 1 and res["repeats"] == 4


def test_rewritten_layouts_pass_the_numerics_check_in_bfloat16_too():
    from rankbench.bench.measure.metrics import compare_latency

    dense, small = _tiny_resnet_pair()
    layouts = ["contiguous", "channels_last+folded", "contiguous+jit"]
    r = compare_latency({"dense": dense, "compressed": small}, (3, 16, 16), dtype="bfloat16", repeats=1,
                        warmup=1, layout=layouts)
    assert all(res["skipped"] == {} and list(res["candidates"]) == layouts for res in r.values())


def test_compare_latency_fixed_layout_and_bad_layouts():
    from rankbench.bench.measure.metrics import compare_latency, measure_latency

    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    r = measure_latency(m, (3, 8, 8), repeats=2, warmup=1, layout="contiguous")
    assert r["layout"] == "contiguous" and list(r["candidates"]) == ["contiguous"]
    r = measure_latency(nn.Linear(4, 4), (4,), repeats=2, warmup=1, layout=["channels_last", "contiguous"])
    assert r["layout"] == "contiguous" and "4-D" in r["skipped"]["channels_last"]
    with pytest.raises(ValueError, match=r"^measure.latency_layout: 'nhwc': unknown; accepted: auto, "
                                         r"contiguous, contiguous\+folded"):
        measure_latency(m, (3, 8, 8), layout="nhwc")
    with pytest.raises(ValueError, match=r"measure.latency_layout: none of channels_last runs 'mlp' "
                                         r"\(channels_last: ValueError: channels_last needs a 4-D input"):
        compare_latency({"mlp": nn.Linear(4, 4)}, (4,), layout="channels_last")


def test_a_layout_whose_outputs_differ_from_eager_is_skipped_not_timed(monkeypatch):
    import rankbench.bench.measure.inference as inference

    def wrong_fold(conv, bn):          # forgets the BN: a plausible bug a numerics check must catch
        return conv

    monkeypatch.setattr(inference, "fold_conv_bn", wrong_fold)
    m = _random_bn_stats(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    r = measure_latency(m, (3, 8, 8), repeats=2, warmup=1, layout=["contiguous", "contiguous+folded"])
    assert r["layout"] == "contiguous" and list(r["candidates"]) == ["contiguous"]
    assert "output differs from eager float32" in r["skipped"]["contiguous+folded"]


def test_layout_menu_auto_per_device_a_fixed_one_and_an_empty_list():
    from rankbench.bench.measure.inference import CPU_LAYOUTS, CUDA_LAYOUTS, accepted_layouts, layout_menu

    assert layout_menu("auto", "cpu") == list(CPU_LAYOUTS)
    assert layout_menu("auto", "cuda") == list(CUDA_LAYOUTS)
    assert set(CPU_LAYOUTS) <= set(accepted_layouts()) and set(CUDA_LAYOUTS) <= set(accepted_layouts())
    assert layout_menu(["contiguous+jit", "contiguous", "contiguous+jit"], "cpu") == ["contiguous+jit", "contiguous"]
    with pytest.raises(ValueError, match=r"^measure.latency_layout: \[\]; accepted: auto, one layout or a non-empty list$"):
        layout_menu([], "cpu")
    with pytest.raises(ValueError, match=r"^m.layout: 'channel_last': unknown \(did you mean 'channels_last'\?\)"):
        layout_menu(["contiguous", "channel_last"], "cpu", field="m.layout")
