"""A self-contained HTML report: one file, figures inlined as PNG, no scripts or remote resources.

:func:`render_report` builds the document as a string (every user-provided text escaped);
:func:`write_report` writes it atomically; :func:`package_versions` records what produced it.
"""

from __future__ import annotations

import base64
import io
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape as html_escape
from importlib import metadata
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from perturbflow.eval.metrics import METRICS

__all__ = ["DEFAULT_PACKAGES", "package_versions", "render_report", "write_report"]

DEFAULT_PACKAGES = (
    "perturbflow",
    "numpy",
    "scipy",
    "pandas",
    "anndata",
    "scanpy",
    "torch",
    "lightning",
    "pot",
    "scikit-learn",
)
NOT_INSTALLED = "not installed"
# Summary columns that identify a row, in the order rows are grouped by (those present are used).
_GROUP_KEYS = ("dataset", "split", "metric", "subgroup", "model")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
header { border-bottom: 2px solid #446; margin-bottom: 1rem; }
h1 { margin-bottom: 0.2rem; overflow-wrap: anywhere; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2rem; }
.generated { color: #666; font-size: 0.9rem; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4rem 1.2rem; }
nav a { color: #335; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; display: block;
        max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; }
th { background: #f2f3f7; text-align: left; vertical-align: top; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td.text, table.keyvalue td { text-align: left; }
tbody tr:hover { background: #fafaf0; }
figure { margin: 1rem 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 0 1rem; align-items: flex-start; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; white-space: pre-wrap; }
code { font-size: 0.85rem; word-break: break-all; }
.status li strong { display: inline-block; min-width: 8rem; }
.metrics-legend { font-size: 0.85rem; color: #444; }
"""


def render_report(
    *,
    title: str,
    summary: pd.DataFrame,
    figures: Mapping[str, Figure | Sequence[Figure]],
    command: str,
    versions: Mapping[str, str],
    data_checksums: Mapping[str, str],
    notes: Sequence[str] = (),
    peers_status: Mapping[str, str] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    generated_at: datetime | None = None,
    dpi: int = 110,
) -> str:
    """Render one self-contained HTML document.

    Parameters
    ----------
    title
        Page title and heading.
    summary
        Summary table (e.g. :func:`perturbflow.eval.evaluate.summarize`). Rows are grouped by the
        identifying columns present (dataset, split, metric, subgroup, model; order of first
        appearance kept within each), floats shown with 3 decimals, ``nan`` as "–".
    figures
        Section name → figure or list of figures, in display order; each becomes a section of
        inlined PNG images. The figures are not closed.
    command
        The exact command that produced the results.
    versions
        Package → version (see :func:`package_versions`).
    data_checksums
        Data file → checksum (e.g. SHA-256).
    notes
        Free-text remarks listed under "Status".
    peers_status
        Peer model → status, e.g. ``{"<peer>": "not installed"}``, listed under "Status".
    tables
        Section name → an extra table (shown like the summary), after the figures.
    generated_at
        Time stamp shown in the header; now (UTC) by default.
    dpi
        Resolution of the embedded PNGs.
    """
    generated_at = generated_at or datetime.now(timezone.utc)
    sections: list[tuple[str, str]] = []  # (heading, body HTML)
    status = _status_list(notes, peers_status or {})
    if status:
        sections.append(("Status", status))
    sections.append(("Summary", _summary_table(summary)))
    for name, content in figures.items():
        group = [content] if isinstance(content, Figure) else list(content)
        images = "\n".join(
            _figure_html(figure, f"{name} ({index + 1})", dpi) for index, figure in enumerate(group)
        )
        if len(group) > 1:  # several small figures sit side by side, wrapping
            images = f'<div class="gallery">\n{images}\n</div>'
        sections.append((name, images or "<p>No figure.</p>"))
    for name, table in (tables or {}).items():
        sections.append((name, _summary_table(table)))
    sections.append(("Reproduce", _reproduce(command, versions, data_checksums)))

    anchors = [f"section-{index}" for index in range(len(sections))]
    navigation = "\n".join(
        f'<li><a href="#{anchor}">{_escape(heading)}</a></li>'
        for anchor, (heading, _) in zip(anchors, sections, strict=True)
    )
    body = "\n".join(
        f'<section id="{anchor}">\n<h2>{_escape(heading)}</h2>\n{content}\n</section>'
        for anchor, (heading, content) in zip(anchors, sections, strict=True)
    )
    stamp = generated_at.isoformat(timespec="seconds")
    producer = f" by perturbflow {versions['perturbflow']}" if "perturbflow" in versions else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_escape(title)}</h1>
<p class="generated">Generated {_escape(stamp + producer)}</p>
<nav><ul>
{navigation}
</ul></nav>
</header>
<main>
{body}
</main>
</body>
</html>
"""


def write_report(html: str, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``html`` to ``path`` atomically (temporary file in the same folder + rename).

    The parent folder is created if needed. An existing file is replaced only with
    ``overwrite=True``; otherwise :class:`FileExistsError`. Returns the path written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True (--overwrite on the command line) to "
            "replace it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(html)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def package_versions(names: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` ("not installed" if absent).

    The Python version comes first under the key ``python``.
    """
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    return versions


# -- pieces --------------------------------------------------------------------------------------


def _escape(text: object) -> str:
    return html_escape(str(text), quote=True)


def _status_list(notes: Sequence[str], peers_status: Mapping[str, str]) -> str:
    items = [
        f"<li><strong>{_escape(peer)}</strong> {_escape(state)}</li>"
        for peer, state in peers_status.items()
    ]
    items += [f"<li>{_escape(note)}</li>" for note in notes]
    return f'<ul class="status">\n{chr(10).join(items)}\n</ul>' if items else ""


def _summary_table(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "<p>No results.</p>"
    keys = [key for key in _GROUP_KEYS if key in summary.columns]
    table = summary
    if keys:
        # Sort by each key's order of first appearance (not alphabetically), so the producer's
        # order of models and subgroups survives; sort_values on several columns is stable.
        ranks = pd.DataFrame(
            {
                key: summary[key].map({v: i for i, v in enumerate(pd.unique(summary[key]))})
                for key in keys
            }
        )
        table = summary.loc[ranks.sort_values(keys, kind="stable").index].set_index(keys)
    rendered = table.to_html(
        escape=True,
        float_format=lambda value: f"{value:.3f}",
        na_rep="–",
        sparsify=True,
        border=0,
        classes="summary",
        index=bool(keys),
    )
    return rendered + _metric_legend(summary)


def _metric_legend(summary: pd.DataFrame) -> str:
    if "metric" not in summary.columns:
        return ""
    items = []
    for metric in pd.unique(summary["metric"]):
        spec = METRICS.get(metric)
        if spec is not None:
            direction = "higher" if spec.higher_is_better else "lower"
            items.append(
                f"<li><code>{_escape(metric)}</code> ({direction} is better): "
                f"{_escape(spec.description)}</li>"
            )
    return f'<ul class="metrics-legend">\n{chr(10).join(items)}\n</ul>' if items else ""


def _figure_html(figure: Figure, alt: str, dpi: int) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{encoded}" alt="{_escape(alt)}"></figure>'


def _key_value_table(mapping: Mapping[str, str], key: str, value: str) -> str:
    if not mapping:
        return "<p>None recorded.</p>"
    rows = "\n".join(
        f"<tr><td>{_escape(name)}</td><td><code>{_escape(entry)}</code></td></tr>"
        for name, entry in mapping.items()
    )
    return (
        f'<table class="keyvalue"><thead><tr><th>{key}</th><th>{value}</th></tr></thead>'
        f"<tbody>\n{rows}\n</tbody></table>"
    )


def _reproduce(command: str, versions: Mapping[str, str], checksums: Mapping[str, str]) -> str:
    return (
        "<h3>Command</h3>\n"
        f"<pre><code>{_escape(command)}</code></pre>\n"
        "<h3>Package versions</h3>\n"
        f"{_key_value_table(versions, 'package', 'version')}\n"
        "<h3>Data checksums</h3>\n"
        f"{_key_value_table(checksums, 'file', 'checksum')}"
    )
