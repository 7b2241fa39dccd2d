"""The HTML report is one self-contained, escaped document, written atomically."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from perturbflow.report.html import package_versions, render_report, write_report


def _figure(value: float) -> Figure:
    figure = Figure(figsize=(2, 2))
    figure.subplots().bar([0], [value])
    return figure


def _summary() -> pd.DataFrame:
    rows = []
    for metric in ("pearson_delta", "mse_de20"):
        for subgroup in ("combo_seen1", "combo_seen2"):
            for model in ("ridge", "additive"):
                rows.append((subgroup, model, metric, 0.123456, np.nan, 4, 5, 0))
    return pd.DataFrame(
        rows,
        columns=[
            "subgroup",
            "model",
            "metric",
            "mean",
            "sd",
            "n_conditions",
            "n_seeds",
            "n_missing",
        ],
    )


def _render(**overrides) -> str:
    arguments = {
        "title": "Benchmark norman19_subset / combo",
        "summary": _summary(),
        "figures": {
            "Metrics over seeds": _figure(1.0),
            "Predicted vs real delta": [_figure(2.0), _figure(3.0)],
            "Gene programs": [],
        },
        "command": "perturbflow benchmark --dataset norman19_subset --split combo --seeds 1,2",
        "versions": {"perturbflow": "0.1.0", "numpy": "2.0.0"},
        "data_checksums": {"norman19_subset.h5ad": "sha256:0123abcd"},
        "notes": ["<script>alert('x')</script> & more"],
        "peers_status": {"GEARS": "not installed"},
        "generated_at": datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),
    }
    arguments.update(overrides)
    return render_report(**arguments)


def test_report_holds_every_section_and_reproduction_detail():
    document = _render()
    assert document.startswith("<!DOCTYPE html>")
    assert "<title>Benchmark norman19_subset / combo</title>" in document
    assert "2024-05-06T07:08:09+00:00" in document
    for section in (
        "Status",
        "Summary",
        "Metrics over seeds",
        "Predicted vs real delta",
        "Gene programs",
        "Reproduce",
    ):
        assert f"<h2>{section}</h2>" in document
    assert "perturbflow benchmark --dataset norman19_subset --split combo --seeds 1,2" in document
    assert "sha256:0123abcd" in document and "norman19_subset.h5ad" in document
    assert "<strong>GEARS</strong> not installed" in document
    assert "<td>numpy</td><td><code>2.0.0</code></td>" in document


def test_report_embeds_one_png_per_figure_and_nothing_remote():
    document = _render()
    assert document.count("data:image/png;base64,") == 3  # 1 + 2 + 0 figures
    for payload in re.findall(r'src="data:image/png;base64,([^"]+)"', document):
        assert base64.b64decode(payload).startswith(b"\x89PNG")
    assert "No figure." in document  # the empty section says so
    lowered = document.lower()
    for reference in ('src="http', "src='http", 'href="http', "href='http", "@import", "url("):
        assert reference not in lowered
    assert "<script" not in lowered  # no JavaScript at all, including the escaped note below


def test_several_figures_of_a_section_share_a_wrapping_gallery():
    document = _render()
    assert document.count('<div class="gallery">') == 1  # only the two-figure section
    gallery = document.split('<div class="gallery">', 1)[1].split("</div>", 1)[0]
    assert gallery.count("<figure>") == 2


def test_report_escapes_user_text():
    document = _render(
        title="a <b>bold</b> title",
        command="perturbflow benchmark --out '<dir>' && echo \"done\"",
        figures={"<img src=x>": _figure(1.0)},
        versions={"<pkg>": "1 & 2"},
    )
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in document
    assert "a &lt;b&gt;bold&lt;/b&gt; title" in document
    assert "--out &#x27;&lt;dir&gt;&#x27; &amp;&amp; echo &quot;done&quot;" in document
    assert "<h2>&lt;img src=x&gt;</h2>" in document
    assert "<img src=x>" not in document
    assert "&lt;pkg&gt;" in document and "1 &amp; 2" in document


def test_summary_table_is_grouped_formatted_and_escaped():
    summary = _summary()
    summary.loc[0, "model"] = "<evil>"
    document = _render(summary=summary)
    table = document[document.index("<table") : document.index("</table>")]
    assert "0.123" in table and "0.123456" not in table
    assert "–" in table  # nan sd
    assert "&lt;evil&gt;" in table and "<evil>" not in table
    # Grouped by metric, then subgroup, in order of first appearance: each metric label once.
    assert table.count(">pearson_delta</th>") == 1
    assert table.index("pearson_delta") < table.index("mse_de20")
    assert "(higher is better)" in document and "(lower is better)" in document


def test_empty_summary_renders_a_message():
    document = _render(summary=pd.DataFrame())
    assert "No results." in document


def test_write_report_is_atomic_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out" / "report.html"
    assert write_report("<p>first</p>", path) == path
    assert path.read_text(encoding="utf-8") == "<p>first</p>"
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_report("<p>second</p>", path)
    assert path.read_text(encoding="utf-8") == "<p>first</p>"
    write_report("<p>second</p>", path, overwrite=True)
    assert path.read_text(encoding="utf-8") == "<p>second</p>"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]  # no temp file left


def test_package_versions_are_strings():
    versions = package_versions(("numpy", "pandas", "surely-not-a-package-xyz"))
    assert list(versions) == ["python", "numpy", "pandas", "surely-not-a-package-xyz"]
    assert all(isinstance(value, str) for value in versions.values())
    assert versions["surely-not-a-package-xyz"] == "not installed"
    assert versions["numpy"] == np.__version__
    assert set(package_versions()) >= {"perturbflow", "torch", "pot", "scikit-learn"}


CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None
)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    path = write_report(_render(), tmp_path / "report.html")
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={screenshot}",
            "--window-size=1200,2000",
            path.as_uri(),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    assert screenshot.read_bytes().startswith(b"\x89PNG")
