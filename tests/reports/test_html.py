"""``rankbench report --html``: one self-contained page. Checked as text (escaping, every trial,
no address to load) and in a real headless chromium driven by selenium: it loads with no console
error and no request but the file itself, a header click sorts the table, a trial row opens.
The browser test skips, saying why, where selenium or chromium is not installed (.ci/run
installs both)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from rankbench.reports import html
from rankbench.reports.cli import main_report
from rankbench.reports.collate import load_results
from rows import make_row, write_rows

# a label from someone else's storage: run as a script, it would set window.__pwned
HOSTILE = "<script>window.__pwned=1</script>"
SVD = {"scheme": "channel", "rule": "speedup:2.0"}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, list[dict], Path]:
    """The sweep of :func:`_results`, its rows and its page (written once for this file's tests)."""
    sweep, rows = _results(tmp_path_factory.mktemp("html"))
    return sweep, rows, html.write_html(load_results(sweep), sweep.parent / "quick.html", [str(sweep)])


def _results(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A sweep of digits/cnn rows (no published table covers it): dense, svd and a trp whose
    label is a script, three seeds each, one failed trial; logs of 60 lines for two trials."""
    kw = {"dataset": "digits", "model": "cnn", "macs": 747_000, "dense_macs": 747_000}
    rows = [make_row(method="dense", seed=s, top1=t, **kw) for s, t in enumerate((91.0, 92.0, 90.0))]
    kw["macs"] = 374_000
    rows += [make_row(method="svd", seed=s, top1=t, params=SVD, **kw) for s, t in enumerate((80.0, 81.5, 79.0))]
    rows += [make_row(method="trp", seed=s, top1=t, params={"scheme": "spatial"}, label=HOSTILE, **kw)
             for s, t in enumerate((85.0, 86.0, 84.0))]
    rows.append(make_row(method="trp", seed=3, params={"scheme": "spatial"}, label=HOSTILE, status="failed",
                         error="RuntimeError: <b>loss is nan</b>", **kw))
    root = write_rows(tmp_path / "results", rows)
    logs = root / "quick" / "logs"
    logs.mkdir()
    for r in (rows[0], rows[6]):
        lines = [f"line {i} of {r['trial_id']}" for i in range(60)] + ["<img src=//example.invalid/x.png> done"]
        (logs / f"{r['trial_id']}.log").write_text("\n".join(lines) + "\n")
    return root / "quick", rows


def test_the_page_escapes_row_text_holds_every_trial_and_names_no_address(results):
    sweep, rows, page = results
    text = page.read_text(encoding="utf-8")
    assert text.count("<script") == 1                          # the page's own sort script, nothing else
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    assert "&lt;b&gt;loss is nan&lt;/b&gt;" in text and "<b>" not in text
    assert "&lt;img src=//example.invalid/x.png&gt; done" in text and "<img" not in text
    assert all(text.count(r["trial_id"]) >= 1 for r in rows)
    assert text.count('<details class="trial">') == len(rows)
    assert not re.search(r"https?://", text), re.search(r".{60}https?://.{60}", text)
    assert f'<meta http-equiv="Content-Security-Policy" content="{html.esc(html.CSP)}">' in text
    assert html.CSP.startswith("default-src 'none';") and "<svg" in text and "<?xml" not in text
    # the log tail: its last 40 lines, not the first 21
    assert f"line 59 of {rows[0]['trial_id']}" in text and f"line 20 of {rows[0]['trial_id']}" not in text
    # the summary holds the numbers `rankbench report` prints, sortable by their value
    assert '<td class="num" data-v="91.0">91.00 ± 2.48</td>' in text
    assert "Paired comparisons" in text and "svd[rule=speedup:2.0,scheme=channel]" in text.replace("<wbr>", "")


def test_sort_values_read_the_number_a_cell_shows():
    assert html.sort_value("97.22 ± 1.20") == 97.22
    assert html.sort_value("13.98 [0.00, 31.11]†") == 13.98
    assert html.sort_value("747K") == 747_000 and html.sort_value("1.00M") == 1_000_000
    assert html.sort_value("3.1 min") == pytest.approx(186.0) and html.sort_value("2.00x") == 2.0
    assert html.sort_value("3 (+1 failed)") == 3 and html.sort_value("-") is None
    assert html.sort_value("svd (finetune_epochs=2)") is None and html.sort_value("speedup:2.0") is None
    assert html.sort_value("16x3x3x3") is None                  # a shape is a text


def test_report_html_writes_the_page_with_the_umask_and_a_paper_diff_where_rows_fit(tmp_path, capsys):
    rows = [make_row(method="dense", seed=s, top1=91.0 + s) for s in range(2)]      # cifar10 / resnet20
    root = write_rows(tmp_path / "results", rows)
    old = os.umask(0o027)
    try:
        assert main_report([str(root / "quick"), "--html", str(tmp_path / "page" / "r.html"),
                            "--out", str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    page = tmp_path / "page" / "r.html"
    assert f"page written: {page}" in capsys.readouterr().out
    assert page.stat().st_mode & 0o777 == 0o640
    assert "published vs ours" in page.read_text()              # trp-cifar10-resnet20 covers these rows
    assert main_report([str(tmp_path / "empty"), "--html", str(tmp_path / "x.html")]) == 2
    assert not (tmp_path / "x.html").exists()


# ---------------------------------------------------------------------------- in a browser

def _driver():
    """Headless chromium under selenium, logging the console and the network; skips with the reason."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    if not browser or not driver:
        pytest.skip("no chromium and chromedriver to drive (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--disable-gpu", "--window-size=1400,1000", "--no-first-run"):
        options.add_argument(arg)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")           # chromium refuses to run sandboxed as root
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _requests(driver) -> list[str]:
    """The URL of every request the page made since the last read (DevTools Network events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_the_page_in_chromium_loads_offline_sorts_and_opens_a_trial(results):
    sweep, rows, page = results
    driver = _driver()
    from selenium.webdriver.common.by import By

    try:
        driver.get(page.resolve().as_uri())
        assert _requests(driver) == [page.resolve().as_uri()]       # the document itself, nothing else
        assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
        assert driver.execute_script("return window.__pwned") is None
        assert HOSTILE in driver.find_element(By.ID, "summary").find_element(By.XPATH, "..").text

        table = driver.find_element(By.CSS_SELECTOR, "table.sortable")
        heads = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
        col = heads.index("Top-1 (%)")

        def top1() -> list[float]:
            return [float(tr.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-v"))
                    for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        before = top1()
        assert before != sorted(before)                              # dense first, as printed
        table.find_elements(By.CSS_SELECTOR, "thead th")[col].click()
        assert top1() == sorted(before)
        table.find_elements(By.CSS_SELECTOR, "thead th")[col].click()
        assert top1() == sorted(before, reverse=True)

        trial = driver.find_element(By.CSS_SELECTOR, "details.trial")
        log_line = f"line 59 of {rows[0]['trial_id']}"
        assert trial.get_attribute("open") is None and log_line not in trial.text
        trial.find_element(By.TAG_NAME, "summary").click()
        assert trial.get_attribute("open") is not None
        assert log_line in trial.text and "layer1.0.conv1" in trial.text
        assert _requests(driver) == [] and driver.get_log("browser") == []
    finally:
        driver.quit()
