"""Reports on a dataset where one photo holds several labelled faces (synthetic WFLW).

``predictions-<split>.npz`` keeps each face's identity (row and face box); paired comparisons,
subgroup labels, the gallery and Grad-CAM key on it, so every face counts and is shown on
its own. Old files without those arrays still load.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import perturb_head
from faceattr.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from faceattr.data import BOX_COLUMNS, cut_box, load_split
from faceattr.data.images import load_image
from faceattr.data.synthetic import write_synthetic_wflw
from faceattr.data.transforms import Preprocessing
from faceattr.report import ReportOptions, build_report, load_runs
from faceattr.report import analysis as an
from faceattr.report import comparison as cmp
from faceattr.report.build import analyze_run, comparison_findings
from faceattr.report.document import Gallery
from faceattr.report.load import read_predictions

PHOTO_SIZE = (180, 100)  # (width, height): wide photos, square face boxes


@pytest.fixture(scope="module")
def wflw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset root, run a, run b): two evaluated runs on a synthetic WFLW copy (read-only)."""
    from faceattr.engine.evaluate import evaluate_model
    from faceattr.engine.fit import fit

    base = tmp_path_factory.mktemp("wflw-report")
    root = write_synthetic_wflw(base / "wflw", n_train=40, n_test=16, image_size=PHOTO_SIZE)
    data = DataConfig(dataset="wflw", root=str(root), img_size=32, workers=0)
    cfg = TrainConfig(
        data=data,
        model=ModelConfig(arch="celebnet", num_features=16, dropout=0.0),
        optim=OptimConfig(lr=3e-3),
        epochs=2,
        batch_size=32,
        out=str(base / "a"),
    )
    fit(replace(cfg, augment=replace(cfg.augment, hflip=False)))
    shutil.copytree(base / "a", base / "b")
    perturb_head(base / "b" / "model.safetensors")
    for run in ("a", "b"):
        evaluate_model(base / run, data, "test", batch_size=64)
    return root, base / "a", base / "b"


def _drop_identity(npz: Path) -> None:
    """Rewrite ``npz`` as files were before rows and boxes were saved."""
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files if k not in ("row", "box")}
    np.savez_compressed(npz, **arrays)


def test_predictions_keep_each_face(wflw):
    root, a, _ = wflw
    test = load_split(DataConfig(dataset="wflw", root=str(root)), "test")
    pred = read_predictions(a / "predictions-test.npz")
    assert len(pred) == len(test)
    assert len(set(pred.images.tolist())) < len(pred)  # several faces share a photo
    assert pred.rows is not None and pred.boxes is not None
    np.testing.assert_array_equal(pred.images, test.frame["image"].to_numpy()[pred.rows])
    boxes = test.frame[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(pred.boxes, boxes[pred.rows])
    assert len(set(pred.identities().tolist())) == len(pred)
    names = pred.names()
    assert len(set(names)) == len(pred) and any("(face 1)" in n for n in names)
    assert any("(face 0)" in n for n in names)  # numbered from 0, as predict and search do


def test_paired_comparison_counts_every_face(wflw, tmp_path):
    _, a, b = wflw
    run_a, run_b = load_runs([a, b])
    assert run_a.predictions is not None
    n_faces = len(run_a.predictions)
    n_photos = len(set(run_a.predictions.images.tolist()))
    d = cmp.paired_difference(run_a, run_b)
    assert d is not None and d.n_images == n_faces > n_photos and d.unit == "faces"
    assert d.delta != 0
    # Pairing is by identity, not position: b's rows in another order give the same answer.
    shuffled = tmp_path / "b-shuffled"
    shutil.copytree(b, shuffled)
    npz = shuffled / "predictions-test.npz"
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    order = np.random.default_rng(0).permutation(n_faces)
    for k in ("image", "row", "box", "probs", "targets"):
        arrays[k] = arrays[k][order]
    np.savez_compressed(npz, **arrays)
    (run_s,) = load_runs([shuffled])
    same = cmp.paired_difference(run_a, run_s)
    assert same is not None and same.n_images == n_faces
    assert same.delta == pytest.approx(d.delta) and same.half_width == pytest.approx(d.half_width)
    comp = cmp.compare_runs([run_a, run_b])
    text = " ".join(comparison_findings(comp, [analyze_run(run_a), analyze_run(run_b)]))
    assert f"on {n_faces:,} shared faces" in text


def test_old_prediction_files_still_load_and_pair_every_row(wflw, tmp_path):
    _, a, b = wflw
    old_a, old_b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(a, old_a)
    shutil.copytree(b, old_b)
    for run in (old_a, old_b):
        _drop_identity(run / "predictions-test.npz")
    run_a, run_b = load_runs([old_a, old_b])
    pred = run_a.predictions
    assert pred is not None and pred.rows is None and pred.boxes is None
    assert len(set(pred.identities().tolist())) == len(pred)  # image name + face number
    d = cmp.paired_difference(run_a, run_b)
    assert d is not None and d.n_images == len(pred)
    new = cmp.paired_difference(*load_runs([a, b]))
    assert new is not None and d.delta == pytest.approx(new.delta)  # same faces paired
    # one old file and one new: paired on image names, still every row
    mixed = cmp.paired_difference(run_a, load_runs([b])[0])
    assert mixed is not None and mixed.n_images == len(pred)
    report = build_report([run_a], ReportOptions(gallery=2, gradcam_images=1))
    assert any(s.title == "Gallery: the worst errors" for s in report.sections)


def test_group_labels_from_the_dataset_match_each_face(wflw):
    """A group attribute the model lacks is looked up per face, not per photo."""
    _, a, _ = wflw
    (run,) = load_runs([a])
    full = run.predictions
    assert full is not None
    j = full.attributes.index("Pose")
    only = replace(full, probs=full.probs[:, [j]], targets=full.targets[:, [j]],
                   attributes=["Pose"])  # fmt: skip
    labels, notes = an.group_labels(replace(run, predictions=only), ["Blur"])
    assert not notes
    blur, source = labels["Blur"]
    assert source == "the dataset's label file"
    truth = full.column("Blur")
    np.testing.assert_array_equal(blur, truth)
    photos = np.unique(full.images)
    mixed = [p for p in photos if len(set(truth[full.images == p].tolist())) > 1]
    assert mixed, "the synthetic set should have a photo whose faces differ in Blur"


def test_gallery_and_gradcam_show_the_face_box(wflw, monkeypatch):
    from faceattr.models import read_model_info
    from faceattr.report import plots

    _, a, _ = wflw
    (run,) = load_runs([a])
    pred = run.predictions
    assert pred is not None and pred.boxes is not None
    seen = {}
    real_grid = plots.gradcam_grid

    def spy(images, maps, attributes, probs, labels, titles, name="gradcam"):
        seen.update(images=images, titles=list(titles))
        return real_grid(images, maps, attributes, probs, labels, titles, name=name)

    monkeypatch.setattr(plots, "gradcam_grid", spy)
    report = build_report([run], ReportOptions(gallery=6, gradcam_images=3))

    names = pred.names()
    image_dir = pred.image_dir
    assert image_dir is not None

    def row_of(title: str) -> int:
        return names.index(title)

    # Grad-CAM saw exactly what the model sees for each face: its box, cut and preprocessed.
    prep = Preprocessing.from_info(read_model_info(a / "model.safetensors"))
    assert len(seen["titles"]) == 3
    for k, title in enumerate(seen["titles"]):
        i = row_of(title)
        photo = load_image(image_dir / str(pred.images[i]))
        expected = prep.pixels(photo, pred.box(i)).transpose(1, 2, 0)
        np.testing.assert_array_equal(seen["images"][k], expected)
        assert not np.array_equal(expected, prep.pixels(photo).transpose(1, 2, 0))

    # The gallery shows each face (a near-square box), not the whole wide photo.
    (gallery,) = [b for s in report.sections for b in s.blocks if isinstance(b, Gallery)]
    assert len(gallery.cards) == 6
    assert len({c.name for c in gallery.cards}) == 6  # Markdown file names differ per face
    for card in gallery.cards:
        assert card.image is not None
        shown = Image.open(io.BytesIO(card.image)).convert("RGB")
        width, height = shown.size
        assert height == 150 and abs(width - 150) <= 6  # the whole photo would be 270x150
        i = row_of(card.title)
        box = pred.box(i)
        assert box is not None
        face = cut_box(load_image(image_dir / str(pred.images[i])), box).resize(shown.size)
        diff = np.abs(np.asarray(shown, float) - np.asarray(face, float)).mean()
        assert diff < 8, (card.title, diff)  # JPEG noise only
