"""The benchmark report in a real browser: no horizontal overflow at a 1,400 px window.

Headless Chromium (Debian's ``chromium`` package) loads a report with many models and a long
title. A probe script appended to a copy of the report records
``document.documentElement.scrollWidth`` and ``clientWidth`` once every image has loaded;
``--dump-dom`` prints the page after scripts ran, and the test reads the numbers back. A page
wider than its window means the reader must scroll sideways: a wide table or figure escaped the
layout. ``.ci/run`` installs Chromium when missing and sets ``PERTURBFLOW_REQUIRE_BROWSER=1``:
there a missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from perturbflow.eval.loop import model_runs, run
from perturbflow.report.benchmark_report import build_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTH = 1400
PROBE = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement;
  document.body.setAttribute("data-probe", root.scrollWidth + "x" + root.clientWidth);
});
</script>
"""


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    message = "no headless browser: install Debian's chromium (apt-get install chromium)"
    if os.environ.get("PERTURBFLOW_REQUIRE_BROWSER") == "1":  # set by .ci/run
        pytest.fail(message)
    pytest.skip(message)


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={WIDTH},900",
        "--virtual-time-budget=10000",  # let images decode and the load event fire
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory, screen_data) -> Path:
    """A report of five models on a simulated screen, with a long title and model label."""
    dataset, _ = screen_data("tiny")
    out = tmp_path_factory.mktemp("report")
    runs = model_runs("additive,control_mean,linear,ridge,nearest_neighbor,calibrated_additive")
    result = run(dataset, "simulation", runs, [1, 2], out=out)
    title = "a_screen_with_a_long_file_name_" * 6
    return build_report(out, dataset, result, title=title, command="perturbflow benchmark x")


def test_report_fits_a_1400_px_window_in_headless_chromium(report, tmp_path):
    browser = _browser()
    probed = tmp_path / "probed.html"
    html = report.read_text()
    assert "</body>" in html
    probed.write_text(html.replace("</body>", PROBE + "</body>", 1))
    dumped = _chromium(browser, "--dump-dom", probed.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    match = re.search(r'data-probe="(\d+)x(\d+)"', dumped.stdout)
    assert match, f"the probe did not run; browser said: {dumped.stderr[-2000:]}"
    scroll_width, client_width = map(int, match.groups())
    assert WIDTH - 40 <= client_width <= WIDTH, client_width  # the window is the one asked for
    assert scroll_width <= client_width, (
        f"report is {scroll_width} px wide in a {client_width} px window: horizontal overflow"
    )


def test_screenshot_is_taken_at_the_window_width(report, tmp_path):
    browser = _browser()
    shot = tmp_path / "report.png"
    taken = _chromium(browser, f"--screenshot={shot}", report.as_uri())
    assert taken.returncode == 0, taken.stderr[-2000:]
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width == WIDTH and height > 0
