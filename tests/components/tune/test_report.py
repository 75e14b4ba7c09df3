"""The tuning report: every section for a finished and for a partly failed search, the importance
table it derives, and in a real browser (headless Chromium): every plot drawn, no console error."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from components.tune import report
from components.tune.report import ReportSearch, ReportTrial

SECTIONS = ("Best score so far against epochs spent", "Score against each hyperparameter",
            "All completed trials (parallel coordinates)", "Hyperband brackets and rounds",
            "Hyperparameter importance", "Failed and invalid trials", "Every trial")
PLOTS = ("plot-progress", "plot-scores", "plot-parallel", "plot-brackets")


def a_search(failed: bool) -> ReportSearch:
    trials = []
    for index in range(9):
        learning_rate = [0.001, 0.01, 0.1][index % 3]
        hyperparameters = {"learning_rate": learning_rate, "architecture": ["mlp", "residual"][index % 2]}
        if index % 2 == 0:
            hyperparameters["mlp.units_0"] = 8 * (index + 1)
        score = 0.6 + 3 * learning_rate + 0.001 * index  # the learning rate is what matters
        trials.append(ReportTrial(f"{index:04d}", "completed", score, hyperparameters, epochs=3, bracket=index % 2,
                                  round=index % 3 // 2, max_epoch=3 * (1 + index % 3), duration_s=1.5))
    if failed:
        trials.append(ReportTrial("0009", "failed", None, {"learning_rate": 1e9, "architecture": "mlp"}, epochs=1,
                                  error="the training loss became nan in epoch 1: training diverged"))
        trials.append(ReportTrial("0010", "invalid", None, {"learning_rate": 0.1, "architecture": "residual"},
                                  epochs=0, error="ValueError: cannot build"))
    return ReportSearch("Tuning report", "val_accuracy", "max", trials, {"mlp.units_0": "architecture in mlp"})


@pytest.mark.parametrize("failed", [False, True], ids=["finished", "partly failed"])
def test_every_section_is_there(failed):
    page = report.render(a_search(failed))
    for section in SECTIONS:
        assert section in page
    for plot in PLOTS:
        assert f'id="{plot}"' in page
    # plotly.js inlined once, nothing fetched at view time.
    assert page.count("plotly.js v") == 1 and "<script src=" not in page and "<link " not in page
    assert ("training diverged" in page) == failed and ("None: every trial completed" in page) == (not failed)
    assert "mlp.units_0" in page and "architecture in mlp" in page


def test_importance_finds_the_hyperparameter_the_scores_follow():
    ranked = report.importance(a_search(failed=True))
    assert ranked[0][0] == "learning_rate" and ranked[0][1] > 0.95
    assert {name for name, _, _ in ranked} == {"learning_rate", "architecture", "mlp.units_0"}
    units = next(item for item in ranked if item[0] == "mlp.units_0")
    assert units[2] == 5  # measured over the trials where it is active


def chromium_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("headless Chromium is needed: apt-get install chromium chromium-driver (make test does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,4000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_report_of_a_real_search_draws_every_plot_in_a_browser(penguin_inputs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from components.tune import artifact, step as tune
    from tests.tiny_search import tiny_config

    result = tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning", tiny_config(),
                      work_dir=tmp_path / "work")
    page = Path(result.path, report.REPORT)
    driver = chromium_driver()
    try:
        driver.get(page.as_uri())
        for plot in PLOTS:
            WebDriverWait(driver, 30).until(
                lambda found, plot=plot: found.find_elements(By.CSS_SELECTOR, f"#{plot} .main-svg"))
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        if os.environ.get("TUNEPIPE_REPORT_SCREENSHOT"):
            driver.save_screenshot(os.environ["TUNEPIPE_REPORT_SCREENSHOT"])
    finally:
        driver.quit()
    assert artifact.REPORT == report.REPORT
