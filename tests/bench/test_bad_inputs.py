"""Bad input of every kind, table-driven: each case exits 2 with exactly one ``error:`` line, no
traceback, no result folder, and nothing reaching Ray or a trial.

Every case runs in-process through ``rankbench.bench.cli.main`` (fast). A case is (argv or spec, the
words its one line must hold). ``BASE`` is the spec every spec case edits: ``sweep: x, seeds:
[0], data: {name: digits}, model: mlp, train: {epochs: 1}, methods: [{name: dense}]``.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from rankbench.bench.cli import main

BASE: dict[str, Any] = {"sweep": "x", "seeds": [0], "data": {"name": "digits"}, "model": "mlp",
                        "train": {"epochs": 1}, "methods": [{"name": "dense"}]}
CPUS = os.cpu_count() or 1


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def spec(**edit: Any) -> Callable[[Path], str]:
    """The base spec with top-level keys replaced (a value of ``DROP`` removes the key)."""
    def text(tmp: Path) -> str:
        d = dict(BASE)
        for k, v in edit.items():
            v = v(tmp) if callable(v) else v
            if v is DROP:
                d.pop(k, None)
            else:
                d[k] = v
        return yaml.safe_dump(d)
    return text


DROP = object()


def train(**kw: Any) -> Callable[[Path], str]:
    return spec(train={"epochs": 1, **kw})


def method(**kw: Any) -> Callable[[Path], str]:
    return spec(methods=[kw], model="cnn")


# --- files for the data and pretrained cases -------------------------------------------------

def random_bytes(tmp: Path) -> str:
    f = tmp / "random.pt"
    f.write_bytes(np.random.default_rng(0).bytes(4096))
    return str(f)


def empty_file(tmp: Path) -> str:
    f = tmp / "empty.pt"
    f.write_bytes(b"")
    return str(f)


def not_a_state_dict(tmp: Path) -> str:
    import torch

    f = tmp / "list.pt"
    torch.save([1, 2, 3], f)
    return str(f)


def _cifar(tmp: Path, damage: Callable[[Path], None]) -> str:
    root = tmp / "cifar"
    root.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        d = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
        (root / name).write_bytes(pickle.dumps(d))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    damage(root)
    return str(root)


def cifar_truncated(tmp: Path) -> dict:
    def cut(root: Path) -> None:
        b = (root / "data_batch_3").read_bytes()
        (root / "data_batch_3").write_bytes(b[: len(b) // 2])
    return {"name": "cifar10", "root": _cifar(tmp, cut)}


def cifar_wrong_shape(tmp: Path) -> dict:
    def shape(root: Path) -> None:
        (root / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    return {"name": "cifar10", "root": _cifar(tmp, shape)}


def cifar_bad_labels(tmp: Path) -> dict:
    def labels(root: Path) -> None:
        (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    return {"name": "cifar10", "root": _cifar(tmp, labels)}


def cifar_not_a_dict(tmp: Path) -> dict:
    def lst(root: Path) -> None:
        (root / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    return {"name": "cifar10", "root": _cifar(tmp, lst)}


def _image(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (10, 20, 30)).save(path)


def imagefolder(tmp: Path, classes: tuple[str, ...] = ("a", "b"), val: bool = True, junk: bool = False) -> dict:
    root = tmp / "imf"
    for cls in classes:
        for i in range(2):
            f = root / "train" / cls / f"{i}.png"
            if junk:
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(b"\x89PNG not really")
            else:
                _image(f)
            if val:
                _image(root / "val" / cls / f"{i}.png")
            else:
                (root / "val" / cls).mkdir(parents=True, exist_ok=True)
    return {"name": "imagenet", "root": str(root), "layout": "imagefolder"}


# --- the table: case id -> (spec text builder or argv builder, words of the one line) ----------

Case = tuple[Callable[[Path], Any], list[str]]
CASES: dict[str, Case] = {
    # top level
    "empty-spec": (lambda tmp: "", ["spec: ", "empty"]),
    "spec-a-list": (lambda tmp: "- 1\n- 2\n", ["spec: ", "a mapping"]),
    "malformed-yaml": (lambda tmp: "sweep: x\nmethods: [dense\n", ["yaml: ", "line "]),
    "duplicate-key": (lambda tmp: "sweep: x\nsweep: y\nmethods: [dense]\n", ["duplicate key 'sweep'"]),
    "unknown-top-key": (spec(sweeps="x"), ["spec.sweeps", "did you mean 'sweep'"]),
    "no-sweep": (spec(sweep=DROP), ["sweep: missing"]),
    "no-methods": (spec(methods=DROP), ["methods: missing"]),
    "sweep-slash": (spec(sweep="a/b"), ["sweep: 'a/b'"]),
    "sweep-int": (spec(sweep=3), ["sweep: 3"]),
    "sweep-empty": (spec(sweep=""), ["sweep: ''"]),
    "methods-empty": (spec(methods=[]), ["methods: []"]),
    "methods-mapping": (spec(methods={"name": "dense"}), ["methods: "]),
    "methods-int": (spec(methods=3), ["methods: 3"]),
    # seeds
    "seeds-empty": (spec(seeds=[]), ["seeds: []"]),
    "seeds-negative": (spec(seeds=[-1]), ["seeds: [-1]"]),
    "seeds-duplicate": (spec(seeds=[1, 1]), ["seeds: [1, 1]"]),
    "seeds-string": (spec(seeds=["a"]), ["seeds: ['a']"]),
    "seeds-bool": (spec(seeds=[True]), ["seeds: [True]"]),
    "seeds-float": (spec(seeds=[1.5]), ["seeds: [1.5]"]),
    "seeds-2**32": (spec(seeds=[4294967296]), ["seeds: [4294967296]", "[0, 4294967295]"]),
    "seeds-huge": (spec(seeds=[10**30]), ["seeds: ", "[0, 4294967295]"]),
    # data
    "data-empty-grid": (spec(data=[]), ["data: []", "an empty grid runs nothing"]),
    "data-empty-mapping": (spec(data={}), ["data.name: missing"]),
    "data-unknown": (spec(data={"name": "mnist"}), ["data.name: 'mnist'", "accepted: "]),
    "data-int": (spec(data=3), ["data: 3"]),
    "data-unknown-option": (spec(data={"name": "digits", "bogus": 1}), ["bogus"]),
    "data-digits-val-fraction": (spec(data={"name": "digits", "val_fraction": 2}), ["val_fraction"]),
    "data-cifar-no-root": (spec(data={"name": "cifar10"}), ["root"]),
    "data-cifar-root-missing": (spec(data=lambda tmp: {"name": "cifar10", "root": str(tmp / "nope")}),
                                ["data.root", "does not exist"]),
    "data-cifar-truncated": (spec(data=cifar_truncated), ["data_batch_3", "not a readable CIFAR pickle"]),
    "data-cifar-wrong-shape": (spec(data=cifar_wrong_shape), ["data_batch_2", "has data of shape (4, 100)"]),
    "data-cifar-label-range": (spec(data=cifar_bad_labels), ["test_batch", "labels outside"]),
    "data-cifar-not-a-dict": (spec(data=cifar_not_a_dict), ["data_batch_1", "not a dict"]),
    "data-imagefolder-one-class": (spec(data=lambda tmp: imagefolder(tmp, ("a",))),
                                   ["has 1 class folder ('a')", "at least 2 class folders"]),
    "data-imagefolder-no-decodable": (spec(data=lambda tmp: imagefolder(tmp, junk=True)),
                                      ["train'", "none of the 4 image files tried decodes"]),
    "data-imagefolder-empty-val": (spec(data=lambda tmp: imagefolder(tmp, val=False)),
                                   ["val'", "has no image files"]),
    "data-synthetic-classes-0": (spec(data={"name": "synthetic", "num_classes": 0}), ["num_classes"]),
    "data-synthetic-shape": (spec(data={"name": "synthetic", "shape": [3, -1, 4]}), ["shape"]),
    "data-grid-bad-second": (spec(data=[{"name": "digits"}, {"name": "mnist"}]), ["data[1].name: 'mnist'"]),
    # model
    "model-empty-grid": (spec(model=[]), ["model: []", "an empty grid runs nothing"]),
    "model-unknown": (spec(model="resnet21"), ["model: 'resnet21'"]),
    "model-no-name": (spec(model={"width": 3}), ["model.name: missing"]),
    "model-int": (spec(model=3), ["model: 3"]),
    "model-unknown-option": (spec(model={"name": "cnn", "depth": 3}), ["model.depth", "unknown key"]),
    "cnn-width-0": (spec(model={"name": "cnn", "width": 0}), ["model.width: 0", "an integer >= 1"]),
    "cnn-width-negative": (spec(model={"name": "cnn", "width": -4}), ["model.width: -4"]),
    "cnn-width-string": (spec(model={"name": "cnn", "width": "abc"}), ["model.width: 'abc'"]),
    "cnn-width-float": (spec(model={"name": "cnn", "width": 1.5}), ["model.width: 1.5"]),
    "cnn-width-bool": (spec(model={"name": "cnn", "width": True}), ["model.width: True"]),
    "mlp-hidden-string": (spec(model={"name": "mlp", "hidden": "abc"}), ["model.hidden: 'abc'"]),
    "mlp-hidden-zero": (spec(model={"name": "mlp", "hidden": [0]}), ["model.hidden: [0]"]),
    "mlp-hidden-empty": (spec(model={"name": "mlp", "hidden": []}), ["model.hidden: []"]),
    "mlp-hidden-negative": (spec(model={"name": "mlp", "hidden": [8, -1]}), ["model.hidden: [8, -1]"]),
    "mlp-hidden-int": (spec(model={"name": "mlp", "hidden": 8}), ["model.hidden: 8"]),
    "resnet-shortcut-int": (spec(model={"name": "resnet20", "shortcut": 3}), ["model.shortcut: 3"]),
    "resnet-shortcut-bogus": (spec(model={"name": "resnet20", "shortcut": "Z"}),
                              ["model.shortcut: 'Z'", "accepted: 'A'"]),
    "model-grid-bad-second": (spec(model=["mlp", "resnet21"]), ["model[1]: 'resnet21'"]),
    "pretrained-missing": (spec(model=lambda tmp: {"name": "mlp", "pretrained": str(tmp / "no.pt")}),
                           ["model.pretrained", "an existing file"]),
    "pretrained-int": (spec(model={"name": "mlp", "pretrained": 3}), ["model.pretrained: 3"]),
    "pretrained-random-bytes": (spec(model=lambda tmp: {"name": "mlp", "pretrained": random_bytes(tmp)}),
                                ["model.pretrained", "random.pt", "not a readable state dict file"]),
    "pretrained-empty-file": (spec(model=lambda tmp: {"name": "mlp", "pretrained": empty_file(tmp)}),
                              ["model.pretrained", "empty.pt", "not a readable state dict file"]),
    "pretrained-a-list": (spec(model=lambda tmp: {"name": "mlp", "pretrained": not_a_state_dict(tmp)}),
                          ["model.pretrained", "list.pt"]),
    # train
    "epochs-negative": (train(epochs=-1), ["train.epochs: -1"]),
    "epochs-string": (train(epochs="x"), ["train.epochs: 'x'"]),
    "epochs-float": (train(epochs=1.5), ["train.epochs: 1.5"]),
    "epochs-bool": (train(epochs=True), ["train.epochs: True"]),
    "batch-0": (train(batch_size=0), ["train.batch_size: 0"]),
    "batch-negative": (train(batch_size=-8), ["train.batch_size: -8"]),
    "batch-string": (train(batch_size="64"), ["train.batch_size: '64'"]),
    "lr-0": (train(lr=0), ["train.lr: 0"]),
    "lr-negative": (train(lr=-0.1), ["train.lr: -0.1"]),
    "lr-nan": (train(lr=float("nan")), ["train.lr: nan"]),
    "lr-inf": (train(lr=float("inf")), ["train.lr: inf"]),
    "lr-string": (train(lr="fast"), ["train.lr: 'fast'"]),
    "finetune-lr-0": (train(finetune_lr=0), ["train.finetune_lr: 0"]),
    "momentum-1": (train(momentum=1.0), ["train.momentum: 1.0"]),
    "momentum-negative": (train(momentum=-0.5), ["train.momentum: -0.5"]),
    "weight-decay-negative": (train(weight_decay=-1), ["train.weight_decay: -1"]),
    "gamma-0": (train(gamma=0), ["train.gamma: 0"]),
    "gamma-2": (train(gamma=2), ["train.gamma: 2"]),
    "schedule-unknown": (train(schedule="linear"), ["train.schedule: 'linear'"]),
    "milestones-zero": (train(milestones=[0]), ["train.milestones: [0]"]),
    "milestones-decreasing": (train(milestones=[3, 2]), ["train.milestones: [3, 2]"]),
    "milestones-string": (train(milestones="3"), ["train.milestones: '3'"]),
    "augment-string": (train(augment="yes"), ["train.augment: 'yes'"]),
    "amp-int": (train(amp=1), ["train.amp: 1"]),
    "channels-last-string": (train(channels_last="no"), ["train.channels_last: 'no'"]),
    "sync-bn-on-cpu": (train(sync_bn=True), ["train.sync_bn: True"]),
    "compile-unknown": (train(compile="turbo"), ["train.compile: 'turbo'"]),
    "train-unknown-key": (train(epocs=3), ["train.epocs", "did you mean 'epochs'"]),
    "train-a-list": (spec(train=[1]), ["train: [1]"]),
    # resources
    "cpus-0": (spec(resources={"cpus": 0}), ["resources.cpus: 0"]),
    "cpus-negative": (spec(resources={"cpus": -1}), ["resources.cpus: -1"]),
    "cpus-string": (spec(resources={"cpus": "all"}), ["resources.cpus: 'all'"]),
    "gpus-negative": (spec(resources={"gpus": -1}), ["resources.gpus: -1"]),
    "gpus-1.5": (spec(resources={"gpus": 1.5}), ["resources.gpus: 1.5"]),
    "workers-0": (spec(resources={"workers": 0}), ["resources.workers: 0"]),
    "workers-gpus-mismatch": (spec(resources={"workers": 2, "gpus": 1}), ["resources.gpus: 1"]),
    "resources-unknown-key": (spec(resources={"memory": 3}), ["resources.memory", "unknown key"]),
    "batch-not-multiple-of-workers": (spec(resources={"workers": 3}, train={"epochs": 1, "batch_size": 64}),
                                      ["batch_size: 64", "a multiple of resources.workers (3)"]),
    "cpus-beyond-the-machine": (spec(resources={"cpus": 100 * CPUS}),
                                [f"needs {100 * CPUS} CPU", "this machine has 1 node", "accepted: what the"]),
    "gpus-beyond-the-machine": (spec(resources={"gpus": 1} if _gpus() == 0 else {"gpus": _gpus() + 1}),
                                ["resources: ", "GPU", "this machine has 1 node"]),
    "workers-beyond-the-machine": (spec(resources={"cpus": 2 * CPUS + 2, "workers": 2}),
                                   ["needs 2 workers of", "this machine has 1 node"]),
    # measure
    "latency-device-tpu": (spec(measure={"latency_device": "tpu"}), ["measure.latency_device: 'tpu'"]),
    "latency-cuda-without-gpus": (spec(measure={"latency_device": "cuda"}), ["measure.latency_device: 'cuda'"]),
    "latency-dtype": (spec(measure={"latency_dtype": "int8"}), ["measure.latency_dtype: 'int8'"]),
    "latency-batch-0": (spec(measure={"latency_batch": 0}), ["measure.latency_batch: 0"]),
    "latency-repeats-0": (spec(measure={"latency_repeats": 0}), ["measure.latency_repeats: 0"]),
    "latency-layout": (spec(measure={"latency_layout": "bogus"}), ["measure.latency_layout: 'bogus'"]),
    "measure-unknown-key": (spec(measure={"repeats": 3}), ["measure.repeats", "unknown key"]),
    # methods
    "method-unknown": (spec(methods=[{"name": "tpr"}]), ["methods[0].name: 'tpr'", "did you mean 'trp'"]),
    "method-no-name": (spec(methods=[{"scheme": "channel"}]), ["methods[0].name: missing"]),
    "method-int": (spec(methods=[3]), ["methods[0]: 3"]),
    "method-unknown-param": (method(name="svd", bogus=1), ["bogus"]),
    "method-empty-param-grid": (method(name="svd", finetune_epochs=[]), ["finetune_epochs: []"]),
    "method-empty-model-grid": (spec(methods=[{"name": "dense", "model": []}]),
                                ["methods[0](dense).model: []", "empty grid"]),
    "method-empty-data-grid": (spec(methods=[{"name": "dense", "data": []}]),
                               ["methods[0](dense).data: []", "empty grid"]),
    "trp-energy-1.5": (method(name="trp", energy=1.5), ["energy", "1.5"]),
    "trp-scheme": (method(name="trp", scheme="diagonal"), ["scheme", "'diagonal'"]),
    "trp-export-speedup-1": (method(name="trp", export="speedup:1.0"), ["export", "'speedup:1.0'"]),
    "trp-export-unreachable": (method(name="trp", export="speedup:1000"), ["export", "not reachable"]),
    "svd-rule-speedup-0.5": (method(name="svd", rule="speedup:0.5"), ["rule", "'speedup:0.5'"]),
    "svd-rule-unreachable": (method(name="svd", rule="speedup:1000"),
                             ["methods[0](svd).rule: 'speedup:1000.0'", "not reachable", "speedup up to"]),
    "svd-rule-garbage": (method(name="svd", rule="fast"), ["rule", "'fast'"]),
    "svd-finetune-negative": (method(name="svd", finetune_epochs=-1), ["finetune_epochs", "-1"]),
    "arsvd-energy-0": (method(name="arsvd", rule="energy:0"), ["rule", "'energy:0'"]),
    "deeptwist-period-negative": (method(name="deeptwist", period=-5), ["period", "-5"]),
    "deeptwist-export-unreachable": (method(name="deeptwist", export="speedup:1000"), ["export", "not reachable"]),
    "method-train-bad": (spec(methods=[{"name": "dense", "train": {"lr": -1}}]), ["methods[0](dense).train.lr: -1"]),
    "method-model-bad": (spec(methods=[{"name": "dense", "model": {"name": "cnn", "width": 0}}]),
                         ["methods[0](dense).model.width: 0"]),
    # a long bad value is quoted capped, not whole
    "long-value-capped": (spec(sweep="/" * 5000), ["sweep: '////", "(5002 characters)"]),
}

# command lines: argv builder (tmp, spec path) -> words
ARGV: dict[str, tuple[Callable[[Path, str], list[str]], list[str]]] = {
    "spec-missing": (lambda tmp, s: ["run", str(tmp / "nope.yaml")], ["spec: ", "no such file"]),
    "spec-a-folder": (lambda tmp, s: ["run", str(tmp)], ["spec: ", "is a folder"]),
    "spec-binary": (lambda tmp, s: ["run", random_bytes(tmp)], ["spec: ", "not text"]),
    "max-concurrent-0": (lambda tmp, s: ["run", s, "--max-concurrent", "0"], ["--max-concurrent: 0"]),
    "wait-for-nodes-negative": (lambda tmp, s: ["run", s, "--wait-for-nodes", "-1"], ["--wait-for-nodes: -1.0"]),
    "address-garbage": (lambda tmp, s: ["run", s, "--address", "garbage::"], ["--address: 'garbage::'"]),
    "address-no-port": (lambda tmp, s: ["run", s, "--address", "ray://head"], ["--address: 'ray://head'"]),
    "address-port-range": (lambda tmp, s: ["run", s, "--address", "head:99999"], ["--address: 'head:99999'"]),
    "address-scheme": (lambda tmp, s: ["run", s, "--address", "http://head:80"], ["--address: 'http://head:80'"]),
    # a well-formed address nobody answers at: refused at once, not after ray.init's minute of retries
    "address-nobody-listening": (lambda tmp, s: ["run", s, "--address", f"127.0.0.1:{_free_port()}"],
                                 ["--address: '127.0.0.1:", "nothing answers there"]),
    "storage-bogus-uri": (lambda tmp, s: ["run", s, "--storage", "bogus://x/y"], ["storage: 'bogus://x/y'"]),
    "results-is-a-file": (lambda tmp, s: ["run", s, "--results", empty_file(tmp)], ["results: ", "cannot create"]),
    "show-bad-seed": (lambda tmp, s: ["show", _write(tmp, spec(seeds=[2**32])(tmp))], ["seeds: [4294967296]"]),
    "show-bogus-uri": (lambda tmp, s: ["show", s, "--storage", "bogus://x"], ["storage: 'bogus://x'"]),
    "report-missing-folder": (lambda tmp, s: ["report", str(tmp / "none")], ["results: ", "does not exist"]),
    "report-bogus-uri": (lambda tmp, s: ["report", "bogus://x/y"], ["storage: 'bogus://x/y'"]),
    "report-empty-folder": (lambda tmp, s: ["report", str(_mkdir(tmp / "r"))], ["results: ", "no result rows"]),
    "report-out-onto-a-file": (lambda tmp, s: ["report", str(tmp / "none"), "--paper", "trp-cifar10-resnet20",
                                                "--out", empty_file(tmp)], ["report: ", "empty.pt", "accepted: a writable folder"]),
    "report-two-folders-no-out": (lambda tmp, s: ["report", str(tmp), str(tmp)], ["--out: ", "needed when several"]),
}


def _free_port() -> int:
    """A local TCP port nothing listens on (bound, read, closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write(tmp: Path, text: str) -> str:
    f = tmp / "other.yaml"
    f.write_text(text)
    return str(f)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _error_line(rc: int, out: str, err: str) -> str:
    """The one ``error:`` line of a refused command (exit 2, no traceback)."""
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    return lines[0]


def test_the_table_holds_at_least_100_bad_inputs():
    assert len(CASES) + len(ARGV) + 1 >= 100


@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec_exits_2_with_one_line_and_runs_nothing(case, tmp_path, capsys, no_run):
    build, needles = CASES[case]
    f = tmp_path / "bad.yaml"
    f.write_text(build(tmp_path))
    rc = main(["run", str(f), "--results", str(tmp_path / "res")])
    cap = capsys.readouterr()
    line = _error_line(rc, cap.out, cap.err)
    assert [n for n in needles if n not in line] == [], line
    assert len(line) < 700, line                       # a value is quoted capped
    assert cap.out == ""
    assert not (tmp_path / "res").exists()             # refused before any folder was made


@pytest.mark.parametrize("case", list(ARGV))
def test_bad_command_line_exits_2_with_one_line(case, tmp_path, capsys, no_run):
    build, needles = ARGV[case]
    good = tmp_path / "good.yaml"
    good.write_text(spec()(tmp_path))
    argv = build(tmp_path, str(good))
    if argv[0] == "run" and "--results" not in argv and "--storage" not in argv:
        argv += ["--results", str(tmp_path / "res")]
    rc = main(argv)
    cap = capsys.readouterr()
    line = _error_line(rc, cap.out, cap.err)
    assert [n for n in needles if n not in line] == [], line


def test_ray_address_from_the_environment_is_checked_too(tmp_path, capsys, no_run, monkeypatch):
    good = tmp_path / "good.yaml"
    good.write_text(spec()(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "garbage::")
    rc = main(["run", str(good), "--results", str(tmp_path / "res")])
    cap = capsys.readouterr()
    line = _error_line(rc, cap.out, cap.err)
    assert "--address: 'garbage::'" in line and "accepted: auto, local, HOST:PORT" in line, line


def test_show_previews_a_spec_with_an_unreadable_pretrained_file_and_names_it(tmp_path, capsys, no_run):
    # `show` is a preview (files may not be there yet): the trials are listed, the file is named
    # in a warning and nothing is raised; `run` refuses the same spec (case pretrained-random-bytes)
    bad = _write(tmp_path, spec(model={"name": "mlp", "pretrained": random_bytes(tmp_path)})(tmp_path))
    rc = main(["show", bad, "--results", str(tmp_path / "res")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "model.pretrained" in cap.out + cap.err and "not a readable state dict file" in cap.out + cap.err
    assert "Traceback" not in cap.out + cap.err


def test_ray_client_address_without_ray_client_installed_says_how_to_get_it(tmp_path):
    # an interpreter where grpc (what ray[client] adds) cannot be found: a meta path finder
    # hides it, as a machine without the extra would
    import subprocess
    import sys

    good = tmp_path / "good.yaml"
    good.write_text(spec()(tmp_path))
    code = (
        "import sys\n"
        "class NoGrpc:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'grpc' or name.startswith('grpc.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, NoGrpc())\n"
        "from rankbench.bench.cli import main\n"
        f"sys.exit(main(['run', {str(good)!r}, '--results', {str(tmp_path / 'res')!r}, "
        "'--address', 'ray://head:10001']))\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                       cwd=Path(__file__).resolve().parents[2])
    line = _error_line(r.returncode, r.stdout, r.stderr)
    assert "--address: 'ray://head:10001'" in line and "pip install 'ray[client]'" in line, line
    assert not (tmp_path / "res").exists()


def _serve(reply: Callable[[Any], None]) -> int:
    """A local TCP server whose every connection is handed to ``reply``; returns its port."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=reply, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return server.getsockname()[1]


def _http_reply(conn: Any) -> None:
    conn.recv(1024)
    conn.sendall(b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Length: 0\r\n\r\n")
    conn.close()


def test_address_of_a_web_port_is_refused_at_once_and_named(tmp_path, capsys, no_run):
    # the dashboard's port (8265) in place of the GCS's is the usual slip: it accepts TCP, so
    # only the protocol tells it from a cluster
    port = _serve(_http_reply)
    good = _write(tmp_path, spec()(tmp_path))
    rc = main(["run", good, "--results", str(tmp_path / "res"), "--address", f"127.0.0.1:{port}"])
    cap = capsys.readouterr()
    line = _error_line(rc, cap.out, cap.err)
    assert f"--address: '127.0.0.1:{port}'" in line and "answers HTTP/1" in line and "6379" in line, line
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("reply, needle", [
    (lambda conn: None, "does not answer as a Ray cluster (gRPC) within 0.5 s"),      # accepts, stays silent
    (lambda conn: conn.close(), "without answering"),                               # accepts, hangs up
    (lambda conn: (conn.recv(64), conn.sendall(b"-ERR unknown command\r\n")), "not as a Ray cluster"),  # redis
])
def test_address_that_accepts_but_is_not_ray_is_refused(reply, needle):
    from rankbench.bench.checks import UserError
    from rankbench.bench.running.address import check_listening

    conns: list[Any] = []                     # keep the silent server's sockets open
    port = _serve(lambda conn: (conns.append(conn), reply(conn)))
    with pytest.raises(UserError) as e:
        check_listening(f"127.0.0.1:{port}", timeout=0.5)
    assert needle in str(e.value) and f"'127.0.0.1:{port}'" in str(e.value), str(e.value)


def test_address_of_a_running_ray_cluster_passes_the_check(ray_session):
    from rankbench.bench.running.address import check_listening

    check_listening(ray_session.get_runtime_context().gcs_address)   # raises if refused


def test_address_check_with_tls_only_tries_the_connection(monkeypatch):
    # a TLS cluster expects a ClientHello, not a plaintext preface: the probe would refuse it
    from rankbench.bench.running.address import check_listening

    monkeypatch.setenv("RAY_USE_TLS", "1")
    conns: list[Any] = []
    check_listening(f"127.0.0.1:{_serve(conns.append)}", timeout=0.5)   # silent, and passes
