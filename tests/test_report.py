"""The report site in a real browser (headless Chromium): pages load cleanly, thumbnails
render, a click shows the prompt, hostile class names stay text; and the comparison page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import OFFLINE_CONFIG, cli, invoke, one_line, set_args
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from diversynth.run.rundir import RunDir, read_jsonl
from diversynth.stages.report.browser import chromium, file_url

HOSTILE = "<img src=x onerror=alert(1)>\"'&"


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def all_thumbnails_rendered(driver) -> bool:
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy images
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('.thumb img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
    )


def test_overview_and_class_page_load_cleanly(browser, finished_run: Path) -> None:
    site = finished_run / "report"
    browser.get(file_url(site / "index.html"))
    assert console_errors(browser) == []
    evaluation = json.loads((finished_run / "eval.json").read_text())
    top1 = evaluation["sets"]["fashion-mnist/test"]["top1"]
    assert str(top1) in browser.find_element(By.ID, "evaluation").text
    # the classes of lowest top-1, lowest first, each linking to its page
    per_class = evaluation["sets"]["fashion-mnist/test"]["class_top1"]
    lowest = min(range(10), key=lambda i: (per_class[i], i))
    worst = browser.find_elements(By.CSS_SELECTOR, "#worst-classes a")
    assert len(worst) == 10 and worst[0].get_attribute("href").endswith(f"{lowest:05d}.html")
    strategies = browser.find_element(By.ID, "strategies").text
    assert "contextualized (CD)" in strategies and "stylized (SD)" in strategies
    # the copies of the worked example the prompts stage dropped, per strategy
    summary = json.loads((finished_run / ".state" / "prompts.json").read_text())["summary"]
    cd_row = next(r for r in strategies.splitlines() if r.startswith("contextualized (CD)"))
    assert "rejected as copies" in strategies
    assert cd_row.split()[-2] == str(summary["copies_rejected"]["cd"])
    plots = browser.find_elements(By.CSS_SELECTOR, ".plots img")
    assert plots and all(
        browser.execute_script("return arguments[0].naturalWidth", p) for p in plots
    )
    # the class table links to a page per class; follow the last one
    links = browser.find_elements(By.CSS_SELECTOR, "#classes a")
    assert [a.text for a in links][-1] == "Ankle boot"
    links[-1].click()
    assert browser.current_url.endswith("/classes/00009.html")
    assert browser.find_element(By.CSS_SELECTOR, ".chosen-name").text == "Ankle boot"
    assert console_errors(browser) == []
    WebDriverWait(browser, 10).until(all_thumbnails_rendered)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".thumb img")) == 10  # all of them
    # the class's own top-1, as evaluate recorded it
    evaluation = json.loads((finished_run / "eval.json").read_text())["sets"]
    expected = evaluation["fashion-mnist/test"]["class_top1"][9]
    accuracy = browser.find_element(By.ID, "class-accuracy").text
    assert f"fashion-mnist/test {expected:.2f}" in accuracy


def test_clicking_a_thumbnail_shows_its_prompt(browser, finished_run: Path) -> None:
    prompts = {p["prompt_id"]: p["text"] for p in read_jsonl(finished_run / "prompts.jsonl")}
    browser.get(file_url(finished_run / "report" / "classes" / "00003.html"))
    thumbs = browser.find_elements(By.CSS_SELECTOR, ".thumb")
    detail = browser.find_element(By.ID, "detail")
    assert not detail.is_displayed()
    for thumb in (thumbs[0], thumbs[-1]):
        key = thumb.get_attribute("data-key")
        prompt_id = int(re.match(r"p(\d+)_i\d+", key).group(1))
        browser.execute_script("arguments[0].scrollIntoView()", thumb)
        thumb.click()
        assert detail.is_displayed()
        assert detail.find_element(By.CSS_SELECTOR, ".prompt").text == prompts[prompt_id]
        assert key in detail.find_element(By.CSS_SELECTOR, ".meta").text


@pytest.mark.slow
def test_hostile_class_names_show_as_text(
    browser, tmp_path: Path, kit_overrides: list[str]
) -> None:
    names = [HOSTILE, "../../etc/passwd", "a/b", "Trouser"]
    config = yaml.safe_load(OFFLINE_CONFIG.read_text())
    config["classes"] = {"names": names}
    config["prompts"]["shares"] = {"naive": 1}  # templates only: this test is about the page
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = cli("run", str(path), "--out", str(out), "--stages", "classes,prompts,report",
                 *set_args(kit_overrides))  # fmt: skip
    assert result.returncode == 0, result.stderr
    for page in ("index.html", "classes/00000.html"):
        browser.get(file_url(out / "report" / page))
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no script ran alert()
        assert (
            browser.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
        )
        assert HOSTILE in browser.find_element(By.TAG_NAME, "body").text
        assert console_errors(browser) == []
    # nothing was written outside the run directory, and no file is named after a class
    files = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    assert all("passwd" not in f and "onerror" not in f for f in files)
    assert not (tmp_path / "etc").exists()


@pytest.mark.slow
def test_thumbnails_are_made_once(run_copy: Path) -> None:
    thumbs = sorted((run_copy / "report" / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 100
    before = {t: t.stat().st_mtime_ns for t in thumbs}
    result = cli("report", "--run", str(run_copy))
    assert result.returncode == 0, result.stderr
    assert {t: t.stat().st_mtime_ns for t in thumbs} == before


@pytest.mark.slow
def test_reports_written_elsewhere_read_one_run_at_once(run_copy: Path, tmp_path: Path) -> None:
    """Two reports of one run into other folders both run; a report into the run's own
    folder waits for the readers."""
    with RunDir(run_copy).lock(shared=True):  # another report reading the run meanwhile
        code, errors, output = invoke("report", "--run", str(run_copy), "--out",
                                      str(tmp_path / "site"))  # fmt: skip
        assert code == 0 and not errors, output
        assert (tmp_path / "site" / "index.html").is_file()
        line = one_line(1, "report", "--run", str(run_copy))
        assert f"another diversynth process is working in {run_copy}" in line


@pytest.mark.slow
def test_comparison_of_two_scales(browser, run_copy: Path, finished_run: Path, tmp_path: Path,
                                  kit_overrides: list[str]) -> None:  # fmt: skip
    # the same run trained without synthetic images: scale 0
    result = cli("run", str(run_copy / "config.yaml"), "--out", str(run_copy),
                 "--set", "train.synthetic_fraction=0", "--set", "name=real-only")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "compare"
    result = cli("report", "--run", str(finished_run), "--run", str(run_copy), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "plots" / "accuracy_vs_scale.png").is_file()
    assert (out / "plots" / "accuracy_vs_scale.svg").is_file()
    browser.get(file_url(out / "index.html"))
    assert console_errors(browser) == []
    plot = browser.find_element(By.ID, "scale-plot")
    assert browser.execute_script("return arguments[0].naturalWidth", plot) > 0
    runs = browser.find_element(By.ID, "runs").text
    assert "offline-demo" in runs and "real-only" in runs and "0.00" in runs
    table = browser.find_element(By.ID, "differences").text
    assert "fashion-mnist/test" in table and re.search(r"\([+-]\d+\.\d\d\)", table)
    # what differs between the runs, and no warning: the same real data and sets
    differs = browser.find_element(By.ID, "config-differences").text
    assert "train.synthetic_fraction" in differs and "data." not in differs
    assert not browser.find_elements(By.CSS_SELECTOR, ".warning")
    browser.find_element(By.LINK_TEXT, "offline-demo").click()
    assert browser.current_url.endswith("/run-1/index.html") and console_errors(browser) == []


@pytest.mark.slow
def test_a_comparison_of_runs_on_different_real_data_warns_and_draws_no_curve(
    finished_run: Path, tmp_path: Path
) -> None:
    from diversynth.config import ReportConfig
    from diversynth.stages.report.facts import load_run
    from diversynth.stages.report.site import build_comparison, config_differences

    demo, other = load_run(finished_run), load_run(finished_run)
    other.config = {**other.config, "name": "long-tail",
                    "data": {**other.config["data"], "train_limit": 256}}  # fmt: skip
    rows, warnings = config_differences([demo, other])
    assert rows == [{"key": "data.train_limit", "cells": ["1024", "256"]}]
    assert "different real data (data.train_limit differ)" in warnings[0]
    summary = build_comparison([demo, other], tmp_path / "compare", ReportConfig())
    page = (tmp_path / "compare" / "index.html").read_text()
    assert summary["plot"] is None and "Not drawn: the runs train on different real data" in page
    assert 'class="warning"' in page


@pytest.mark.slow
def test_serve_binds_to_loopback(finished_run: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    process = subprocess.Popen(
        [sys.executable, "-m", "diversynth", "report", "--run", str(finished_run),
         "--out", str(site), "--serve", "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            match = re.search(r"serving on (http://127\.0\.0\.1:\d+/)", line)
            url = match.group(1) if match else None
        assert url, "the server did not say where it listens"
        with urllib.request.urlopen(url + "index.html") as response:
            assert response.status == 200 and b"offline-demo" in response.read()
    finally:
        process.terminate()
        process.wait(timeout=10)
    shutil.rmtree(site)
