"""Method plugins installed from outside the repository: a distribution laid out as pip installs it
(package directory + ``NAME-0.1.dist-info/METADATA`` + ``entry_points.txt``) in a temp dir on
PYTHONPATH, and the ``rankbench`` command run against it in a subprocess: the conformance suite
passes for a good plugin; a broken one is skipped with a one-line warning; a name clash or a
target that is not a Method is a one-line error naming both."""
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
    assert warnings == ["warning: method plugin 'broken-plugin' (brokenplug:Method) skipped: "
                        "ModuleNotFoundError: No module named 'not_a_module_anywhere'"], out.stderr
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


def test_a_plugin_taking_a_builtin_name_is_an_error_naming_both(tmp_path):
    install(tmp_path, "clashplug", EXAMPLE.read_text().replace('"example-lowrank"', '"clash"'),
            {"trp": "clashplug:ExampleLowRank"})
    out = rankbench(tmp_path, "methods")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == ("error: rankbench.methods: trp = clashplug:ExampleLowRank: name 'trp' is taken "
                                  "by rankbench.methods.trp.TRP; accepted: a name no built-in or other plugin method uses")


def test_a_plugin_whose_target_is_not_a_method_is_an_error_naming_both(tmp_path):
    install(tmp_path, "notplug", "def helper():\n    pass\n", {"helper": "notplug:helper"})
    out = rankbench(tmp_path, "methods")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: rankbench.methods: helper = notplug:helper: notplug.helper is not a "
                                  "subclass of rankbench.methods.api.base.Method; accepted: a Method subclass, or a module whose "
                                  "import registers one under this name")


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
    assert shown.returncode == 2 and "its plugin failed to import" in shown.stderr, shown.stderr
