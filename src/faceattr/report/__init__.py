"""``faceattr report``: an HTML (or Markdown) report built only from run directories.

Typical use::

    from faceattr.report import load_runs, build_report, write_report
    runs = load_runs(["runs/frozen", "runs/finetuned"])        # split: test, else valid
    write_report(build_report(runs), "report.html")

The pieces: :mod:`.load` reads run directories; :mod:`.analysis` (one run) and
:mod:`.comparison` (several) compute the numbers; :mod:`.plots` draws them and
:mod:`.gradcam` explains a model's decisions; :mod:`.run_sections`, :mod:`.image_sections`
and :mod:`.compare_sections` assemble format-neutral blocks (:mod:`.document`), which
:mod:`.build` puts together; :mod:`.html` / :mod:`.markdown` render them.
"""

from __future__ import annotations

from pathlib import Path

from faceattr.errors import UsageError
from faceattr.fileio import Inputs, atomic_write_text, check_output
from faceattr.report.build import ReportOptions, RunAnalysis, analyze_run, build_report
from faceattr.report.document import Report
from faceattr.report.load import Predictions, RunData, load_run, load_runs

FORMATS = ("html", "md")


def check_report_output(
    out: str | Path,
    fmt: str | None = None,
    *,
    inputs: Inputs | None = None,
    overwrite: bool = False,
) -> tuple[Path, str]:
    """The report's file and format (html or md; default from the extension), once it is
    known the report may be written there: never over one of ``inputs`` (the run
    directories' files), an existing file (or a Markdown report's files folder holding
    files) only with ``overwrite``. A UsageError otherwise, before any work."""
    out = Path(out).expanduser()
    if fmt is None:
        fmt = "md" if out.suffix.lower() in (".md", ".markdown") else "html"
    if fmt not in FORMATS:
        from faceattr.errors import unknown_name_error

        raise unknown_name_error("report format", fmt, FORMATS)
    if out.is_dir():
        raise UsageError(
            f"The report's output {out} is a folder.",
            f'Name a file, e.g. `out="{out / ("report." + fmt)}"`.',
        )
    out = check_output(out, what="report", inputs=inputs, overwrite=overwrite)
    files = out.with_name(out.stem + "_files")
    if fmt == "md" and not overwrite and files.is_dir() and any(files.iterdir()):
        raise UsageError(
            f"The report's files folder {files} already holds files; faceattr does not "
            "replace files unless asked.",
            "Pass `overwrite=True` to replace them, or choose another name.",
        )
    return out, fmt


def write_report(
    report: Report,
    out: str | Path,
    fmt: str | None = None,
    *,
    inputs: Inputs | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``report`` to ``out`` as ``fmt`` (html or md; default from the extension).

    Returns the files written (for Markdown: the .md file and its plot files). Checked as
    :func:`check_report_output` says (call it before building the report to fail early).
    """
    out, fmt = check_report_output(out, fmt, inputs=inputs, overwrite=overwrite)
    if fmt == "md":
        from faceattr.report.markdown import write_markdown

        return write_markdown(report, out, overwrite=overwrite, inputs=inputs)
    from faceattr.report.html import render_html

    atomic_write_text(out, render_html(report), what="report", overwrite=overwrite, inputs=inputs)
    return [out]


__all__ = [
    "FORMATS",
    "Predictions",
    "Report",
    "ReportOptions",
    "RunAnalysis",
    "RunData",
    "analyze_run",
    "build_report",
    "check_report_output",
    "load_run",
    "load_runs",
    "write_report",
]
