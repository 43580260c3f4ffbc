"""`faceattr report`: run directories in, a self-contained HTML/Markdown report out.

Real run directories come from the shared ``trained_run`` fixture, copied and evaluated with
``evaluate_model`` (never modified in place); small hand-made runs (written in the same file
formats as ``fit``/``eval``) cover edge cases with known answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import chromium_or_skip, perturb_head
from faceattr.cli.app import app
from faceattr.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
from faceattr.errors import DataError, UsageError
from faceattr.metrics import metrics_report
from faceattr.report import ReportOptions, build_report, load_runs, write_report
from faceattr.report import analysis as an
from faceattr.report import comparison as cmp
from faceattr.report.load import Predictions, count_file_parameters, run_names
from faceattr.runs import RunDir

runner = CliRunner()


# ----------------------------------------------------------------------------- fixtures


def _evaluate(run: Path, root: Path, split: str = "test", **kw) -> None:
    from faceattr.engine.evaluate import evaluate_model

    evaluate_model(run, DataConfig(root=str(root), workers=0), split, batch_size=64, **kw)


@pytest.fixture(scope="module")
def runs_dir(trained_run: Path, synthetic_root: Path, tmp_path_factory) -> Path:
    """Two evaluated copies of the trained run: ``baseline`` (tuned thresholds) and
    ``augmented`` (a perturbed model whose config says flip + rotation, evaluated at a fixed
    0.5 threshold)."""
    base = tmp_path_factory.mktemp("report-runs")
    a = base / "baseline"
    shutil.copytree(trained_run, a)
    _evaluate(a, synthetic_root)
    b = base / "augmented"
    shutil.copytree(trained_run, b)
    cfg = TrainConfig.load(b / "config.json")
    cfg = replace(cfg, augment=AugmentConfig(hflip=True, rotation=10.0), out=str(b))
    cfg.save(b / "config.json")
    perturb_head(b / "model.safetensors")
    _evaluate(b, synthetic_root, threshold=0.5)
    return base


@pytest.fixture(scope="module")
def single_html(runs_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-out") / "report.html"
    runs = load_runs([runs_dir / "baseline"])
    write_report(build_report(runs, ReportOptions(gallery=6, gradcam_images=3)), out)
    return out


@pytest.fixture(scope="module")
def compare_html(runs_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-out") / "compare.html"
    runs = load_runs([runs_dir / "baseline", runs_dir / "augmented"])
    write_report(build_report(runs, ReportOptions(gallery=2, gradcam_images=2)), out)
    return out


def make_run(
    run: Path,
    *,
    attributes: list[str],
    targets: np.ndarray,
    probs: np.ndarray,
    images: list[str],
    root: str = "",
    split: str = "test",
    predictions: bool = True,
    config: TrainConfig | None = None,
) -> Path:
    """A run directory written in the formats fit/eval write (no model file)."""
    run.mkdir(parents=True)
    cfg = config or TrainConfig(data=DataConfig(root=root), out=str(run))
    cfg.save(run / "config.json")
    RunDir(run).write_history(
        [
            {"epoch": e, "lr": 1e-3, "train_loss": 0.6 / e, "train_accuracy": 0.8,
             "val_loss": 0.5 / e, "val_mean_accuracy": 0.8 + e / 100,
             "val_strict_accuracy": 0.1 * e, "images_per_second": 100.0, "seconds": 10.0}
            for e in (1, 2, 3)
        ],
    )  # fmt: skip
    m = metrics_report(probs, targets, attributes, None, None)
    m.update(split=split, dataset="celeba", root=root)
    (run / f"metrics-{split}.json").write_text(json.dumps(m))
    if predictions:
        np.savez_compressed(
            run / f"predictions-{split}.npz",
            image=np.asarray(images, dtype=str),
            probs=probs.astype(np.float16),
            targets=np.nan_to_num(targets, nan=-1).astype(np.int8),
            attributes=np.asarray(attributes, dtype=str),
            image_dir=np.asarray(str(Path(root) / "img_align_celeba") if root else ""),
        )
    return run


class PageParser(HTMLParser):
    """Collects tags, attributes and visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(path: Path) -> PageParser:
    p = PageParser()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def assert_self_contained(page: PageParser) -> None:
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            low = (value or "").lower()
            assert "http://" not in low and "https://" not in low, (tag, name, value[:80])
        assert tag != "link", "no external stylesheet"
        if tag == "script":
            assert "src" not in attrs
        if tag == "img":
            assert (attrs.get("src") or "").startswith("data:image/"), tag


# ----------------------------------------------------------------------------- HTML report


def test_single_run_report_is_complete_and_self_contained(single_html: Path, runs_dir: Path):
    page = parse(single_html)
    text = " ".join(page.text)
    attributes = list(json.loads((runs_dir / "baseline/metrics-test.json").read_text())[
        "per_attribute"])  # fmt: skip
    assert len(attributes) == 40
    for name in attributes:
        assert name in text, name
    for heading in ("At a glance", "Training curves", "Attributes: which are hard",
                    "Subgroups: for whom it fails", "Thresholds and calibration",
                    "Data view: attribute correlations", "Gallery: the worst errors",
                    "Grad-CAM: where the model looks"):  # fmt: skip
        assert heading in text, heading
    assert "Hardest attributes" in text and "By Male" in text and "By Young" in text
    images = [a for t, a in page.tags if t == "img"]
    svgs = [a for a in images if a["src"].startswith("data:image/svg+xml;base64,")]
    pngs = [a for a in images if a["src"].startswith("data:image/png;base64,")]
    jpegs = [a for a in images if a["src"].startswith("data:image/jpeg;base64,")]
    # curves, accuracy bars, 2 subgroup charts, reliability, thresholds | correlation, Grad-CAM
    assert len(svgs) >= 6 and len(pngs) == 2
    assert len(jpegs) == 6  # the gallery
    assert "Grad-CAM skipped" not in text
    tables = [a for t, a in page.tags if t == "table"]
    assert any("sortable" in (a.get("class") or "") for a in tables)
    assert_self_contained(page)


def test_comparison_report_reads_as_a_comparison(compare_html: Path):
    page = parse(compare_html)
    text = " ".join(page.text)
    assert "faceattr report: baseline vs augmented" in text
    assert "Runs side by side" in text and "What differs between the runs" in text
    # the augmentation difference is spelled out, per run
    assert "augmentation" in text and "flip, rotate 10" in text and "none" in text
    assert "Best run:" in text and "Per attribute: where each run wins" in text
    assert "Training curves, overlaid" in text
    assert "Run 1: baseline" in text and "Run 2: augmented" in text
    for name in ("Male", "Young", "Eyeglasses", "Wearing_Necktie"):
        assert name in text
    assert_self_contained(page)


def test_report_renders_in_headless_chromium(compare_html: Path, tmp_path: Path):
    browser = chromium_or_skip()
    png = tmp_path / "page.png"
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-default-apps", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}", "--window-size=1280,2000", compare_html.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert png.exists(), proc.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20  # not a blank page: header band, text, tables, plots
    # the dark header band was drawn at the top, the light page below it
    assert pixels[:40].mean() < 120 < pixels[400:].mean()


# ----------------------------------------------------------------------------- Markdown, CLI


def invoke(*args: object) -> tuple[int, str]:
    """Run the CLI in-process; the output with rich's line wrapping undone."""
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, " ".join(r.output.split())


def test_cli_summary_and_options(runs_dir: Path):
    code, output = invoke("report", runs_dir / "baseline")
    assert code == 0, output
    assert "hardest attributes" in output and "Mean accuracy" in output
    assert "By Male" in output and "By Young" in output
    assert "--out report.html" in output
    code, output = invoke("report", runs_dir / "baseline", runs_dir / "augmented", "--by", "male")
    assert code == 0, output
    assert "comparison" in output and "Best run" in output and "augmentation" in output
    assert "By Male" in output and "By Young" not in output


def test_cli_markdown_report_writes_plot_files(runs_dir: Path, tmp_path: Path):
    out = tmp_path / "docs" / "report.md"
    out.parent.mkdir()
    code, output = invoke("report", runs_dir / "augmented", "--format", "md", "--out", out,
                          "--gallery", 2, "--gradcam", 1)  # fmt: skip
    assert code == 0, output
    assert f"Wrote {out}" in output
    md = out.read_text()
    files = sorted((out.parent / "report_files").iterdir())
    assert len(files) > 5
    for p in files:
        assert p.stat().st_size > 0 and f"report_files/{p.name}" in md
    assert "| Male |" in md and "## Attributes: which are hard" in md
    assert "gradcam.png" in md and md.count("report_files/gallery-") == 2
    assert "http://" not in md and "https://" not in md


def test_cli_errors_say_how_to_fix(runs_dir: Path, tmp_path: Path):
    code, output = invoke("report", tmp_path / "nope")
    assert code == 2 and "does not exist" in output
    code, output = invoke("report", runs_dir / "baseline", "--split", "train")
    assert code == 1
    assert "No metrics for the train split" in output
    assert "faceattr eval" in output and "--split train" in output
    code, output = invoke("report", runs_dir / "baseline", "--format", "pdf")
    assert code == 2 and "html" in output
    code, output = invoke("report", runs_dir / "baseline", "--by", "Mael")
    assert code == 2 and "Did you mean: Male" in output


# ----------------------------------------------------------------------------- loading


def test_split_choice_and_missing_predictions(tmp_path: Path):
    attrs = ["Male", "Smiling"]
    t = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    p = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.4], [0.2, 0.3]], dtype=np.float32)
    imgs = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    run = make_run(tmp_path / "r", attributes=attrs, targets=t, probs=p, images=imgs,
                   split="valid", predictions=False, root="/data/celeba")  # fmt: skip
    runs = load_runs([run])  # no test metrics: falls back to valid
    assert runs[0].split == "valid" and runs[0].predictions is None
    assert any("faceattr eval" in n and "--root /data/celeba" in n for n in runs[0].notes)
    with pytest.raises(DataError) as e:
        load_runs([run], "test")
    assert "--split test" in e.value.hint and "/data/celeba" in e.value.hint
    with pytest.raises(UsageError):
        load_runs([tmp_path])  # not a run directory
    with pytest.raises(UsageError):
        load_runs([run, run])
    # a report without per-image predictions still builds, and says what is missing
    report = build_report(runs)
    titles = [s.title for s in report.sections]
    assert "Attributes: which are hard" in titles and "Gallery: the worst errors" not in titles


def test_report_without_images_or_model_says_why(tmp_path: Path):
    attrs = ["Male", "Smiling", "Eyeglasses"]
    rng = np.random.default_rng(0)
    t = (rng.random((60, 3)) < 0.4).astype(np.float32)
    p = np.clip(t * 0.6 + rng.random((60, 3)) * 0.4, 0, 1).astype(np.float32)
    run = make_run(tmp_path / "moved", attributes=attrs, targets=t, probs=p,
                   images=[f"{i:06d}.jpg" for i in range(60)],
                   root=str(tmp_path / "gone"))  # fmt: skip
    report = build_report(load_runs([run]))
    out = tmp_path / "r.html"
    write_report(report, out)
    text = " ".join(parse(out).text)
    assert "Gallery skipped: the evaluated images are not on this machine" in text
    assert "Grad-CAM skipped: the run directory has no model file" in text
    assert "By Male" in text and "Calibration" in text  # per-image views from the npz alone
    assert_self_contained(parse(out))


def test_run_names_are_unique(tmp_path: Path):
    paths = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]
    assert run_names(paths) == ["a/run", "b/run", f"{tmp_path.name}/c"]
    assert run_names([tmp_path / "x", tmp_path / "y"]) == ["x", "y"]


def test_count_parameters_reads_only_the_header(trained_run: Path):
    import torch

    from faceattr.models import load_model_file

    total, head = count_file_parameters(trained_run / "model.safetensors")
    model, _ = load_model_file(trained_run / "model.safetensors")
    assert total == sum(p.numel() for p in model.parameters())
    assert head == sum(p.numel() for p in model.head.parameters())
    assert isinstance(model, torch.nn.Module)


# ----------------------------------------------------------------------------- analysis


def _pred(attrs, targets, probs, images=None) -> Predictions:
    n = len(targets)
    return Predictions(
        images=np.asarray(images or [f"{i:06d}.jpg" for i in range(n)]),
        probs=np.asarray(probs, dtype=np.float32),
        targets=np.asarray(targets, dtype=np.float32),
        attributes=list(attrs),
        image_dir=None,
    )


def test_subgroup_gaps_known_answer():
    # Smiling is always right for Male=1 and right on 1 of 4 Male=0 images.
    male = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=np.float64)
    smiling = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=np.float32)
    probs_s = np.array([0.9, 0.1, 0.8, 0.2, 0.1, 0.9, 0.2, 0.1], dtype=np.float32)
    pred = _pred(["Male", "Smiling"], np.stack([male, smiling], 1),
                 np.stack([male * 0.9, probs_s], 1))  # fmt: skip
    res = an.subgroup_analysis(pred, np.full(2, 0.5), "Male", male, gap_threshold=0.1,
                               min_count=2)  # fmt: skip
    assert res is not None and res.label_yes == "Male" and res.label_no == "Female"
    (row,) = res.rows  # the grouping attribute itself is left out
    assert row.attribute == "Smiling" and row.acc_yes == 1.0 and row.acc_no == 0.25
    assert row.gap == pytest.approx(0.75) and row.flagged
    assert res.strict_yes == 1.0 and res.strict_no == 0.25
    # not flagged when a side has too few labels
    res = an.subgroup_analysis(pred, np.full(2, 0.5), "Male", male, min_count=5)
    assert not res.rows[0].flagged


def test_group_labels_from_the_dataset_when_the_model_lacks_them(synthetic_root, tmp_path):
    from faceattr.data import read_dataset

    table = read_dataset(DataConfig(root=str(synthetic_root)))
    test_rows = np.flatnonzero(table.frame["split"].to_numpy() == "test")[:30]
    images = table.frame["image"].to_numpy()[test_rows].tolist()
    j = table.attributes.index("Smiling")
    t = table.labels[test_rows][:, [j]]
    run = make_run(tmp_path / "smile-only", attributes=["Smiling"], targets=t,
                   probs=np.clip(t * 0.8 + 0.1, 0, 1), images=images,
                   root=str(synthetic_root))  # fmt: skip
    (loaded,) = load_runs([run])
    labels, notes = an.group_labels(loaded, ["Male", "Nonexistent"])
    male, source = labels["Male"]
    assert source == "the dataset's label file"
    np.testing.assert_array_equal(male, table.labels[test_rows, table.attributes.index("Male")])
    assert any("Nonexistent" in n for n in notes)


def test_correlation_matrix_matches_numpy_and_handles_constants():
    rng = np.random.default_rng(0)
    x = (rng.random((200, 4)) < [0.3, 0.5, 0.7, 0.0]).astype(np.float64)
    x[:, 1] = np.where(rng.random(200) < 0.8, x[:, 0], x[:, 1])  # correlated with column 0
    c = an.correlation_matrix(x)
    np.testing.assert_allclose(c[:3, :3], np.corrcoef(x[:, :3].T), atol=1e-9)
    assert np.isnan(c[3]).all() and np.isnan(c[:, 3]).all()  # constant column
    pairs = an.coupled_pairs(["a", "b", "c", "d"], c, np.where(np.isnan(c), np.nan, 0.0), k=2)
    assert {pairs[0].a, pairs[0].b} == {"a", "b"}


def test_reliability_and_threshold_curve():
    probs = np.array([[0.05], [0.15], [0.95], [0.85]], dtype=np.float32)
    targets = np.array([[0], [0], [1], [1]], dtype=np.float32)
    rel = an.reliability(probs, targets, bins=10)
    assert rel.counts.sum() == 4 and rel.counts[0] == 1 and rel.counts[9] == 1
    assert rel.ece == pytest.approx((0.05 + 0.15 + 0.05 + 0.15) / 4, abs=1e-6)
    grid = np.array([0.1, 0.5, 0.9])
    curve = an.threshold_curve(probs[:, 0], targets[:, 0], grid)
    np.testing.assert_allclose(curve, [0.75, 1.0, 0.75])
    assert an.threshold_curve(probs[:, 0], np.ones(4, np.float32), grid) is None


def test_rank_errors_puts_most_wrong_images_first():
    attrs = ["A", "B", "C"]
    targets = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.9, 0.9], [0.1, 0.4, 0.9], [0.9, 0.99, 0.6]], dtype=np.float32)
    worst = an.rank_errors(_pred(attrs, targets, probs), np.full(3, 0.5), k=3)
    assert [w.index for w in worst] == [2, 1, 0]
    assert [a for a, _, _ in worst[0].wrong] == ["B", "A", "C"]  # most confident first
    assert worst[2].wrong == [] and [a for a, _ in worst[2].right_positive] == ["A", "B", "C"]


def test_config_differences_read_naturally():
    base = TrainConfig(data=DataConfig(root="/d"), model=ModelConfig(arch="resnet50"),
                       augment=AugmentConfig(hflip=True))  # fmt: skip
    frozen = replace(base, model=replace(base.model, freeze_backbone=True, pretrained=True))
    other = replace(base, model=replace(base.model, arch="densenet121"),
                    augment=AugmentConfig(hflip=False))  # fmt: skip
    described = cmp.describe_config(frozen.to_dict())
    assert described["backbone"] == "frozen (linear probe)"
    assert described["initialisation"] == "ImageNet weights"

    class R:
        def __init__(self, cfg):
            self.config = cfg.to_dict()

    diff = dict(cmp.config_differences([R(base), R(other)]))
    assert diff == {"architecture": ["resnet50", "densenet121"], "augmentation": ["flip", "none"]}


def test_paired_difference(runs_dir: Path):
    a, b = load_runs([runs_dir / "baseline", runs_dir / "augmented"])
    d = cmp.paired_difference(a, b)
    assert d is not None and d.n_images == len(a.predictions)
    assert d.half_width > 0
    assert d.delta != 0  # different models
    # the same run against itself: no difference at all
    same = cmp.paired_difference(a, a)
    assert same.delta == 0 and not same.significant
    from faceattr.report.build import analyze_run, comparison_findings

    comp = cmp.compare_runs([a, a])
    assert comp.scores[0] == comp.scores[1]
    assert comparison_findings(comp, [analyze_run(a)] * 2)[0].startswith("**No run is better**")


# ----------------------------------------------------------------------------- Grad-CAM


def test_grad_cam_on_a_frozen_celebnet():
    import torch

    from faceattr.models import create_model
    from faceattr.report.gradcam import find_target_layer, grad_cam

    torch.manual_seed(0)
    model = create_model("celebnet", 3, num_features=8, img_size=64).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # a frozen probe still gets maps (the input carries grad)
    x = torch.randn(2, 3, 64, 64)
    name, layer = find_target_layer(model, x[:1])
    assert not isinstance(layer, torch.nn.MaxPool2d)
    maps, probs, used = grad_cam(model, x, [0, 2])
    assert used == name and maps.shape == (2, 2, 64, 64) and probs.shape == (2, 2)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    with torch.no_grad():
        np.testing.assert_allclose(probs, torch.sigmoid(model(x))[:, [0, 2]].numpy(), atol=1e-5)


def test_grad_cam_ignores_flip_tta():
    import torch

    from faceattr.models import create_model
    from faceattr.report.gradcam import grad_cam

    torch.manual_seed(0)
    model = create_model("celebnet", 3, num_features=8, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    plain_maps, plain_probs, _ = grad_cam(model, x, [1])
    model.tta = "flip"
    maps, probs, _ = grad_cam(model, x, [1])
    assert maps.shape == (2, 1, 64, 64) and model.tta == "flip"
    np.testing.assert_allclose(maps, plain_maps, atol=1e-6)
    np.testing.assert_allclose(probs, plain_probs, atol=1e-6)
