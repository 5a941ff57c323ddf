"""Method plugins installed from outside the repository: a distribution laid out as pip installs it
(package directory + ``NAME-0.1.dist-info/METADATA`` + ``entry_points.txt``) in a temp dir on
PYTHONPATH, and the ``rankbench`` command run against it in a subprocess: the conformance suite
passes for a good plugin; a bad one (its import fails, its target is not a Method, its name is a
built-in's) is skipped with a one-line warning naming it, its package and the problem, every other
command works, and only a spec asking for its name is refused, saying why."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from procs import install

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = Path(__file__).resolve().parent / "plugin_example.py"


def rankbench(site: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m rankbench.bench ARGS`` from a directory outside the checkout, the plugin dir on PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=str(site))   # rankbench itself: the installed package
    return subprocess.run([sys.executable, "-m", "rankbench.bench", *args], cwd=site, env=env, capture_output=True,
                          text=True, timeout=timeout)


def readme_entry_point() -> tuple[str, str]:
    """The entry point the README's "Writing a method" example declares: (name, module:attr)."""
    doc = (ROOT / "README.md").read_text().split("## Writing a method", 1)[1]
    toml = re.findall(r"```toml\n(.*?)```", doc, re.S)[0].split('[project.entry-points."rankbench.methods"]')[1]
    name, target = re.search(r'^([\w-]+) = "([\w.:]+)"$', toml, re.M).groups()
    return name, target


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A good plugin (the README's example package) and a broken one, installed side by side."""
    site = tmp_path_factory.mktemp("site")
    name, target = readme_entry_point()
    install(site, target.split(":")[0].split(".")[0], EXAMPLE.read_text(), {name: target})
    install(site, "brokenplug", "import not_a_module_anywhere\n", {"broken-plugin": "brokenplug:Method"})
    return site


def test_readme_example_package_is_listed_and_a_broken_plugin_skipped_with_one_warning(site):
    out = rankbench(site, "methods")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^example-lowrank: .*\(trains from scratch; rankbench_example\)$", out.stdout, re.M)
    assert re.search(r"^trp: ", out.stdout, re.M) and "broken-plugin" not in out.stdout
    warnings = [line for line in out.stderr.splitlines() if "broken-plugin" in line]
    assert warnings == ["warning: method plugin 'broken-plugin' (brokenplug:Method, package brokenplug) skipped: "
                        "it failed to import: ModuleNotFoundError: No module named 'not_a_module_anywhere'"], out.stderr
    assert "Traceback" not in out.stderr
    shown = rankbench(site, "show", str(ROOT / "bench" / "configs" / "quick.yaml"))
    assert shown.returncode == 0 and "sweep quick" in shown.stdout and "broken-plugin" in shown.stderr


def test_check_method_runs_the_conformance_suite_against_the_installed_plugin(site):
    out = rankbench(site, "check-method", "example-lowrank")
    assert out.returncode == 0, out.stdout + out.stderr
    for check in ("parameters", "compress", "round-trip", "macs", "full-rank", "hooks", "resume"):
        assert re.search(rf"^ok\s+{check}\b", out.stdout, re.M), out.stdout
    assert "example-lowrank: 7 of 7 checks passed" in out.stdout


def test_check_method_names_an_unknown_method_or_check(site):
    out = rankbench(site, "check-method", "exmaple-lowrank")
    assert out.returncode == 2
    assert "error: method: 'exmaple-lowrank': unknown method (did you mean 'example-lowrank'?)" in out.stderr
    out = rankbench(site, "check-method", "trp", "--check", "speed")
    assert out.returncode == 2 and "error: --check: 'speed': unknown; accepted: parameters, compress" in out.stderr


def spec_of(site: Path, method: str) -> Path:
    spec = site / f"{method}.yaml"
    spec.write_text(f"sweep: s\nmethods: [{{name: {method}}}]\n")
    return spec


def test_a_plugin_taking_a_builtin_name_is_skipped_and_the_builtin_keeps_it(tmp_path):
    # its module registers its class as "clash" on import; its entry point asks for "trp"
    install(tmp_path, "clashplug", EXAMPLE.read_text().replace('"example-lowrank"', '"clash"'),
            {"trp": "clashplug:ExampleLowRank"})
    out = rankbench(tmp_path, "methods")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^trp: .*\(trains from scratch; rankbench\.methods\.trp\)$", out.stdout, re.M), out.stdout
    assert "clash" not in out.stdout and "Traceback" not in out.stderr   # a skipped plugin adds nothing
    assert out.stderr.strip() == ("warning: method plugin 'trp' (clashplug:ExampleLowRank, package clashplug) skipped: "
                                  "it cannot take its name: 'trp' is rankbench.methods.trp.TRP, which keeps it (a plugin "
                                  "names a method no built-in or other plugin uses)")
    shown = rankbench(tmp_path, "show", str(spec_of(tmp_path, "trp")))   # a spec asking for trp: the built-in
    assert shown.returncode == 0 and "sweep s" in shown.stdout, shown.stderr
    assert shown.stderr.count("warning: method plugin 'trp'") == 1


def test_a_plugin_whose_target_is_not_a_method_is_skipped_and_only_a_spec_asking_for_it_refused(tmp_path):
    install(tmp_path, "notplug", "def helper():\n    pass\n", {"helper": "notplug:helper"})
    problem = ("plugin 'helper' (package notplug) is not a Method: notplug.helper is not a subclass of "
               "rankbench.methods.api.base.Method")
    out = rankbench(tmp_path, "methods")
    assert out.returncode == 0 and re.search(r"^trp: ", out.stdout, re.M) and "helper" not in out.stdout, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "helper" in line]
    assert warnings == ["warning: method plugin 'helper' (notplug:helper, package notplug) skipped: it is not a Method: "
                        "notplug.helper is not a subclass of rankbench.methods.api.base.Method (an entry point names "
                        "a Method subclass, or a module whose import registers one under its name)"], out.stderr
    shown = rankbench(tmp_path, "show", str(ROOT / "bench" / "configs" / "quick.yaml"))
    assert shown.returncode == 0 and "sweep quick" in shown.stdout, shown.stderr
    for args in (["show", str(spec_of(tmp_path, "helper"))],
                 ["run", str(spec_of(tmp_path, "helper")), "--results", str(tmp_path / "results")]):
        refused = rankbench(tmp_path, *args)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and problem in errors[0], refused.stderr
    assert not (tmp_path / "results").exists()


def test_a_plugin_whose_import_registers_a_taken_name_is_skipped(tmp_path):
    # the module's own @register("svd") fails on import: the package is skipped, svd stays the built-in
    install(tmp_path, "takeplug", EXAMPLE.read_text().replace('"example-lowrank"', '"svd"'),
            {"mine": "takeplug"})
    out = rankbench(tmp_path, "methods")
    assert out.returncode == 0 and re.search(r"^svd: .*rankbench\.methods\.svd\)$", out.stdout, re.M), out.stderr
    warnings = [line for line in out.stderr.splitlines() if "'mine'" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "warning: method plugin 'mine' (takeplug, package takeplug) skipped: it cannot take its name: method name 'svd': "
        "takeplug.ExampleLowRank cannot take it: already registered by rankbench.methods.svd."), out.stderr
    refused = rankbench(tmp_path, "show", str(spec_of(tmp_path, "mine")))
    assert refused.returncode == 2 and "plugin 'mine' (package takeplug) cannot take its name" in refused.stderr


def test_a_plugin_written_against_the_old_import_names_is_skipped_with_the_new_ones_named(tmp_path):
    install(tmp_path, "oldplug", "from methods.base import Method\n", {"old-plugin": "oldplug:Method"})
    out = rankbench(tmp_path, "methods")
    assert out.returncode == 0 and "old-plugin" not in out.stdout, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "old-plugin" in line]
    assert len(warnings) == 1 and "imports 'methods', a name rankbench no longer installs" in warnings[0], out.stderr
    assert "'rankbench.methods'" in warnings[0] and "Traceback" not in out.stderr
    spec = tmp_path / "s.yaml"
    spec.write_text("sweep: s\nmethods: [{name: old-plugin}]\n")
    shown = rankbench(tmp_path, "show", str(spec))
    assert shown.returncode == 2, shown.stderr
    assert "plugin 'old-plugin' (package oldplug) failed to import: it imports 'methods'" in shown.stderr, shown.stderr


def test_a_lookup_of_a_skipped_plugin_names_its_problem(tmp_path):
    # the registry's own lookup (what build / parameters / choices go through), in a fresh process
    install(tmp_path, "notplug", "def helper():\n    pass\n", {"helper": "notplug:helper"})
    code = ("from rankbench.methods.api.registry import get_method, skipped\n"
            "print(skipped())\n"
            "try:\n    get_method('helper')\nexcept KeyError as e:\n    print(e.args[0])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith("method: 'helper': plugin 'helper' (package notplug) is not a Method: "
                                                 "notplug.helper is not a subclass"), out.stdout
