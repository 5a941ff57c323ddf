"""Spec -> Sweep -> Trials: grid expansion, stable ids, and one line per bad input."""
from __future__ import annotations

import textwrap

import pytest

from rankbench.bench.spec.parse import SpecError, default_spec_path, load_spec, parse_spec
from rankbench.bench.trial import Trial

BASE = """
sweep: t
seeds: [0, 1]
data: {name: digits}
model: cnn
train: {epochs: 1, batch_size: 64, lr: 0.05}
methods:
  - {name: dense}
  - {name: svd, scheme: channel, rule: "speedup:2.0", finetune_epochs: [0, 1]}
"""


def spec(text: str, **kw) -> list[Trial]:
    return list(parse_spec(textwrap.dedent(text), **kw).trials)


def test_quick_spec_expands_to_every_method_with_three_seeds_and_its_baselines():
    sweep = load_spec(default_spec_path())
    methods = {t.method for t in sweep.trials}
    assert methods == {"dense", "svd", "trp", "arsvd", "deeptwist"}
    assert {t.seed for t in sweep.trials} == {0, 1, 2}
    # arsvd runs on the MLP, so the MLP's dense baseline is added even though no entry names it
    assert {(t.model, t.seed) for t in sweep.baselines()} == {(m, s) for m in ("cnn", "mlp") for s in range(3)}
    assert len({t.id for t in sweep.trials}) == len(sweep.trials) == 24
    # baselines come first: phase 1 of the sweep
    kinds = [t.method == "dense" for t in sweep.trials]
    assert kinds == sorted(kinds, reverse=True)


def test_lists_expand_to_a_grid_and_baselines_are_shared():
    trials = spec(BASE)
    svd = [t for t in trials if t.method == "svd"]
    assert len(svd) == 4                                   # finetune_epochs x seeds
    assert sorted(t.variant for t in svd) == ["finetune_epochs=0,rule=speedup:2.0,scheme=channel"] * 2 + \
        ["finetune_epochs=1,rule=speedup:2.0,scheme=channel"] * 2
    dense_ids = {t.id for t in trials if t.method == "dense"}
    assert len(dense_ids) == 2                             # one per seed, not one per method
    assert {t.baseline().id for t in svd} == dense_ids


def test_entry_overrides_model_and_train_and_gets_its_own_baseline():
    trials = spec(BASE + '  - {name: arsvd, rule: "energy:0.9", model: [mlp], train: {epochs: 2}}\n')
    ar = [t for t in trials if t.method == "arsvd"]
    assert {t.model for t in ar} == {"mlp"} and {t.train_cfg["epochs"] for t in ar} == {2}
    assert {t.baseline().id for t in ar} <= {t.id for t in trials}


def test_ids_do_not_depend_on_key_order_number_spelling_or_resources():
    a = spec(BASE)
    b = spec("""
    methods:
      - {name: dense}
      - {finetune_epochs: [0, 1], rule: "speedup:2.0", scheme: channel, name: svd}
    train: {lr: 5.0e-2, epochs: 1, batch_size: 64}
    model: cnn
    resources: {cpus: 2}
    data: {name: digits}
    seeds: [0, 1]
    sweep: t
    """)
    assert [t.id for t in a] == [t.id for t in b]


def test_trial_id_is_a_pinned_hash_of_canonical_json():
    # pinned: an id that changed across versions would silently re-run (or orphan) every result
    t = spec("sweep: t\nseeds: [0]\nmethods: [{name: dense}]\n")[0]
    assert t.id == _sha12(t)
    assert len(t.id) == 12 and t == Trial.from_dict(t.to_dict())
    assert Trial.from_dict(t.to_dict()).id == t.id


def _sha12(t: Trial) -> str:
    import hashlib
    import json

    text = json.dumps(t.to_dict(with_resources=False), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_model_mapping_carries_builder_options_and_plain_names_keep_their_ids():
    plain = spec("sweep: t\nseeds: [0]\nmodel: cnn\nmethods: [{name: dense}]\n")[0]
    mapped = spec("sweep: t\nseeds: [0]\nmodel: {name: cnn}\nmethods: [{name: dense}]\n")[0]
    wide = spec("sweep: t\nseeds: [0]\nmodel: {name: cnn, width: 8}\nmethods: [{name: dense}]\n")[0]
    assert plain.id == mapped.id and wide.id != plain.id
    assert wide.model == "cnn" and wide.model_cfg == {"width": 8}
    assert Trial.from_dict(wide.to_dict()).id == wide.id


def test_yaml_1e_minus_4_is_a_float_and_ints_become_floats_for_float_fields():
    t1 = spec("sweep: t\ntrain: {weight_decay: 1e-4, lr: 1}\nmethods: [{name: trp, nuclear: 3e-4}]\n")
    t2 = spec("sweep: t\ntrain: {weight_decay: 0.0001, lr: 1.0}\nmethods: [{name: trp, nuclear: 0.0003}]\n")
    assert t1[0].train_cfg["weight_decay"] == 1e-4 and t1[0].params_dict["nuclear"] == 3e-4
    assert [t.id for t in t1] == [t.id for t in t2]


def test_show_without_checks_does_not_touch_dataset_root(tmp_path):
    text = f"sweep: t\ndata: {{name: cifar10, root: {tmp_path / 'nope'}}}\nmethods: [{{name: dense}}]\n"
    assert len(spec(text, check=False)) == 1
    with pytest.raises(SpecError, match="data.root"):
        spec(text)


ERRORS = [
    # (spec text, substrings the one-line message must contain)
    ("sweep: t\nmethods: {a: b: c}\n", ["yaml", "line 2", "column 15"]),
    ("sweep: t\nsweep: u\nmethods: [{name: dense}]\n", ["line 2", "duplicate key 'sweep'"]),
    ("sweep: t\nmethod: [{name: dense}]\n", ["spec.method", "did you mean 'methods'"]),
    ("sweep: t\ntrain: {epocs: 3}\nmethods: [{name: dense}]\n", ["train.epocs", "did you mean 'epochs'"]),
    ("sweep: t\nmeasure: {latency_batch: 1, repeats: 3}\nmethods: [{name: dense}]\n",
     ["measure.repeats", "latency_repeats"]),
    ("sweep: t\nresources: {gpu: 1}\nmethods: [{name: dense}]\n", ["resources.gpu", "did you mean 'gpus'"]),
    ("sweep: t\nmethods: [{name: tpr}]\n", ["methods[0].name", "'tpr'", "did you mean 'trp'", "accepted"]),
    ("sweep: t\nmodel: resnet21\nmethods: [{name: dense}]\n", ["model", "'resnet21'", "resnet20"]),
    ("sweep: t\ndata: {name: cifar11}\nmethods: [{name: dense}]\n", ["data.name", "'cifar11'", "cifar10"]),
    ("sweep: t\nmethods: [{name: svd, sheme: channel}]\n", ["svd", "sheme", "did you mean 'scheme'"]),
    ("sweep: t\nmethods: [{name: trp, energy: 1.5}]\n", ["energy", "1.5", "(0, 1]"]),
    ("sweep: t\nmethods: [{name: deeptwist, period: -3}]\n", ["period", "-3", ">= 1"]),
    ("sweep: t\nmethods: [{name: svd, rule: 'speedup:0.5'}]\n", ["speedup", "0.5"]),
    # the boundaries of issue 7's ranges: energy in (0, 1], period >= 1, target speed-up > 1
    ("sweep: t\nmethods: [{name: trp, energy: 0}]\n", ["energy", "0.0", "(0, 1]"]),
    ("sweep: t\nmethods: [{name: arsvd, rule: 'energy:-0.2'}]\n", ["rule", "'energy:-0.2'", "0<E<=1"]),
    ("sweep: t\nmethods: [{name: trp, period: -1}]\n", ["period", "-1", ">= 1"]),
    ("sweep: t\nmethods: [{name: svd, rule: 'speedup:1.0'}]\n", ["rule", "'speedup:1.0'", "S>1"]),
    ("sweep: t\nmethods: [{name: trp, export: 'speedup:1'}]\n", ["export", "'speedup:1'", "S>1"]),
    ("sweep: t\ntrain: {lr: -0.1}\nmethods: [{name: dense}]\n", ["train.lr", "-0.1", "(0.0, inf)"]),
    ("sweep: t\ntrain: {schedule: linear}\nmethods: [{name: dense}]\n", ["train.schedule", "'linear'", "cosine, step"]),
    ("sweep: t\ntrain: {epochs: 2.5}\nmethods: [{name: dense}]\n", ["train.epochs", "2.5", "integer >= 0"]),
    ("sweep: t\ntrain: {milestones: [5, 2]}\nmethods: [{name: dense}]\n", ["train.milestones", "increasing"]),
    ("sweep: t\ntrain: {amp: 1}\nmethods: [{name: dense}]\n", ["train.amp", "true or false"]),
    ("sweep: t\nresources: {gpus: -1}\nmethods: [{name: dense}]\n", ["resources.gpus", "-1"]),
    ("sweep: t\nmeasure: {latency_dtype: int8}\nmethods: [{name: dense}]\n", ["measure.latency_dtype", "float32"]),
    ("sweep: t\nmeasure: {latency_layout: nhwc}\nmethods: [{name: dense}]\n",
     ["measure.latency_layout", "'nhwc'", "auto, contiguous", "channels_last+jit"]),
    ("sweep: t\nmeasure: {latency_device: cuda}\nmethods: [{name: dense}]\n",
     ["measure.latency_device", "'cuda'", "resources.gpus > 0"]),
    ("sweep: t\nseeds: [0, 0]\nmethods: [{name: dense}]\n", ["seeds", "distinct"]),
    ("sweep: 'a/b'\nmethods: [{name: dense}]\n", ["sweep", "'a/b'", "folder name"]),
    ("sweep: t\nmethods: []\n", ["methods", "non-empty"]),
    ("seeds: [0]\nmethods: [{name: dense}]\n", ["sweep: missing"]),
    ("sweep: t\nmethods: [{name: svd, finetune_epochs: []}]\n", ["finetune_epochs", "non-empty list"]),
    ("sweep: t\ndata: {name: cifar10, root: /nonexistent/cifar}\nmethods: [{name: dense}]\n",
     ["data.root", "/nonexistent/cifar"]),
    ("sweep: t\ndata: {name: cifar10}\nmethods: [{name: dense}]\n", ["data.root", "missing"]),
    ("sweep: t\ndata: {name: digits, vall_fraction: 0.2}\nmethods: [{name: dense}]\n", ["data.vall_fraction"]),
    ("sweep: t\nmodel: {name: cnn, widht: 8}\nmethods: [{name: dense}]\n", ["model.widht", "did you mean 'width'"]),
    ("sweep: t\nmodel: {name: resnet18, pretrained: /nope.pth}\nmethods: [{name: dense}]\n",
     ["model.pretrained", "/nope.pth", "existing file"]),
    ("- just\n- a list\n", ["spec", "mapping"]),
    ("", ["empty"]),
]


@pytest.mark.parametrize("text,needles", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_bad_input_fails_with_one_line_naming_field_and_value(text, needles):
    with pytest.raises(SpecError) as ei:
        parse_spec(text, source="spec.yaml")
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_cifar_root_names_the_missing_file(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"")
    with pytest.raises(SpecError) as ei:
        parse_spec(f"sweep: t\ndata: {{name: cifar10, root: {tmp_path}}}\nmethods: [{{name: dense}}]\n")
    assert "data_batch_2" in str(ei.value) or "data_batch" in str(ei.value)


def test_missing_spec_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_train_compile_takes_true_a_mode_or_a_backend_and_false_keeps_the_trial_id():
    plain = spec(BASE)
    assert [t.id for t in spec(BASE.replace("lr: 0.05}", "lr: 0.05, compile: false}"))] == [t.id for t in plain]
    for value, kept in (("true", True), ("reduce-overhead", "reduce-overhead"), ("aot_eager", "aot_eager")):
        t = spec(BASE.replace("lr: 0.05}", f"lr: 0.05, compile: {value}}}"))[0]
        assert t.train_cfg["compile"] == kept and t.id != plain[0].id
    with pytest.raises(SpecError, match=r"^train.compile: 'inductr': unknown \(did you mean 'inductor'\?\); "
                                        r"accepted: true, false, default, reduce-overhead, .*inductor"):
        spec(BASE.replace("lr: 0.05}", "lr: 0.05, compile: inductr}"))


def test_measure_latency_layout_auto_keeps_the_trial_id_and_a_named_one_is_kept():
    plain = spec(BASE)
    auto = spec(BASE.replace("methods:", "measure: {latency_layout: auto}\nmethods:"))
    assert [t.id for t in auto] == [t.id for t in plain] and "latency_layout" not in auto[0].measure_cfg
    one = spec(BASE.replace("methods:", "measure: {latency_layout: channels_last+jit}\nmethods:"))[0]
    assert one.measure_cfg["latency_layout"] == "channels_last+jit" and one.id != plain[0].id
    menu = spec(BASE.replace("methods:", "measure: {latency_layout: [contiguous, contiguous+folded]}\nmethods:"))[0]
    assert list(menu.measure_cfg["latency_layout"]) == ["contiguous", "contiguous+folded"]


def test_the_trial_and_what_runs_it_need_no_yaml():
    """rankbench.bench.trial is the Trial's home: run, sweep, distributed and the row import it without the
    spec's YAML loader."""
    import subprocess
    import sys

    code = ("import sys, rankbench.bench.trial, rankbench.bench.results.row, rankbench.bench.running.run, rankbench.bench.running.sweep, rankbench.bench.running.distributed; "
            "print('yaml' in sys.modules, 'rankbench.bench.spec.parse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
