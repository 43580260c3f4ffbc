"""``faceattr search``: faces of an index that match a query, or that look like a face.

Results are plain dicts: ``image`` (path), ``face`` (number within the image), ``box`` ``[x,
y, w, h]``, ``match`` (the query's combined probability, or the cosine similarity for
``like``) and ``probabilities`` (the attributes the query names, or all for ``like``).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.collection.query import attributes_of, evaluate, parse
from faceattr.collection.store import CollectionError, Store, open_store

DEFAULT_LIMIT = 20


def _model(store: Store) -> dict[str, Any]:
    model = store.model
    if model is None:
        raise CollectionError(f"{store.location} holds no index yet.",
                          f"Run `faceattr index PHOTOS --db {store.location}` first.")  # fmt: skip
    return model


def _top(score: np.ndarray, ids: np.ndarray, candidates: np.ndarray, limit: int | None):
    """``candidates`` (positions) ordered best score first, ties by face id; the first
    ``limit``."""
    if limit is not None and len(candidates) > limit:
        s = score[candidates]
        kth = np.partition(s, len(s) - limit)[len(s) - limit]
        candidates = candidates[s >= kth]  # every face that can be in the first `limit`
    order = np.lexsort((ids[candidates], -score[candidates]))
    return candidates[order][:limit]


def _results(store: Store, ids, chosen, score, names: list[str], used: list[int]) -> list[dict]:
    found = store.faces_by_id(ids[chosen].tolist(), used)
    results = []
    for pos in chosen:
        row = found[int(ids[pos])]
        values = row.pop("values")
        row["match"] = float(score[pos])
        row["probabilities"] = {names[i]: float(v) for i, v in zip(used, values, strict=True)}
        results.append(row)
    return results


def search_index(query: str, db: str | Path, *, limit: int | None = DEFAULT_LIMIT) -> dict:
    """``{"query", "db", "results": [...]}``: the faces matching ``query``, best first."""
    store = open_store(db, create=False)
    try:
        model = _model(store)
        names = model["attributes"]
        node = parse(query, names)
        ids, probs = store.columns()
        matches, score = evaluate(node, lambda i: np.asarray(probs[i]), model["thresholds"])
        chosen = _top(score, ids, np.flatnonzero(matches), limit)
        results = _results(store, ids, chosen, score, names, attributes_of(node))
    finally:
        store.close()
    return {"query": query, "db": str(db), "results": results}


def _logits(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def like_image(
    image: str | Path, db: str | Path, *, limit: int | None = DEFAULT_LIMIT, detect: bool = True
) -> dict:
    """Faces whose attribute profile is nearest (cosine over logits) to the best face found in
    ``image``, predicted with the index's own model; the image itself is left out."""
    from faceattr.errors import UsageError
    from faceattr.inference.detect import create_detector
    from faceattr.inference.predictor import Predictor, iter_predictions

    store = open_store(db, create=False)
    try:
        model = _model(store)
        names = model["attributes"]
        found = create_detector(None) if detect else None
        [result] = iter_predictions([str(image)], Predictor(model["name"]), detector=found,
                                    raw=True)  # fmt: skip
        if result["error"]:
            raise UsageError(f"--like {image}: {result['error']}")
        if not result["faces"]:
            raise UsageError(
                f"--like {image}: no face found.",
                "Pass a photo with a face (or an aligned crop, with --no-detect).",
            )
        target = _logits(np.asarray(result["faces"][0]["probability_array"], np.float64))
        target /= np.linalg.norm(target) or 1.0
        ids, probs = store.columns()
        logits = _logits(np.asarray(probs))  # [A, N]
        sims = target @ logits / np.maximum(np.linalg.norm(logits, axis=0), 1e-12)
        me = str(Path(image).expanduser().absolute())
        own = store.conn.execute(
            "SELECT f.id FROM faces f JOIN images i ON i.id = f.image_id WHERE i.path = ?", (me,)
        ).fetchall()
        keep = ~np.isin(ids, [r[0] for r in own])
        chosen = _top(sims, ids, np.flatnonzero(keep), limit)
        results = _results(store, ids, chosen, sims, names, list(range(len(names))))
    finally:
        store.close()
    return {"like": str(image), "db": str(db), "results": results}


def _thumbnail(path: str, box: list[float], size: int = 128) -> str | None:
    """A data: URI of the face (its box with a margin), or None when the image is gone."""
    from faceattr.data.images import load_image
    from faceattr.errors import FaceAttrError

    try:
        image = load_image(path)
    except FaceAttrError:
        return None
    x, y, w, h = box
    m = 0.25 * max(w, h)
    crop = image.crop((int(x - m), int(y - m), int(x + w + m), int(y + h + m)))
    crop.thumbnail((size, size))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def contact_sheet(found: dict, title: str) -> str:
    """A self-contained HTML page of the results' face thumbnails with their scores."""
    tiles = []
    for r in found["results"]:
        uri = _thumbnail(r["image"], r["box"])
        img = (f'<img src="{uri}" alt="face {r["face"]}">' if uri
               else '<div class="gone">image missing</div>')  # fmt: skip
        probs = "".join(f"<li>{html.escape(k)} <b>{v:.3f}</b></li>"
                        for k, v in list(r["probabilities"].items())[:6])  # fmt: skip
        tiles.append(
            f'<figure>{img}<figcaption><span class="score">{r["match"]:.3f}</span> '
            f'<span class="path" title="{html.escape(r["image"])}">'
            f"{html.escape(Path(r['image']).name)} #{r['face']}</span><ul>{probs}</ul>"
            "</figcaption></figure>"
        )
    body = "".join(tiles) or "<p>No face matches.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #222; }}
header {{ background: #20232a; color: #fff; padding: 16px 24px; }}
header h1 {{ font-size: 18px; margin: 0; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
        gap: 12px; padding: 16px 24px; }}
figure {{ background: #fff; margin: 0; padding: 8px; border-radius: 6px;
          box-shadow: 0 1px 3px rgba(0,0,0,.15); }}
figure img {{ display: block; margin: 0 auto; max-width: 100%; height: 128px;
              object-fit: contain; }}
.gone {{ height: 128px; display: flex; align-items: center; justify-content: center;
         color: #999; }}
figcaption {{ font-size: 12px; margin-top: 6px; overflow-wrap: anywhere; }}
.score {{ font-weight: 700; color: #0b62c4; }}
ul {{ list-style: none; padding: 0; margin: 4px 0 0; }}
</style></head><body>
<header><h1>{html.escape(title)}</h1><div>{len(found["results"])} face(s) from
{html.escape(found["db"])}</div></header>
<main>{body}</main></body></html>
"""
