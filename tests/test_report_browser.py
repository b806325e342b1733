"""Open the quick demo's report.html in headless Chromium: no console errors, every figure renders.

Skipped when no Chromium/Chrome is installed. Shares the session's single quick-demo run with
test_demo.py.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_demo import quick_demo_run


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


CHROMIUM = _chromium()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")]

_CONSOLE_ERROR = re.compile(r"ERROR:CONSOLE|CONSOLE.*(Uncaught|Error|Failed|Refused|net::ERR)", re.I)


@pytest.fixture(scope="module")
def report(tmp_path_factory, default_model) -> Path:
    return quick_demo_run(tmp_path_factory, default_model)["out"] / "report.html"


def _chrome(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=8000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_report_renders_without_console_errors(report, tmp_path):
    shot = tmp_path / "report.png"
    proc = _chrome(["--window-size=1400,3000", f"--screenshot={shot}", report.as_uri()], tmp_path)
    errors = [line for line in proc.stderr.splitlines() if _CONSOLE_ERROR.search(line)]
    assert not errors, "\n".join(errors)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000


def test_every_figure_is_drawn_offline(report, tmp_path):
    proc = _chrome(["--dump-dom", report.as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if _CONSOLE_ERROR.search(line)]
    assert not errors, "\n".join(errors)
    n_figures = report.read_text().count('<div class="figure">')
    assert n_figures >= 10
    # plotly draws each figure into a "plot-container" only when its (inline) JS ran
    assert proc.stdout.count('class="plot-container plotly"') == n_figures
