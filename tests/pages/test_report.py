"""report.html of the tiny quickstart, opened in headless Chromium: what a colleague sees."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from browser import browser_page
from conftest import REPO, cli

pytestmark = pytest.mark.usefixtures("prefect_api")
DOCS = REPO / "docs"
RUN_ORDER = ["synthesize", "dedup", "score", "train", "probe", "merge", "convert", "verify", "eval", "serve"]


def _open(page: object, run_dir: Path) -> None:
    page.goto((run_dir / "report.html").as_uri())  # type: ignore[attr-defined]
    page.wait_for_load_state("load")  # type: ignore[attr-defined]


def test_the_tiny_quickstart_report_reads_well(project: Path, tmp_path: Path) -> None:
    shutil.copytree(REPO / "recipes", project / "recipes", dirs_exist_ok=True)
    res = cli("run", "recipes/tiny_debug.yaml", "-q", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = Path(res.stdout.strip())
    manifest = json.loads((run_dir / "replay.json").read_text())
    with browser_page(width=1200, height=900) as page:
        _open(page, run_dir)
        assert "tiny-debug" in page.title()
        rows = page.locator("table.steps").locator("tr").all_inner_texts()[1:]
        assert [r.split("\t")[0] for r in rows] == RUN_ORDER  # steps in the order they run
        results = page.locator("table").first.locator("tr").all_inner_texts()  # the probe's results lead the page
        assert results[0].split("\t")[:3] == ["metric", "base", "tuned"] and results[1].startswith("pass@1")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1200, "the page overflows a 1200-px window"
        images = page.evaluate("[...document.images].map(i => [i.alt, i.naturalWidth, i.getBoundingClientRect().width])")
        assert {alt.split(":")[0] for alt, _, _ in images} >= {"train", "probe", "verify", "eval"}  # curves, gate, drift, eval
        assert all(natural > 0 and 0 < shown <= 1150 for _, natural, shown in images), images
        text = page.inner_text("body")
        assert not re.search(r"\d\.\d{5,}", text), "raw floats on the page"
        assert "gate passed" in text and "kl_mean" in text
        assert "is the export broken?" in text and "what does q8 cost this model?" in text  # verify's two verdicts
        assert "model=tiny" in text and "git:" in text  # the overrides and the commit at the top
        links = page.evaluate("[...document.links].map(a => a.getAttribute('href'))")
        assert manifest["prefect"]["ui_url"] in links
        assert all((run_dir / href).exists() for href in links if href.startswith(("logs/", "steps/")))
        page.screenshot(path=str(tmp_path / "report.png"))
    if os.environ.get("HALO_PIPELINE_WRITE_SCREENSHOTS") == "1":
        (DOCS / "img").mkdir(exist_ok=True)
        shutil.copy(tmp_path / "report.png", DOCS / "img/report.png")

    # a run whose probe gate fails: the failure in red with its first line, what it skipped in grey
    failed = cli("run", "recipes/tiny_debug.yaml", "-q", "+steps.probe.with.min_improvement={pass@1: 0.5}", cwd=project)
    assert failed.returncode == 1
    with browser_page(width=1200, height=900) as page:
        _open(page, Path(failed.stdout.strip()))
        red = page.locator("tr.failed")
        assert red.count() == 1 and red.first.inner_text().startswith("probe")
        assert "the candidate regressed" in red.first.inner_text()
        assert page.locator("tr.failed td").first.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
        assert "skipped: upstream step probe failed" in page.inner_text("body")
