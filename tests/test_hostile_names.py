"""Names are data, never markup: a file, folder, run or CSV column name that looks like rich
markup, HTML, Markdown or mathtext is shown as it is by every command and in every output
(terminal, HTML, Markdown, plots), and the command exits as it would for a plain name."""

from __future__ import annotations

import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from typer.testing import CliRunner

from faceattr.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# One of each: rich markup (a closing tag alone crashed rich), HTML (no "/" in a file name:
# an event handler instead of </script>), Markdown table and maths, code, bold, a line break.
FILE_NAMES = ["[bold red]x.jpg", "[/]y.jpg", "<img src=x onerror=alert(1)>.jpg",
              "a|b $x$ `t` **b**.jpg", "new\nline.jpg", ":smile:.jpg"]  # fmt: skip
# A CSV header can hold anything printable (a model file keeps no control characters): these
# are its attribute names.
ATTRIBUTES = ["[bold red]x", "[/]", "<script>alert(1)</script>", "a|b", "$\\frac{$", "`t`",
              "**b** _u_", "_hidden", "&amp; x"]  # fmt: skip


def invoke(*args: object):
    # A wide terminal: table cells must not wrap a long path.
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


def shown(name: object) -> str:
    """How the terminal shows a name: as it is, a line break as ``\\n``."""
    return str(name).replace("\n", "\\n")


class Page(HTMLParser):
    """Tags, attributes and text (joined as it reads) of an HTML page."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.parts: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data) -> None:
        self.parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def assert_inert(self, own_scripts: int = 0, once: bool = True) -> None:
        """No element or handler a name could have made: only faceattr's own inline scripts;
        ``once``: no name holds "&lt;", so text escaped twice would show one."""
        scripts = [a for t, a in self.tags if t == "script"]
        assert len(scripts) == own_scripts and all("src" not in a for a in scripts)
        for tag, attrs in self.tags:
            assert tag not in ("img", "iframe", "svg") or (attrs.get("src") or "") != "x"
            handlers = [k for k in attrs if k.lower().startswith("on")]
            assert not handlers, (tag, attrs)
        if once:
            assert "&lt;" not in self.text


def markdown_page(md: str) -> Page:
    """``md`` rendered like GitHub does (CommonMark, tables, strikethrough, raw HTML on)."""
    from markdown_it import MarkdownIt

    return Page(MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
                .render(md))  # fmt: skip


# --- the helpers, one per output kind ------------------------------------------------------


def test_terminal_literal_prints_exactly_the_name():
    from rich.console import Console

    from faceattr.cli import common
    from faceattr.cli.common import literal

    console = Console(file=io.StringIO(), width=500, emoji=False, color_system=None)
    names = [*FILE_NAMES, *ATTRIBUTES, "x\\", "\\[b]y", "[@click]z", "a\x1b[31mred\x07",
             "gpj.\u202eexe", "tab\there\r"]  # fmt: skip
    for name in names:
        console.file = io.StringIO()
        console.print(f"[bold]{literal(name)}[/]: ok", highlight=False)
        expected = (name.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
                    .replace("\x1b", "\\x1b").replace("\x07", "\\x07")
                    .replace("\u202e", "\\u202e"))  # fmt: skip
        assert console.file.getvalue() == f"{expected}: ok\n", name
    # A multi-line message keeps its lines (and still shows a name's escape sequence).
    assert literal("one\n[/]two\x1b", lines=True) == "one\n\\[/]two\\x1b"
    # The safety net: a value that missed literal() prints as text, never a MarkupError.
    assert common.err.render_str("a [/] b").plain == "a [/] b"


def test_progress_shows_a_file_name_literally(monkeypatch):
    from rich.console import Console

    from faceattr.cli import common

    for terminal in (True, False):  # a live bar, or plain lines in a log
        console = Console(file=io.StringIO(), force_terminal=terminal, width=300, emoji=False,
                          color_system=None)  # like faceattr's  # fmt: skip
        monkeypatch.setattr(common, "err", console)
        progress = common.RichProgress()
        progress.start("extract [/]x:smile:\x1b.zip", total=1, unit="files")
        progress.advance(1, name="[b]y")
        progress.finish()
        said = console.file.getvalue()
        assert "extract [/]x:smile:\\x1b.zip" in said and "[b]y" in said, said


def test_report_texts_keep_faceattr_marks_and_show_names_literally():
    from faceattr.report.document import literal, plain, spans
    from faceattr.report.html import inline
    from faceattr.report.markdown import text

    odd = ["new\nline", "x\ufdd0y\ufdd1z", "&lt;", "a\\", "1. x", "# h", "- y", "> q", "\u202e"]
    for name in [*ATTRIBUTES, *odd]:
        sentence = f"**Best run: {literal(name)}**, `{literal(name)}` and {literal(name)}."
        runs = spans(sentence)
        assert [(s.bold, s.code) for s in runs] == [(True, False), (False, False),
                                                     (False, True), (False, False)]  # fmt: skip
        clean = name.replace("\ufdd0", "\ufffd").replace("\ufdd1", "\ufffd")
        assert plain(sentence) == f"Best run: {clean}, {clean} and {clean}."
        page = Page(inline(sentence))
        assert page.text == plain(sentence)
        assert [t for t, _ in page.tags] == ["strong", "code"]
        md = markdown_page(text(sentence))
        assert md.text.strip() == plain(sentence).replace("\n", " ")
        assert [t for t, _ in md.tags if t not in ("p", "span")] == ["strong", "code"]
        md.assert_inert(once=False)
        # A name alone, at the start of a block or in a table cell, opens nothing either.
        alone = markdown_page(text(literal(name)))
        assert alone.text.strip() == clean.replace("\n", " ")
        assert {t for t, _ in alone.tags} <= {"p", "span"}
        row = markdown_page(f"| a |\n|:--|\n| {text(literal(name), cell=True)} |")
        assert [t for t, _ in row.tags].count("td") == 1
        assert row.text.strip().endswith(clean.replace("\n", " "))
    # faceattr's own marks still work; a lone mark is a character
    assert inline("**a** `b` **c") == "<strong>a</strong> <code>b</code> **c"


def test_every_block_of_a_report_holds_names_literally(tmp_path):
    from faceattr.report.document import (
        Bullets,
        Card,
        Cell,
        Details,
        Figure,
        Gallery,
        Note,
        Paragraph,
        Report,
        Section,
        Table,
        Tile,
        Tiles,
        literal,
    )
    from faceattr.report.html import render_html
    from faceattr.report.markdown import write_markdown

    names = [*ATTRIBUTES, "a\n\n<script>alert(2)</script>", "![x](javascript:alert(3))"]
    n = [literal(x) for x in names]
    table = Table(
        ["attribute", *n[:3]],
        [[Cell(x, title=x), Cell("1"), Cell("2", tone="good"), Cell("3")] for x in n],
        caption=f"By {n[0]}",
        groups=[("", 1), (n[1], 3)],
    )
    card = Card(
        title=names[2],
        image=b"jpeg",
        subtitle=n[3],
        wrong=[f"{n[4]} 0.9"],
        right=[f"{n[5]} 0.8"],
        name=names[6],
        lines=[f"{n[7]} **0.5**"],
    )
    section = Section("s", f"Run 1: {n[0]}", lead=f"Run directory `{n[1]}`.", blocks=[
        table, Paragraph(" ".join(n)), Bullets(n), Note(f"Subgroups by {n[-1]} skipped."),
        Tiles([Tile(n[0], n[1], n[2])]), Details(f"All by {n[-2]}", [Paragraph(n[3])]),
        Figure(names[-2], b"<svg/>", "image/svg+xml", caption=f"on {n[5]}", alt=n[6]),
        Gallery([card])])  # fmt: skip
    report = Report(f"faceattr report: {n[0]}", f"on {n[1]}", [f"**Best run: {n[2]}**"],
                    [section], footer=n[3])  # fmt: skip
    page = Page(render_html(report))
    page.assert_inert(own_scripts=1)
    md = tmp_path / "r.md"
    written = write_markdown(report, md)
    rendered = markdown_page(md.read_text())
    rendered.assert_inert()
    assert {t for t, _ in rendered.tags} <= {"h1", "h2", "p", "em", "strong", "code", "span",
                                             "table", "thead", "tbody", "tr", "th", "td", "ul",
                                             "li", "blockquote", "img", "br", "details",
                                             "summary", "hr"}  # fmt: skip
    text = " ".join(rendered.text.split())
    for name in names:
        assert name in page.text, name
        assert " ".join(name.split()) in text, name
    assert all(p.parent in (tmp_path, tmp_path / "r_files") for p in written)


def test_markdown_files_stay_in_their_folder(tmp_path):
    from faceattr.report.markdown import _Writer

    w = _Writer(tmp_path / "r.md")
    stems = ["../../escape", "/etc/passwd", ".hidden", "A", "a", "x" * 500, "", "..", "[/]"]
    links = [w.file(stem, "png", b"x") for stem in stems]
    folder = tmp_path / "r_files"
    written = sorted(p.name for p in folder.iterdir())
    assert len(written) == len(stems) == len({n.lower() for n in written})  # "A" and "a" differ
    assert sorted(tmp_path.iterdir()) == [folder]  # nothing outside the report's folder
    assert all(not n.startswith(".") and len(n) < 100 for n in written)
    assert all(link.startswith("r_files/") and "/" not in link[8:] for link in links)


def test_plot_labels_are_not_mathtext():
    from matplotlib.figure import Figure

    from faceattr.report.plots import label

    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label=label("_hidden"))
    ax.plot([0, 1], [1, 0], label=label("$x$"))
    title = ax.set_title(label("$\\frac{$ new\nline"))
    legend = ax.legend()
    fig.savefig(io.BytesIO(), format="png")  # "$\frac{$" as maths would not parse
    assert [t.get_text() for t in legend.get_texts()] == [" _hidden", "\\$x\\$"]
    assert title._preprocess_math(title.get_text()) == ("$\\frac{$ new\\nline", False)


# --- predict, index, search: file and folder names -----------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The bundled face under hostile names (one in a folder named "[", making "[/]"), and a
    broken image named like markup."""
    root = tmp_path_factory.mktemp("hostile-photos")
    (root / "[").mkdir()
    for name in FILE_NAMES:
        path = root / "[" / name[2:] if name.startswith("[/]") else root / name
        shutil.copy(EXAMPLES / "astronaut.jpg", path)
    (root / "[bad].jpg").write_bytes(b"not an image")
    return root


def _images(photos: Path) -> list[str]:
    return sorted(str(p) for p in photos.rglob("*.jpg") if p.name != "[bad].jpg")


def test_predict_shows_paths_literally(photos, tmp_path):
    images = _images(photos)
    assert any("[/]" in p for p in images)
    r = invoke("predict", photos, "-r", "--top", 1)
    assert r.exit_code == 1, r.output  # one image is broken: its line, then exit 1
    for image in images:
        assert f"{shown(image)}\n" in r.output  # each table's title
    bad = photos / "[bad].jpg"
    assert f"{bad}: Cannot read image {bad}" in r.output
    assert "1 of 7 image(s) could not be read." in r.output
    out = tmp_path / "[x]" / "p.csv"
    out.parent.mkdir()
    r = invoke("predict", photos, "-r", "--csv", out)
    assert r.exit_code == 1 and f"Wrote {out}" in r.output
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(row["image"] for row in rows) == sorted([*images, str(bad)])


def test_index_and_search_show_paths_literally(photos, tmp_path):
    images = _images(photos)
    db = tmp_path / "[" / "]library.db"  # the --db path holds "[/]" too
    db.parent.mkdir()
    r = invoke("index", photos, "--db", db)
    assert r.exit_code == 0, r.output  # committed, and said so: no crash after the commit
    assert f"Indexed into {db} in" in r.output and "1 failed" in r.output
    bad = photos / "[bad].jpg"
    assert f"{bad}: Cannot read image {bad}" in r.output
    r = invoke("search", "Male or not Male", "--db", db, "--limit", 0)
    assert r.exit_code == 0, r.output
    for image in images:
        assert f" {shown(image)} " in r.output
    sheet, table = tmp_path / "[s].html", tmp_path / "[s].csv"
    r = invoke("search", "Male or not Male", "--db", db, "--limit", 0, "--json", "--csv",
               table, "--html", sheet)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert sorted(x["image"] for x in json.loads(r.stdout)["results"]) == images
    with open(table, newline="", encoding="utf-8") as fh:
        assert sorted(row["image"] for row in csv.DictReader(fh)) == images
    page = Page(sheet.read_text())
    page.assert_inert(own_scripts=1)
    for image in images:
        assert image in page.text and Path(image).name in page.text


# --- train --out, a CSV dataset's attributes, run names ------------------------------------


def test_a_name_no_model_can_keep_is_refused_before_training(synthetic_root, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text('image,"new\nline"\n000001.jpg,1\n', encoding="utf-8")
    run = tmp_path / "run"
    r = invoke("train", "--dataset", "csv", "--root", synthetic_root / "img_align_celeba",
               "--labels", labels, "--out", run)  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "the name of column 2 ('new\\nline') is not an attribute name" in r.output
    assert not run.exists()


@pytest.fixture(scope="module")
def csv_run(synthetic_root, tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny run in a folder named "[/]run", trained (``train --out``) and evaluated on a
    labels CSV whose attribute names are hostile; the dataset's image folder and labels file."""
    from faceattr.data.celeba import read_celeba

    celeba = read_celeba(synthetic_root)
    sources = ["Male", "Smiling", "Eyeglasses", "Young", "Wearing_Hat", "Bangs", "No_Beard",
               "Heavy_Makeup", "Blond_Hair"]  # fmt: skip
    cols = [celeba.attributes.index(a) for a in sources]
    keep = np.flatnonzero(celeba.frame["split"].isin(["train", "test"]).to_numpy())[::3]
    base = tmp_path_factory.mktemp("hostile-csv")
    labels = base / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "split", *ATTRIBUTES])
        for i in keep:
            w.writerow([celeba.frame["image"][i], celeba.frame["split"][i],
                        *[int(v) for v in celeba.labels[i, cols]]])  # fmt: skip
    root = synthetic_root / "img_align_celeba"
    data = ["--dataset", "csv", "--root", root, "--labels", labels, "--workers", 0]
    run = base / "[" / "]run"
    r = invoke("train", *data, "--img-size", 32, "--epochs", 1, "--augment", "none",
               "--num-features", 16, "--out", run)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"-> {run}\n" in r.output and f"Model: {run / 'model.safetensors'}" in r.output
    assert f"Next: faceattr eval '{run}' --root" in r.output  # shell-quoted: safe to copy
    r = invoke("eval", run, *data)
    assert r.exit_code == 0, r.output
    for name in ATTRIBUTES:
        assert f"│ {shown(name)} " in r.output, name  # a row of the metrics table
    return run, root, labels


def test_data_stats_shows_attribute_names_literally(csv_run):
    _, root, labels = csv_run
    r = invoke("data", "stats", "csv", "--root", root, "--labels", labels)
    assert r.exit_code == 0, r.output
    for name in ATTRIBUTES:
        assert f"│ {shown(name)} " in r.output, name


def _check_report(html: Path, md: Path, names: list[str]) -> None:
    page = Page(html.read_text())
    page.assert_inert(own_scripts=1)
    rendered = markdown_page(md.read_text())
    rendered.assert_inert()
    text = " ".join(rendered.text.split())
    for name in names:
        assert name in page.text, name
        assert " ".join(name.split()) in text, name
    images = [unquote(a.get("src") or "") for t, a in rendered.tags if t == "img"]
    assert images and all((md.parent / src).is_file() for src in images)


def test_report_shows_attribute_names_literally(csv_run, tmp_path):
    from faceattr.report import ReportOptions, build_report, load_runs, write_report

    run = csv_run[0]
    r = invoke("report", run, "--by", ATTRIBUTES[0])  # the terminal summary
    assert r.exit_code == 0, r.output
    assert f"By {ATTRIBUTES[0]}:" in r.output
    # Grouped by a hostile attribute: its name in the subgroup charts and tables too.
    options = ReportOptions(groups=(ATTRIBUTES[0],), gallery=2, gradcam_images=1)
    report = build_report(load_runs([run]), options)
    html, md = tmp_path / "[r].html", tmp_path / "[r].md"
    write_report(report, html)
    write_report(report, md)
    _check_report(html, md, ATTRIBUTES)


def test_run_names_in_a_comparison(trained_run, tmp_path):
    from faceattr.report import ReportOptions, build_report, load_runs, write_report

    names = ["[bold red]x", "<img src=x onerror=alert(1)>"]
    runs = [tmp_path / n for n in names]
    for run in runs:  # without per-image predictions (other tests may have evaluated it)
        shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("predictions-*"))
    quick = ["--split", "valid", "--gallery", 0, "--gradcam", 0]
    r = invoke("report", *runs, *quick)
    assert r.exit_code == 0, r.output
    for name in names:
        assert f"{name}  (" in r.output  # the rule over the run's summary
    md = tmp_path / "[c].md"
    r = invoke("report", *runs, *quick, "--out", md)
    assert r.exit_code == 0, r.output
    assert f"Wrote {md} and" in r.output
    options = ReportOptions(gallery=0, gradcam_images=0)
    write_report(build_report(load_runs(runs, "valid"), options), tmp_path / "c.html")
    _check_report(tmp_path / "c.html", md, names)
    for page in (Page((tmp_path / "c.html").read_text()), markdown_page(md.read_text())):
        assert f"faceattr report: {names[0]} vs {names[1]}" in page.text
        assert f"Run 2: {names[1]}" in page.text


def test_subgroup_accuracy_shows_attribute_names_literally(csv_run, tmp_path):
    """`--subgroups` names hostile attributes (any but those holding the syntax's | , ;): in
    the terminal tables, the HTML section and the Markdown one, each shown as it is."""
    from faceattr.report import ReportOptions, build_report, load_runs, write_report
    from faceattr.subgroups import parse_subgroups

    run, root, labels = csv_run
    names = [ATTRIBUTES[2], ATTRIBUTES[0], ATTRIBUTES[4], ATTRIBUTES[6]]
    spec = f"{names[0]}|{names[1]},{names[2]},{names[3]}"
    data = ["--dataset", "csv", "--root", root, "--labels", labels, "--workers", 0]
    r = invoke("eval", run, *data, "--subgroups", spec)
    assert r.exit_code == 0, r.output
    assert f"{names[0]} by {', '.join(names[1:])} (threshold" in r.output
    r = invoke("report", run, "--subgroups", spec)
    assert r.exit_code == 0, r.output
    assert f"{names[0]} by {', '.join(names[1:])} (threshold" in r.output
    specs = tuple(parse_subgroups(spec, ATTRIBUTES))
    report = build_report(load_runs([run]), ReportOptions(gallery=0, gradcam_images=0,
                                                          subgroups=specs))  # fmt: skip
    html, md = tmp_path / "s.html", tmp_path / "s.md"
    write_report(report, html)
    write_report(report, md)
    page, rendered = Page(html.read_text()), markdown_page(md.read_text())
    page.assert_inert(own_scripts=1)
    rendered.assert_inert()
    for text in (page.text, " ".join(rendered.text.split())):
        assert f"Subgroup accuracy: {names[0]}" in text
        assert f"{names[0]} by {', '.join(names[1:])} (threshold" in text
