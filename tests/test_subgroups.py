"""Subgroups: the spec syntax (`parse_subgroups`), an attribute's accuracy within the groups
of others (`subgroup_accuracy`, checked by hand on a tiny example), `eval --subgroups` (table
and JSON) and the report's section (HTML and Markdown, one run and several)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faceattr.cli.app import app
from faceattr.errors import UsageError
from faceattr.subgroups import (
    MAX_BY,
    MIN_IMAGES,
    SYNTAX,
    SubgroupSpec,
    parse_subgroups,
    subgroup_accuracy,
    wilson_interval,
)
from test_report import make_run, parse

ATTRS = ["Male", "Heavy_Makeup", "Wearing_Lipstick", "Young", "Gray_Hair", "Smiling"]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


# ----------------------------------------------------------------------------- the syntax


def test_parse_specs_case_insensitively_in_the_models_spelling():
    specs = parse_subgroups(" male | heavy_makeup , Wearing_Lipstick ;young|MALE;", ATTRS)
    assert specs == [
        SubgroupSpec("Male", ("Heavy_Makeup", "Wearing_Lipstick")),
        SubgroupSpec("Young", ("Male",)),
    ]
    assert str(specs[0]) == "Male|Heavy_Makeup,Wearing_Lipstick"
    # repeated options and ';' mix; a repeated spec counts once; nothing given: none
    assert parse_subgroups(["Male|Young", "Male|young; Gray_Hair|Male"], ATTRS) == [
        SubgroupSpec("Male", ("Young",)),
        SubgroupSpec("Gray_Hair", ("Male",)),
    ]
    assert parse_subgroups(None, ATTRS) == [] and parse_subgroups(" ; ", ATTRS) == []


def test_groups_are_every_combination_absent_first():
    spec = SubgroupSpec("Male", ("Heavy_Makeup", "Wearing_Lipstick"))
    assert spec.combinations() == [(False, False), (False, True), (True, False), (True, True)]
    assert spec.group_name((False, True)) == "Heavy_Makeup=no, Wearing_Lipstick=yes"


@pytest.mark.parametrize(
    "text, words",
    [
        ("Male", "needs an attribute, '|'"),
        ("Male|", "needs an attribute, '|'"),
        ("|Young", "needs an attribute, '|'"),
        ("Male|Male,Young", "groups Male by itself"),
        ("Male|Heavy_Makeup,Wearing_Lipstick,Young,Gray_Hair,Smiling", "groups by 5 attributes"),
        ("Mael|Young", "Unknown attribute 'Mael'. Did you mean: Male?"),
        ("Male|Young,Lipstick", "Unknown attribute 'Lipstick'"),
    ],
)
def test_bad_specs_say_what_is_wrong_and_the_syntax(text, words):
    with pytest.raises(UsageError) as e:
        parse_subgroups(text, ATTRS)
    assert words in e.value.message
    if "groups by 5" in words:
        assert f"at most {MAX_BY} attributes" in e.value.hint
    else:
        assert SYNTAX in e.value.hint and repr(text) in e.value.message


# ----------------------------------------------------------------------------- the numbers


def test_wilson_interval_matches_the_published_values():
    low, high = wilson_interval(5, 10)  # Wilson (1927); e.g. Newcombe (1998), table I
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson_interval(12, 12)  # all right, yet 12 images say little
    assert round(low, 4) == 0.7575 and high == 1.0
    low, high = wilson_interval(0, 3)
    assert low == 0.0 and round(high, 4) == 0.5615
    assert wilson_interval(0, 0) is None


# Male decided at 0.5 (or 0.55), grouped by Heavy_Makeup x Wearing_Lipstick.
#        Male  prob  HM   WL      at 0.5
TINY = [
    (1, 0.9, 0, 0),  # TP  (no, no)
    (1, 0.3, 0, 0),  # FN  (no, no)
    (0, 0.7, 0, 0),  # FP  (no, no)
    (0, 0.1, 0, 0),  # TN  (no, no)
    (0, 0.2, 1, 1),  # TN  (yes, yes)
    (0, 0.6, 1, 1),  # FP  (yes, yes)
    (1, 0.8, 0, 1),  # TP  (no, yes)
    (math.nan, 0.9, 0, 0),  # unknown Male label: left out everywhere
    (0, 0.1, math.nan, 1),  # unknown Heavy_Makeup: counted overall, in no group
    (0, 0.5, 1, 1),  # FP at 0.5 (prob >= threshold), TN at 0.55  (yes, yes)
]
TINY_ATTRS = ["Male", "Heavy_Makeup", "Wearing_Lipstick"]


def tiny() -> tuple[np.ndarray, np.ndarray]:
    rows = np.array(TINY, dtype=np.float64)
    targets = rows[:, [0, 2, 3]]
    probs = np.zeros_like(targets)
    probs[:, 0] = rows[:, 1]
    return probs, targets


def test_subgroup_accuracy_on_a_hand_checked_example():
    probs, targets = tiny()
    spec = parse_subgroups("Male|Heavy_Makeup,Wearing_Lipstick", TINY_ATTRS)
    [r] = subgroup_accuracy(probs, targets, TINY_ATTRS, spec, 0.5, min_images=2)
    o = r.overall
    assert (o.images, o.positives, o.errors, o.false_positives, o.false_negatives) == (
        9,
        3,
        4,
        3,
        1,
    )
    assert o.accuracy == round(5 / 9, 6)
    assert o.false_positive_rate == 0.5 and o.false_negative_rate == round(1 / 3, 6)
    got = {
        g.group: (g.images, g.positives, g.false_positives, g.false_negatives, g.accuracy)
        for g in r.groups
    }
    assert got == {
        "Heavy_Makeup=no, Wearing_Lipstick=no": (4, 2, 1, 1, 0.5),
        "Heavy_Makeup=no, Wearing_Lipstick=yes": (1, 1, 0, 0, 1.0),
        "Heavy_Makeup=yes, Wearing_Lipstick=no": (0, 0, 0, 0, None),
        "Heavy_Makeup=yes, Wearing_Lipstick=yes": (3, 0, 2, 0, round(1 / 3, 6)),
    }
    empty, yes_yes = r.groups[2], r.groups[3]
    assert empty.accuracy_low is None and empty.false_positive_rate is None
    assert yes_yes.false_positive_rate == round(2 / 3, 6) and yes_yes.false_negative_rate is None
    assert r.groups[0].where == {"Heavy_Makeup": False, "Wearing_Lipstick": False}
    assert r.ungrouped == 1  # the row whose Heavy_Makeup is unknown
    # worst: the lowest accuracy among groups of >= 2 images; the 1-image group is "few"
    assert r.groups[1].few and not r.groups[0].few
    assert r.worst_group == "Heavy_Makeup=yes, Wearing_Lipstick=yes"
    assert r.gap == round(5 / 9 - 1 / 3, 6)
    low, high = wilson_interval(1, 3)
    assert (yes_yes.accuracy_low, yes_yes.accuracy_high) == (round(low, 6), round(high, 6))
    # at the target's own threshold (0.55): the 0.5 row is right now
    [r] = subgroup_accuracy(probs, targets, TINY_ATTRS, spec, [0.55, 0.5, 0.5], min_images=2)
    assert r.threshold == 0.55 and r.groups[3].false_positives == 1
    assert r.groups[3].accuracy == round(2 / 3, 6) and r.overall.errors == 3
    assert r.worst_group == "Heavy_Makeup=no, Wearing_Lipstick=no"
    # with the default minimum every group is "few": no worst group, no gap
    [r] = subgroup_accuracy(probs, targets, TINY_ATTRS, spec, 0.5)
    assert r.min_images == MIN_IMAGES and all(g.few for g in r.groups)
    assert r.worst_group is None and r.gap is None
    json.dumps([r.to_json()], allow_nan=False)  # strict JSON


def test_subgroup_accuracy_refuses_arrays_that_disagree():
    probs, targets = tiny()
    spec = parse_subgroups("Male|Heavy_Makeup", TINY_ATTRS)
    with pytest.raises(ValueError, match="must both be"):
        subgroup_accuracy(probs[:, :2], targets, TINY_ATTRS, spec)


# ----------------------------------------------------------------------------- eval


@pytest.fixture(scope="module")
def eval_run(trained_run: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("subgroups") / "run"
    shutil.copytree(trained_run, run)
    return run


def test_eval_subgroups_json_and_table(eval_run: Path, synthetic_root: Path):
    spec = "Male|Heavy_Makeup,Wearing_Lipstick"
    base = ["eval", eval_run, "--root", synthetic_root, "--split", "valid", "--workers", 0]
    r = invoke(*base, "--json", "--subgroups", spec, "--subgroups", "Young|male")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    first, second = m["subgroups"]
    assert first["spec"] == spec and second["spec"] == "Young|Male"
    # the overall numbers are eval's own for the target, at the same threshold
    male = m["per_attribute"]["Male"]
    assert first["overall"]["images"] == male["support"]
    assert first["overall"]["errors"] == male["fp"] + male["fn"]
    assert first["threshold"] == round(male["threshold"], 6)
    # the groups, recounted from the per-image predictions eval saved
    z = np.load(eval_run / "predictions-valid.npz")
    names = [str(a) for a in z["attributes"]]
    t = z["targets"].astype(int)
    male_j, hm, wl = (names.index(a) for a in ("Male", "Heavy_Makeup", "Wearing_Lipstick"))
    decided = z["probs"][:, male_j].astype(np.float32) >= np.float32(male["threshold"])
    for g in first["groups"]:
        rows = (t[:, hm] == g["where"]["Heavy_Makeup"]) & (
            t[:, wl] == g["where"]["Wearing_Lipstick"]
        )
        truth = t[rows, male_j] == 1
        assert g["images"] == rows.sum() and g["positives"] == truth.sum()
        assert g["false_positives"] == (decided[rows] & ~truth).sum()
        assert g["false_negatives"] == (~decided[rows] & truth).sum()
        assert g["few"] == (g["images"] < MIN_IMAGES)
    assert sum(g["images"] for g in first["groups"]) + first["ungrouped"] == len(t)
    saved = json.loads((eval_run / "metrics-valid.json").read_text())
    assert saved["subgroups"] == m["subgroups"]

    r = invoke(*base, "--subgroups", spec)
    assert r.exit_code == 0, r.output
    assert "Male by Heavy_Makeup, Wearing_Lipstick (threshold" in r.stdout
    assert "95% interval" in r.stdout and "FPR" in r.stdout
    for label in ("all", "no, no", "no, yes", "yes, no", "yes, yes"):
        assert f"│ {label}" in r.stdout, label


def test_eval_without_subgroups_keeps_its_output(eval_run: Path, synthetic_root: Path):
    r = invoke("eval", eval_run, "--root", synthetic_root, "--split", "valid", "--workers", 0,
               "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "subgroups" not in json.loads(r.stdout)


@pytest.mark.parametrize("spec", ["Male", "Male|Male", "Mael|Young", "Male|Young;Smiling"])
def test_eval_and_report_refuse_a_bad_spec_with_the_syntax(eval_run, synthetic_root, spec):
    r = invoke("eval", eval_run, "--root", synthetic_root, "--subgroups", spec)
    assert r.exit_code == 2, r.output
    assert SYNTAX in r.output and "Traceback" not in r.output
    r = invoke("report", eval_run, "--subgroups", spec)
    assert r.exit_code == 2, r.output
    assert SYNTAX in r.output


# ----------------------------------------------------------------------------- report


def tiny_run(path: Path, predictions: bool = True) -> Path:
    probs, targets = tiny()
    keep = ~np.isnan(targets).any(axis=1)  # metrics_report wants known labels here
    return make_run(path, attributes=TINY_ATTRS, targets=targets[keep], probs=probs[keep],
                    images=[f"{i:06d}.jpg" for i in range(int(keep.sum()))],
                    predictions=predictions)  # fmt: skip


def report_text(runs: list[Path], tmp_path: Path, spec: str) -> tuple[str, str]:
    from faceattr.report import ReportOptions, build_report, load_runs, write_report

    options = ReportOptions(gallery=0, gradcam_images=0,
                            subgroups=tuple(parse_subgroups(spec, TINY_ATTRS)))  # fmt: skip
    report = build_report(load_runs(runs), options)
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    write_report(report, html)
    write_report(report, md)
    return " ".join(" ".join(parse(html).text).split()), md.read_text()


def test_report_section_has_the_numbers_in_html_and_markdown(tmp_path: Path):
    run = tiny_run(tmp_path / "one")
    html, md = report_text([run], tmp_path, "Male|Heavy_Makeup,Wearing_Lipstick")
    # 8 known rows: the tiny example without its two rows of unknown labels; at 0.5
    assert "Subgroup accuracy: Male" in html and "## Subgroup accuracy: Male" in md
    assert "Male by Heavy_Makeup, Wearing_Lipstick (threshold 0.50): 50.0% on 8 images" in html
    for text in (html, md):
        assert "no, no (few)" in text and "yes, no (few)" not in text  # empty: no rate
        assert "2 (1 FP, 1 FN)" in text and "50.0%" in text
    assert "| yes, yes (few) | 3 | 0 | 33.3% |" in md


def test_report_says_when_a_run_has_no_predictions(tmp_path: Path):
    run = tiny_run(tmp_path / "bare", predictions=False)
    html, md = report_text([run], tmp_path, "Male|Heavy_Makeup")
    for text in (html, md):
        assert "No per-image predictions for the test split of bare, so no subgroup" in text
        assert "faceattr eval" in text


def test_report_compares_runs_side_by_side(tmp_path: Path):
    runs = [tiny_run(tmp_path / "a"), tiny_run(tmp_path / "b", predictions=False)]
    html, md = report_text(runs, tmp_path, "Male|Wearing_Lipstick")
    assert "Subgroup accuracy per run" in html and "## Subgroup accuracy per run" in md
    assert "No per-image predictions for the test split of b" in html
    assert "Male by Wearing_Lipstick, per run (thresholds: a 0.50)" in html


def test_report_summary_prints_the_tables(tmp_path: Path):
    run = tiny_run(tmp_path / "one")
    r = invoke("report", run, "--subgroups", "male|heavy_makeup")
    assert r.exit_code == 0, r.output
    assert "Male by Heavy_Makeup (threshold 0.50)" in r.stdout
    assert "│ yes (few)" in r.stdout


def test_option_help_states_the_minimum():
    import re

    for command in ("eval", "report"):
        r = invoke(command, "--help")
        text = re.sub(r"[│\s]+", " ", r.stdout)
        assert f"groups under {MIN_IMAGES} images are marked" in text, command
