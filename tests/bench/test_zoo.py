"""Any torchvision or timm classification model by name, decomposed with the schemes that apply,
MACs counted by fvcore; weights only from local files."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from rankbench.bench.checks import UserError
from rankbench.bench.measure.metrics import count_macs
from rankbench.bench.models.builtin import build_model, canonical_name, check_pretrained
from rankbench.bench.spec.parse import parse_spec
from rankbench.methods import lowrank

SHAPE = (3, 32, 32)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # nothing here may reach the internet: timm and torchvision would fail loudly if they tried
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent")


def decompose(model, scheme, layers="official"):
    torch.manual_seed(0)
    x = torch.zeros(1, *SHAPE)
    small, reports = lowrank.decompose_model(model.eval(), scheme, "speedup:1.5", layers, example_input=x)
    return small, reports, count_macs(model, SHAPE), count_macs(small, SHAPE)


def test_mobilenet_v2_from_torchvision_decomposes_its_dense_convs_and_skips_depthwise_ones():
    model = build_model("torchvision:mobilenet_v2", 10, SHAPE)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)
    small, reports, dense, macs = decompose(model, "channel", "all")
    skipped = {r["name"]: r["skipped"] for r in reports if r["skipped"]}
    depthwise = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(skipped[n].startswith("depthwise conv (groups=") for n in depthwise)
    assert skipped["classifier.1"] == "linear layers not selected"
    factorized = [r for r in reports if r["rank"] is not None]
    assert len(factorized) > 30                        # the 1x1 expand/project convs and the stem
    # fvcore's count of the model actually built hits the target the decomposition planned on
    assert dense / macs == pytest.approx(1.5, rel=0.02)
    assert macs == sum(r["macs"] for r in reports) + (dense - sum(r["dense_macs"] for r in reports))
    assert small(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_deit_tiny_from_timm_decomposes_its_transformer_linears():
    pytest.importorskip("timm", reason="timm is the optional extra rankbench[timm]")
    model = build_model("timm:deit_tiny_patch16_224", 10, SHAPE)     # img_size follows the data: 4 patches
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)
    small, reports, dense, macs = decompose(model, "linear")
    by_name = {r["name"]: r for r in reports}
    assert by_name["patch_embed.proj"]["skipped"] == "conv layers not selected"
    for n in ("blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.11.mlp.fc2"):
        assert by_name[n]["skipped"] is None or by_name[n]["skipped"].startswith("rank "), by_name[n]
    assert sum(r["rank"] is not None for r in reports) > 20
    assert dense / macs == pytest.approx(1.5, rel=0.02)
    assert small(torch.zeros(2, *SHAPE)).shape == (2, 10)
    # the conv stem (patch embedding) stays dense under the official choice with a conv scheme
    _, conv_reports = lowrank.decompose_model(model, "channel", "rank:4", example_input=torch.zeros(1, *SHAPE))
    assert conv_reports[0]["name"] == "patch_embed.proj" and conv_reports[0]["skipped"].startswith("first conv")


def test_names_resolve_and_unknown_names_get_one_line():
    assert canonical_name("resnet34") == "torchvision:resnet34"
    assert canonical_name("resnet20") == "resnet20" and canonical_name("resnet21") is None
    sweep = parse_spec("sweep: z\ndata: {name: synthetic}\nmodel: [torchvision:vgg11, resnet34, "
                       "{name: timm:resnet18, drop_rate: 0.1}]\nmethods: [dense]\n")
    assert {t.model for t in sweep.trials} == {"torchvision:vgg11", "resnet34", "timm:resnet18"}
    with pytest.raises(UserError, match=r"^model: 'torchvision:mobilenet_v9': unknown model \(did you mean "
                                        r"'mobilenet_v2'\?\); accepted: torchvision:NAME"):
        parse_spec("sweep: z\nmodel: torchvision:mobilenet_v9\nmethods: [dense]\n")
    with pytest.raises(UserError, match=r"^model: 'resnet21': unknown \(did you mean 'resnet32'\?\); accepted: cnn, mlp, .*torchvision:NAME, timm:NAME$"):
        parse_spec("sweep: z\nmodel: resnet21\nmethods: [dense]\n")


def test_local_pretrained_weights_load_and_adapt_the_head(tmp_path):
    # torchvision: a 1000-class file into a 10-class model: features loaded, classifier fresh
    src = build_model("torchvision:mobilenet_v2", 1000, SHAPE)
    path = tmp_path / "mnv2.pt"
    torch.save(src.state_dict(), path)
    check_pretrained("torchvision:mobilenet_v2", 10, SHAPE, str(path))
    model = build_model("torchvision:mobilenet_v2", 10, SHAPE, pretrained=str(path))
    assert torch.equal(model.features[1].conv[0][0].weight, src.features[1].conv[0][0].weight)
    assert model.classifier[1].weight.shape == (10, 1280)
    if importlib.util.find_spec("timm") is None:
        return
    # timm: its own loader on the local file adapts the head and the position embedding (224 -> 32 px)
    tsrc = build_model("timm:deit_tiny_patch16_224", 1000, (3, 224, 224))
    tpath = tmp_path / "deit.pt"
    torch.save(tsrc.state_dict(), tpath)
    check_pretrained("timm:deit_tiny_patch16_224", 10, SHAPE, str(tpath))
    vit = build_model("timm:deit_tiny_patch16_224", 10, SHAPE, pretrained=str(tpath))
    assert torch.equal(vit.blocks[3].mlp.fc1.weight, tsrc.blocks[3].mlp.fc1.weight)
    assert vit.pos_embed.shape[1] == 1 + 4 and vit.head.weight.shape == (10, 192)
    # a file of another model fails the check before training, naming a key
    with pytest.raises(ValueError, match=r"does not match the model"):
        check_pretrained("torchvision:resnet18", 10, SHAPE, str(path))


def test_zoo_models_run_through_the_harness_and_their_compressed_models_load(tmp_path):
    """A trial end to end on zoo models: baseline, decomposition at 1.5x by the row's fvcore count,
    and the saved compressed model computing what the evaluated one did."""
    import rankbench.bench
    from rankbench.bench.results.compressed import read_payload
    from rankbench.bench.running.run import run_trial

    pytest.importorskip("timm", reason="timm is the optional extra rankbench[timm]")
    sweep = parse_spec("""
sweep: zoo
seeds: [0]
data: {name: synthetic, shape: [3, 32, 32], num_classes: 10, size: 64}
train: {epochs: 1, batch_size: 32}
measure: {latency_repeats: 2, latency_layout: contiguous}
methods:
  - {name: svd, scheme: channel, layers: all, rule: "speedup:1.5", model: torchvision:mobilenet_v2}
  - {name: svd, scheme: linear, rule: "speedup:1.5", model: timm:deit_tiny_patch16_224}
""")
    rows = [run_trial(t, tmp_path) for t in sweep.trials]        # baselines first
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    x = torch.randn(2, *SHAPE)
    for r in rows:
        if r["method"] == "svd":
            assert r["macs_speedup"] == pytest.approx(1.5, rel=0.02)
        model = rankbench.bench.load_compressed(r["trial_id"], results=tmp_path)
        # rebuilt from the layer reports, not pickled
        assert read_payload(tmp_path / "zoo" / "trials" / r["compressed_model"])["architecture"] == "layers"
        assert model(x).shape == (2, 10)


def test_an_option_a_zoo_constructor_refuses_fails_before_training():
    with pytest.raises(UserError, match=r"^model: 'torchvision:mobilenet_v2': TypeError: .*no_such_option.*; "
                                        r"accepted: options its constructor takes \(given no_such_option=1\)$"):
        parse_spec("sweep: z\ndata: synthetic\nmodel: {name: torchvision:mobilenet_v2, no_such_option: 1}\n"
                   "methods: [dense]\n")
    sweep = parse_spec("sweep: z\ndata: synthetic\nmodel: {name: torchvision:mobilenet_v2, width_mult: 0.5}\n"
                       "methods: [dense]\n")
    assert sweep.trials[0].model_cfg == {"width_mult": 0.5}
