"""The image sections of a run's report: a gallery of the worst errors and Grad-CAM heat
maps. Where a photo holds several labelled faces (WFLW), both show the face itself: its box
cut out through the model's own :class:`~faceattr.data.transforms.Preprocessing`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from faceattr.data.registry import DATASETS
from faceattr.data.transforms import Preprocessing
from faceattr.errors import FaceAttrError
from faceattr.report import analysis as an
from faceattr.report import plots
from faceattr.report.analysis import RunAnalysis
from faceattr.report.document import Card, Figure, Gallery, Note, Paragraph, Section, literal
from faceattr.report.format import decision_note
from faceattr.report.load import RunData
from faceattr.report.options import (
    MAX_GALLERY,
    MAX_GRADCAM_ATTRIBUTES,
    MAX_GRADCAM_IMAGES,
    ReportOptions,
)

# Attributes whose evidence sits in one face region: the most telling Grad-CAM targets.
GRADCAM_PREFERRED = (
    "Eyeglasses", "Smiling", "Wearing_Hat", "Bangs", "Mustache", "Goatee", "Blond_Hair",
    "Mouth_Slightly_Open", "Wearing_Lipstick", "Bald", "Male",
)  # fmt: skip

GALLERY_LINES = 6  # wrong (and right) attributes listed per gallery image


def image_dirs(run: RunData) -> list[Path]:
    """Folders that may hold the evaluated images: the one eval saved, then the config's."""
    dirs = []
    pred = run.predictions
    if pred is not None and pred.image_dir is not None:
        dirs.append(pred.image_dir)
    root = run.dataset_root
    spec = DATASETS.get(run.config.get("data", {}).get("dataset", "celeba"))
    if root and spec is not None:
        dirs += spec.image_dirs(Path(root).expanduser())
    return dirs


def _image_path(run: RunData, name: str) -> Path | None:
    for d in image_dirs(run):
        p = d / name
        if p.is_file():
            return p
    return None


def _face(run: RunData, i: int) -> Image.Image | None:
    """Row ``i``'s evaluated picture: the photo, with its face box cut out where the
    predictions have one. None when the photo is not on this machine; raises
    :class:`FaceAttrError` when it cannot be read."""
    from faceattr.data.images import load_image

    pred = run.predictions
    assert pred is not None
    path = _image_path(run, str(pred.images[i]))
    return None if path is None else Preprocessing.region(load_image(path), pred.box(i))


def _thumbnail(image: Image.Image, height: int = 150) -> bytes:
    """``image`` scaled to ``height`` pixels, as JPEG."""
    if image.height != height:
        width = max(1, round(image.width * height / image.height))
        image = image.resize((width, height))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _not_here(run: RunData, what: str) -> Note:
    where = ", ".join(literal(d) for d in image_dirs(run)) or "no image folder recorded"
    return Note(f"{what} skipped: the evaluated images are not on this machine (looked in "
                f"{where}).", "warn")  # fmt: skip


def gallery_section(a: RunAnalysis, anchor: str, options: ReportOptions) -> Section | None:
    """The evaluated faces with the most wrong attributes, each with what it got wrong."""
    pred = a.run.predictions
    if pred is None or options.gallery <= 0:
        return None
    sec = Section(f"{anchor}gallery", "Gallery: the worst errors",
                  lead="Evaluated images with the most wrong attributes first (most "
                  "confident mistakes first within an image). Red: wrong, with the model's "
                  "probability and the true label; green: attributes it rightly says are "
                  "present." + decision_note(a.run))  # fmt: skip
    worst = an.rank_errors(pred, an.decision_thresholds(a.run), min(options.gallery, MAX_GALLERY))
    names, faces = pred.names(), pred.face_numbers()
    cards, missing = [], []
    for item in worst:
        try:
            face = _face(a.run, item.index)
        except FaceAttrError:
            face = None
        if face is None:
            missing.append(item.image)
            continue
        wrong = [f"{literal(attr)} {p:.2f}, truly {'no' if label == 0 else 'yes'}"
                 for attr, p, label in item.wrong[:GALLERY_LINES]]  # fmt: skip
        if len(item.wrong) > GALLERY_LINES:
            wrong.append(f"... {len(item.wrong) - GALLERY_LINES} more wrong")
        right = [f"{literal(attr)} {p:.2f}" for attr, p in item.right_positive[:GALLERY_LINES]]
        k = int(faces[item.index])  # file names must differ for faces of one photo
        stem = Path(item.image).stem + (f"-face{k}" if k >= 0 else "")
        cards.append(Card(title=names[item.index], image=_thumbnail(face),
                          subtitle=f"{len(item.wrong)} wrong of {item.n_known}",
                          wrong=wrong, right=right, name=f"{anchor}gallery-{stem}"))  # fmt: skip
    if not cards:
        sec.add(_not_here(a.run, "Gallery"))
        return sec
    if missing:
        sec.add(Note(f"{len(missing)} image(s) could not be read and were left out.", "warn"))
    sec.add(Gallery(cards))
    return sec


def _gradcam_attributes(
    a: RunAnalysis, options: ReportOptions, model_attrs: list[str]
) -> list[str]:
    """The attributes to explain: the ones asked for, else region-specific ones the data has."""
    pred = a.run.predictions
    assert pred is not None
    if options.gradcam_attributes:
        from faceattr.attributes import resolve_attributes

        chosen = resolve_attributes(list(options.gradcam_attributes), model_attrs)
        return chosen[:MAX_GRADCAM_ATTRIBUTES]
    has_pos = {x for x in pred.attributes if (pred.column(x) == 1).any()}
    chosen = [x for x in GRADCAM_PREFERRED if x in model_attrs and x in has_pos][:3]
    if len(chosen) < 3:  # the model's most precise attributes
        ranked = sorted(a.rows, key=lambda r: -(r.ap or 0))
        chosen += [r.name for r in ranked if r.name in model_attrs and r.name not in chosen]
    return chosen[:3]


def _gradcam_images(a: RunAnalysis, attrs: list[str], n: int) -> list[int]:
    """Images to explain: per attribute, its most confident true positives, in turn."""
    pred = a.run.predictions
    assert pred is not None
    thr = an.decision_thresholds(a.run)
    per_attr = []
    for x in attrs:
        j = pred.attributes.index(x)
        tp = np.flatnonzero((pred.targets[:, j] == 1) & (pred.probs[:, j] >= thr[j]))
        per_attr.append(list(tp[np.argsort(-pred.probs[tp, j])]))
    chosen: list[int] = []
    while len(chosen) < n and any(per_attr):
        for lst in per_attr:
            while lst and lst[0] in chosen:
                lst.pop(0)
            if lst and len(chosen) < n:
                chosen.append(int(lst.pop(0)))
    if len(chosen) < n:
        chosen += [i for i in range(len(pred)) if i not in chosen][: n - len(chosen)]
    return chosen


def gradcam_section(a: RunAnalysis, anchor: str, options: ReportOptions) -> Section | None:
    """Grad-CAM heat maps of a few attributes on the faces the model most surely got right."""
    run, pred = a.run, a.run.predictions
    if pred is None or options.gradcam_images <= 0:
        return None
    sec = Section(f"{anchor}gradcam", "Grad-CAM: where the model looks",
                  lead="Heat maps of the regions that drove each attribute's score, on the "
                  "images where the model most confidently (and rightly) said yes.")  # fmt: skip
    if run.model_path is None:
        sec.add(Note("Grad-CAM skipped: the run directory has no model file.", "warn"))
        return sec
    try:
        fig, layer, attrs = _gradcam_figure(a, options, anchor)
    except FaceAttrError as exc:
        sec.add(Note(f"Grad-CAM skipped: {exc.message}", "warn"))
        return sec
    except (OSError, RuntimeError, ImportError, ValueError) as exc:
        sec.add(Note(f"Grad-CAM skipped: {type(exc).__name__}: {literal(exc)}", "warn"))
        return sec
    if fig is None:
        sec.add(_not_here(run, "Grad-CAM"))
        return sec
    sec.add(fig, Paragraph(f"Attributes: {', '.join(map(literal, attrs))}. Feature map: "
                           f"`{literal(layer)}` of the backbone."))  # fmt: skip
    return sec


def _gradcam_figure(
    a: RunAnalysis, options: ReportOptions, anchor: str
) -> tuple[Figure | None, str, list[str]]:
    """(the figure or None when no image is here, the feature map's layer, attributes)."""
    import torch

    from faceattr.models import load_model_file
    from faceattr.report.gradcam import grad_cam
    from faceattr.utils import resolve_device

    run, pred = a.run, a.run.predictions
    assert pred is not None and run.model_path is not None
    device = resolve_device(options.device)
    model, info = load_model_file(run.model_path, device=str(device))
    prep = Preprocessing.from_info(info)  # what the model saw in training and evaluation
    model_attrs = list(info.attributes)
    attrs = _gradcam_attributes(a, options, model_attrs)
    n = min(options.gradcam_images, MAX_GRADCAM_IMAGES)
    crops, keep = [], []
    for i in _gradcam_images(a, [x for x in attrs if x in pred.attributes], n * 2):
        try:
            face = _face(run, i)
        except FaceAttrError:
            continue
        if face is None:
            continue
        crops.append(prep.pixels(face))
        keep.append(i)
        if len(keep) == n:
            break
    if not keep:
        return None, "", attrs
    pixels = np.stack(crops)  # uint8 [B, 3, S, S]
    x = prep.normalize(torch.from_numpy(pixels).to(device))
    maps, probs, layer = grad_cam(model, x, [model_attrs.index(t) for t in attrs])
    labels = np.array([[pred.targets[i, pred.attributes.index(t)] if t in pred.attributes
                        else np.nan for t in attrs] for i in keep])  # fmt: skip
    names = pred.names()
    titles = [names[i] for i in keep]
    fig = plots.gradcam_grid(pixels.transpose(0, 2, 3, 1), maps, attrs, probs, labels, titles,
                             name=f"{anchor}gradcam")  # fmt: skip
    return fig, layer, attrs
