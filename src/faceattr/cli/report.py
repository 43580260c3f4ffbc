"""`faceattr report`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from faceattr.cli.common import RichProgress, err, handle_errors, literal, out, pct
from faceattr.cli.options import OverwriteOption, SubgroupsOption

if TYPE_CHECKING:
    from faceattr.engine.tune import StudySummary


@handle_errors
def report_command(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories: one for its report, several to compare them. A `faceattr "
            "tune` study folder stands for its 5 best trials, with a section of its own.",
            metavar="RUN_DIR",
            show_default=False,
        ),
    ],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the report here (.html or .md). Without it, "
            "print a summary to the terminal.",
        ),
    ] = None,  # fmt: skip
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="html (one self-contained file) or md (Markdown, plots "
            "as files beside it). Default: from --out's extension.",
        ),
    ] = None,  # fmt: skip
    split: Annotated[
        str | None,
        typer.Option(
            help="Evaluated split to report. Default: test when every run has "
            "metrics for it, else valid."
        ),
    ] = None,  # fmt: skip
    by: Annotated[
        str, typer.Option("--by", help="Attributes to split the error analysis by.")
    ] = "Male,Young",
    gap: Annotated[
        float,
        typer.Option(
            help="Flag subgroup accuracy gaps of at least this many points (beyond what base "
            "rates explain)."
        ),
    ] = 5.0,  # fmt: skip
    gallery: Annotated[
        int,
        typer.Option(help="Images in the gallery of worst errors (0 = none, at most 48)."),
    ] = 12,
    gradcam: Annotated[
        int, typer.Option(help="Images with Grad-CAM heat maps (0 = none, at most 12).")
    ] = 6,
    gradcam_attributes: Annotated[
        str | None,
        typer.Option(
            help="Attributes to explain with Grad-CAM (comma-separated, up to 4). "
            "Default: Eyeglasses, Smiling, Wearing_Hat where the model has them."
        ),
    ] = None,  # fmt: skip
    device: Annotated[str, typer.Option(help="Device for Grad-CAM: cpu, auto, cuda.")] = "cpu",
    subgroups: SubgroupsOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Report on trained runs: curves, per-attribute metrics, subgroup gaps, calibration,
    correlations, worst errors and Grad-CAM; several runs side by side.

    Built only from what run directories hold. Per-image views need `faceattr eval RUN --root
    DIR --split SPLIT` first (it writes predictions-<split>.npz).

    \b
    Examples:
      faceattr report runs/celebnet --out report.html
      faceattr report runs/frozen runs/finetuned --out compare.html
      faceattr report runs/resnet50 runs/densenet121 --format md --out docs/compare.md
      faceattr report runs/celebnet --subgroups "Male|Heavy_Makeup,Wearing_Lipstick"
    """
    from faceattr.attributes import CELEBA_ATTRIBUTES, parse_attribute_list, resolve_attributes
    from faceattr.data.splits import resolve_split_name
    from faceattr.fileio import Inputs
    from faceattr.report import (
        FORMATS,
        ReportOptions,
        build_report,
        check_report_output,
        load_runs,
        write_report,
    )
    from faceattr.subgroups import parse_subgroups

    if fmt is not None and fmt not in FORMATS:
        from faceattr.errors import unknown_name_error

        raise unknown_name_error("report format", fmt, FORMATS)
    if out_file is None and fmt is not None:
        out_file = Path(f"report.{fmt}")
    run_dirs, studies = _expand_studies(list(runs))
    sources = Inputs([*runs, *run_dirs])  # the runs' files: never written over
    if out_file is not None:  # before the work: a report that cannot be written fails now
        check_report_output(out_file, fmt, inputs=sources, overwrite=overwrite)
    loaded = load_runs(list(run_dirs), resolve_split_name(split) if split else None)
    known = list(dict.fromkeys([*CELEBA_ATTRIBUTES, *(a for r in loaded for a in r.attributes)]))
    groups = parse_attribute_list(by)
    options = ReportOptions(
        groups=tuple(resolve_attributes(groups, known)) if groups else (),
        gap_threshold=gap / 100,
        gallery=gallery,
        gradcam_images=gradcam,
        gradcam_attributes=tuple(parse_attribute_list(gradcam_attributes) or ())
        if gradcam_attributes
        else None,
        device=device,
        subgroups=tuple(parse_subgroups(subgroups, known)),
    )
    if out_file is None:
        _print_summary(loaded, options)
        return
    report = build_report(loaded, options, progress=RichProgress(), studies=studies)
    written = write_report(report, out_file, fmt, inputs=sources, overwrite=overwrite)
    size = sum(p.stat().st_size for p in written)
    extra = f" and {len(written) - 1} plot/image files" if len(written) > 1 else ""
    err.print(f"Wrote {literal(written[0])}{extra} ({size / 1e6:.1f} MB).", highlight=False,
              soft_wrap=True)  # fmt: skip
    for line in report.findings[:3]:
        out.print(_rich(line), highlight=False)


def _expand_studies(paths: list[Path], best: int = 5) -> tuple[list[Path], list[StudySummary]]:
    """A `faceattr tune` study folder stands for its best ``best`` finished trials' runs (and
    brings its own section)."""
    expanded: list[Path] = []
    studies = []
    for p in paths:
        if (Path(p) / "study.db").exists():
            from faceattr.engine.tune import study_run_dirs, summarize

            studies.append(summarize(p))
            expanded += study_run_dirs(p, best=best)
        else:
            expanded.append(p)
    return list(dict.fromkeys(expanded)), studies


def _rich(text: str) -> str:
    """A report text (:mod:`faceattr.report.document`) as rich markup: its bold as bold, its
    code as is, every character (names whole) literal."""
    from faceattr.report.document import spans

    return "".join(f"[bold]{literal(s.text)}[/bold]" if s.bold else literal(s.text)
                   for s in spans(text))  # fmt: skip


def _print_summary(runs, options) -> None:
    from faceattr.report.build import (
        analyze_run,
        comparison_findings,
        comparison_table,
        duration,
        single_run_findings,
    )
    from faceattr.report.comparison import compare_runs

    analyses = [analyze_run(r, options) for r in runs]
    for a in analyses:
        run = a.run
        out.rule(f"[bold]{literal(run.name)}[/]  ({literal(run.split)} split)", align="left")
        for line in single_run_findings(a):
            out.print("• " + _rich(line), highlight=False)
        hard = Table(title="hardest attributes", title_justify="left")
        for col in ("attribute", "acc", "majority", "lift", "bal acc", "F1", "pos rate"):
            hard.add_column(col, justify="left" if col == "attribute" else "right")
        for r in a.hardest:
            hard.add_row(literal(r.name), pct(r.accuracy, 1), pct(r.majority, 1),
                         "-" if r.lift is None else f"{100 * r.lift:+.1f}",
                         pct(r.balanced, 1), pct(r.f1, 1), pct(r.positive_rate, 1))  # fmt: skip
        out.print(hard)
        for sub in a.subgroups:
            flagged = sub.flagged
            if not flagged:
                continue
            t = Table(title=f"subgroup gaps by {literal(sub.group)}", title_justify="left")
            for col in ("attribute", f"acc {sub.label_yes}", f"acc {sub.label_no}", "gap",
                        "beyond base rates"):  # fmt: skip
                t.add_column(literal(col), justify="left" if col == "attribute" else "right")
            for row in flagged[:10]:
                gaps = (f"{100 * (g or 0):+.1f}" for g in (row.gap, row.excess_gap))
                t.add_row(literal(row.attribute), pct(row.acc_yes, 1), pct(row.acc_no, 1), *gaps)
            out.print(t)
        _print_subgroup_accuracy(run, options)
        for note in a.notes:
            err.print(f"[yellow]Note:[/] {_rich(note)}", highlight=False)
        if len(runs) == 1:
            out.print(
                f"trained {duration(run.train_seconds)}, best epoch {run.best_epoch} of "
                f"{len(run.history)}",
                highlight=False,
            )
    if len(runs) > 1:
        comp = compare_runs(runs)
        out.rule("[bold]comparison[/]", align="left")
        table = comparison_table(comp)
        t = Table()
        for i, c in enumerate(table.columns):
            t.add_column(_rich(c) or "metric", justify="left" if i == 0 else "right")
        for cells in table.rows:
            t.add_row(*[f"[green]{_rich(c.text)}[/]" if c.tone == "good" else _rich(c.text)
                        for c in cells])  # fmt: skip
        out.print(t)
        if comp.differences:
            d = Table(title="what differs", title_justify="left")
            d.add_column("setting")
            for r in runs:
                d.add_column(literal(r.name))
            for key, values in comp.differences:
                d.add_row(literal(key), *map(literal, values))
            out.print(d)
        for line in comparison_findings(comp, analyses):
            out.print("• " + _rich(line), highlight=False)
    err.print(
        "Full report with plots, subgroup analysis, gallery and Grad-CAM: add --out report.html",
        highlight=False,
        soft_wrap=True,
    )


def _print_subgroup_accuracy(run, options) -> None:
    """--subgroups in the terminal summary: eval's tables, from the run's predictions."""
    if not options.subgroups:
        return
    from faceattr.cli.evaluate import render_subgroups
    from faceattr.report.subgroup_sections import run_subgroup_accuracy

    results, notes = run_subgroup_accuracy(run, options.subgroups)
    render_subgroups(results)
    for note in notes:
        err.print(f"[yellow]Note:[/] {_rich(note)}", highlight=False)
