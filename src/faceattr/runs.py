"""Run directories: :class:`RunDir`, the one owner of their layout and of the files in them.

A run directory is what ``faceattr train --out DIR`` writes (see docs/formats.md)::

    config.json            the resolved TrainConfig
    model.safetensors      the best epoch's model (tuned thresholds stored at the end)
    last.safetensors       the latest epoch's model
    train_state.pt         what resume needs: weights, optimizer, schedule, EMA, counters
    history.csv            one row per epoch
    metrics-<split>.json   metrics of an evaluation (train writes metrics-valid.json)
    predictions-<split>.npz   per-face probabilities of an evaluation (`faceattr eval`)
    faceattr.lock          while a process trains the run: its PID and host

Every file is written atomically (temp file + ``os.replace``): a kill at any moment leaves
each file whole, old or new. Within an epoch's checkpoint the resume state is written first
(the epoch counts as done once it is on disk); the model files and the history after it are
rewritten from the state on resume when a kill came between (:meth:`RunDir.repair`).

Importing this module needs no torch; the methods that read or write the resume state or a
model's weights import it when called.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from faceattr.errors import FaceAttrError, ModelError, UsageError, command

if TYPE_CHECKING:
    from faceattr.config import TrainConfig
    from faceattr.metrics import SavedMetrics
    from faceattr.models.info import ModelInfo

CONFIG_FILE = "config.json"
BEST_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.csv"
LOCK_FILE = "faceattr.lock"
# The model files of a run, in the order a MODEL argument naming the run prefers them: the
# best model, then the latest epoch's (training writes the best one after its first epoch).
MODEL_FILES = (BEST_FILE, LAST_FILE)
# The columns of history.csv; an epoch's row may hold more (kept in the resume state only).
HISTORY_COLUMNS = (
    "epoch", "lr", "lr_min", "lr_max", "train_loss", "train_accuracy", "val_loss",
    "val_mean_accuracy", "val_strict_accuracy", "images_per_second", "seconds",
)  # fmt: skip


class RunDir:
    """A run directory: where each file lives, and reading and writing them.

    ``RunDir(path)`` does not touch the disk; :meth:`is_run` says whether a run is there.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- the layout ----------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def best_file(self) -> Path:
        return self.path / BEST_FILE

    @property
    def last_file(self) -> Path:
        return self.path / LAST_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY_FILE

    def metrics_file(self, split: str, tag: str = "") -> Path:
        """``metrics-<split>.json`` (``tag``: a suffix for another model file of the run)."""
        return self.path / f"metrics-{split}{tag}.json"

    def predictions_file(self, split: str, tag: str = "") -> Path:
        return self.path / f"predictions-{split}{tag}.npz"

    @staticmethod
    def eval_tag(model_file: Path) -> str:
        """The suffix of an evaluation's files: none for the run's own model files, the file's
        stem for another file kept in the run (e.g. ``-model-int8`` for an export)."""
        return "" if model_file.name in MODEL_FILES else f"-{model_file.stem}"

    # --- what is there -------------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether a training run was started here (it has its config)."""
        return self.config_file.is_file()

    @classmethod
    def containing(cls, model_file: str | Path) -> RunDir | None:
        """The run directory a model file sits in, if it sits in one."""
        run = cls(Path(model_file).parent)
        return run if run.is_run() else None

    def config(self) -> TrainConfig:
        from faceattr.config import TrainConfig

        return TrainConfig.load(self.config_file)

    def config_dict(self) -> dict[str, Any]:
        """``config.json`` as stored (no TrainConfig: for reports of runs of other versions)."""
        return _read_json(self.config_file)

    def model_file(self) -> Path | None:
        """The model a MODEL argument naming this run means: the best, else the latest."""
        return next((f for f in (self.best_file, self.last_file) if f.is_file()), None)

    def splits(self) -> list[str]:
        """The splits this run has metrics for (``metrics-<split>.json``)."""
        return sorted(p.stem[len("metrics-") :] for p in self.path.glob("metrics-*.json"))

    def read_metrics(self, split: str) -> SavedMetrics:
        """``metrics-<split>.json`` (a file of an older version may lack some keys); a
        DataError when it is not a metrics file (:func:`metrics_problems`)."""
        from faceattr.errors import DataError

        path = self.metrics_file(split)
        data = _read_json(path)
        problems = metrics_problems(data)
        if problems:
            raise DataError(
                f"{path} is not a faceattr metrics file: {'; '.join(problems)}.",
                "Re-run the command that wrote it (`faceattr eval`).",
            )
        return cast("SavedMetrics", data)

    def read_history(self) -> list[dict[str, float | None]]:
        """``history.csv`` -> one dict per epoch (numbers as float, empty cells as None)."""
        if not self.history_file.exists():
            return []
        rows: list[dict[str, float | None]] = []
        try:
            with self.history_file.open(newline="", encoding="utf-8", errors="replace") as fh:
                for row in csv.DictReader(fh):
                    parsed: dict[str, float | None] = {}
                    for key, value in row.items():
                        if not isinstance(key, str):  # cells beyond the header: no column
                            continue
                        try:
                            parsed[key] = float(value) if value not in ("", None) else None
                        except (TypeError, ValueError):
                            parsed[key] = None
                    rows.append(parsed)
        except (OSError, csv.Error):  # damaged (NUL bytes, a huge cell): the rows before it
            pass
        return rows

    def history_rows(self) -> int:
        """Rows in ``history.csv`` (-1: no file)."""
        if not self.history_file.exists():
            return -1
        try:
            with self.history_file.open(encoding="utf-8", errors="replace", newline="") as fh:
                return max(0, sum(1 for _ in csv.reader(fh)) - 1)
        except (OSError, csv.Error):
            return -1  # unreadable: rewritten by repair()

    def model_epoch(self, model_file: Path) -> int | None:
        """The epoch a model file of this run holds (None: no file, or unreadable)."""
        from faceattr.models.file import read_model_info

        try:
            return (
                int(read_model_info(model_file).extra.get("epoch", 0))
                if model_file.exists()
                else None
            )
        except Exception:  # damaged or foreign: rewritten by repair()
            return None

    # --- writing -------------------------------------------------------------------------

    def lock(
        self, note: Callable[[str], None] | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Held by the one process that trains the run (see :func:`faceattr.fileio.hold_lock`)."""
        from faceattr.fileio import hold_lock

        return hold_lock(self.path, LOCK_FILE, what="run directory", note=note)

    def remove_stale_temps(self) -> str | None:
        """Temp files a killed save left behind, removed (call it holding :meth:`lock`)."""
        from faceattr.fileio import remove_stale_temps

        return remove_stale_temps(self.path) if self.is_run() else None

    def save_config(self, cfg: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        cfg.save(self.config_file)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        from faceattr.fileio import atomic_write_text

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: _fmt(row.get(k)) for k in HISTORY_COLUMNS})
        atomic_write_text(self.history_file, buf.getvalue())

    def write_metrics(self, split: str, metrics: Mapping[str, Any], tag: str = "") -> Path:
        from faceattr.fileio import atomic_write_text
        from faceattr.utils import to_json

        path = self.metrics_file(split, tag)
        atomic_write_text(path, to_json(metrics, indent=2) + "\n")
        return path

    def save_model(self, model_file: Path, model: Any, info: ModelInfo) -> None:
        from faceattr.models.io import save_model_file

        save_model_file(model_file, model, info)

    # --- the resume state ----------------------------------------------------------------

    def load_state(self) -> dict[str, Any] | None:
        """The resume state (None: no epoch finished yet); a ModelError when it is damaged."""
        if not self.state_file.exists():
            return None
        import torch

        try:
            state = torch.load(self.state_file, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged zip or pickle
            raise ModelError(
                f"The resume state {self.state_file} cannot be read: {e}",
                f"Its model files can still be used ({BEST_FILE}, {LAST_FILE}); to train "
                "again, start a new run.",
            ) from e
        problems = _state_problems(state, torch.Tensor)
        if problems:
            raise self.state_error("; ".join(problems))
        return state

    def state_error(self, problem: str) -> ModelError:
        """The error for a resume state that cannot be what this run continues from."""
        hint = f"Its model files can still be used ({BEST_FILE}, {LAST_FILE}); "
        if self.best_file.is_file():
            hint += (
                command("`faceattr finetune {run}`", run=self.path)
                + " trains on from the best one, "
            )
        return ModelError(
            f"The resume state {self.state_file} is damaged or not faceattr's: {problem}.",
            hint + "or start a new run.",
        )

    def save_state(self, state: dict[str, Any]) -> None:
        import torch

        from faceattr.fileio import atomic_open

        with atomic_open(self.state_file, "wb") as fh:
            torch.save(state, fh)

    def saved_epoch(self) -> int:
        """The last epoch whose resume state is complete on disk (0: none, or unreadable)."""
        try:
            state = self.load_state()
        except ModelError:
            return 0
        return int(state.get("epoch", 0)) if state else 0

    def mark_finished(self) -> None:
        """Record in the resume state that the run is done (thresholds and metrics written)."""
        state = self.load_state()
        assert state is not None, "a finished run has a resume state"
        state["finished"] = True
        self.save_state(state)

    def save_epoch(
        self,
        epoch: int,
        state: dict[str, Any],
        model: Any,
        info: ModelInfo,
        *,
        best: bool,
        history: list[dict[str, Any]],
    ) -> None:
        """A finished epoch's checkpoint: first the resume state (the epoch counts as done once
        it is on disk), then the model (also as the best one when it is) and the history,
        which :meth:`repair` rebuilds from the state after a kill between the two."""
        from faceattr.fileio import WriteError

        try:
            self.save_state(state)
        except WriteError as e:
            done = f"epoch {epoch - 1}" if epoch > 1 else "none yet"
            raise WriteError(e.message, self._kept(f"The last complete checkpoint ({done}) "
                                                   "is intact.", e)) from e  # fmt: skip
        try:
            if best:
                self.save_model(self.best_file, model, info)
            self.save_model(self.last_file, model, info)
            self.write_history(history)
        except WriteError as e:
            raise WriteError(
                e.message,
                self._kept(f"Epoch {epoch} is saved in {STATE_FILE}; its model files are "
                           "rewritten on resume.", e),
            ) from e  # fmt: skip

    def repair(
        self, epoch: int, model: Any, info: ModelInfo, *, best: bool, history: list[dict]
    ) -> list[str]:
        """After a kill between an epoch's resume state and its other files: those files
        rewritten from the state (``model`` holds epoch ``epoch``; ``best``: it was the best
        epoch). The names of the files rewritten."""
        repaired = []
        if self.model_epoch(self.last_file) != epoch:
            self.save_model(self.last_file, model, info)
            repaired.append(LAST_FILE)
        if best and self.model_epoch(self.best_file) != epoch:
            self.save_model(self.best_file, model, info)
            repaired.append(BEST_FILE)
        if self.history_rows() != len(history):
            self.write_history(history)
            repaired.append(HISTORY_FILE)
        return repaired

    def bytes_needed(self, weight_bytes: int, state_bytes: int) -> int:
        """Disk space the checkpoints still need: the best and last model files and the resume
        state, and while one is replaced a temp copy of it, less what they take already."""
        need = 2 * weight_bytes + 2 * state_bytes
        have = sum(f.stat().st_size for f in (self.best_file, self.last_file, self.state_file)
                   if f.exists())  # fmt: skip
        return max(state_bytes, need - have)

    # --- what to tell the user -----------------------------------------------------------

    def resume_command(self) -> str:
        """The command (in backticks) that continues this run."""
        return command("`faceattr train --resume {run}`", run=self.path)

    def resume_hint(self) -> str:
        """What an interrupted run kept and the command that continues it."""
        if not self.is_run():
            return f"No epoch of {self.path} was finished, so nothing was kept."
        epoch = self.saved_epoch()
        done = {0: "No epoch was finished yet", 1: "Epoch 1 is saved"}.get(
            epoch, f"Epochs 1-{epoch} are saved"
        )
        return f"{done} in {self.path}: {self.resume_command()} continues the run."

    def _kept(self, what: str, error: FaceAttrError) -> str:
        """A checkpoint's write failed: what is safe, the fix, and the command that goes on."""
        fix = (error.hint or "").splitlines()[-1]
        return f"{what}\n{fix} Then {self.resume_command()} continues the run."

    def check_new(self) -> None:
        """A UsageError when a run was already started here (a new run needs its own folder)."""
        if self.is_run():
            raise UsageError(
                f"{self.path} already holds a training run.",
                f"Continue it with {self.resume_command()}, or choose another `out=DIR`.",
            )
        own = (self.best_file, self.last_file, self.state_file, self.history_file)
        taken = [p.name for p in own if p.exists() or p.is_symlink()]
        if taken:  # not a run's: someone's files, which the run's would replace
            raise UsageError(
                f"{self.path} already holds {', '.join(taken)}, which a new run would replace.",
                "Choose an empty folder for `out=DIR`, or move those files away.",
            )

    def check_resumable(self) -> None:
        if not self.is_run():
            raise UsageError(
                f"Cannot resume: {self.path} is not a run directory (no {CONFIG_FILE}).",
                "Pass the directory a previous `faceattr train` wrote (its `out=DIR`).",
            )


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _state_problems(state: Any, tensor: type) -> list[str]:
    """How the resume state read from disk differs from what :func:`faceattr.engine.fit`
    writes: a dict of counters, state dicts and the history (``tensor``: torch.Tensor)."""
    if not isinstance(state, dict):
        return [f"it holds a {type(state).__name__}, not a dict"]

    def whole(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def number(v: Any) -> bool:
        return v is None or isinstance(v, (int, float)) and not isinstance(v, bool)

    def row(r: Any) -> bool:  # a history row: column -> number (None: not measured)
        return isinstance(r, dict) and all(isinstance(k, str) and number(x) for k, x in r.items())

    problems = [f"{key} is missing" for key in ("epoch", "model", "optimizer", "history",
                "best_metric", "best_epoch") if key not in state]  # fmt: skip
    epoch = state.get("epoch", 0)
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "epoch": (lambda v: whole(v, 0), "an epoch number"),
        "best_epoch": (lambda v: whole(v, 0) and (not whole(epoch, 0) or v <= epoch),
                       "an epoch number up to epoch"),
        "bad_epochs": (lambda v: whole(v, 0), "a count"),
        "world_size": (lambda v: whole(v, 1), "a count of processes"),
        "best_metric": (lambda v: number(v) and v is not None, "a number"),
        "finished": (lambda v: isinstance(v, bool), "true or false"),
        "model": (lambda v: isinstance(v, dict) and all(
            isinstance(k, str) and isinstance(t, tensor) for k, t in v.items()),
            "a dict of tensors"),
        "optimizer": (lambda v: isinstance(v, dict), "a dict"),
        "scheduler": (lambda v: v is None or isinstance(v, dict), "a dict or None"),
        "scaler": (lambda v: v is None or isinstance(v, dict), "a dict or None"),
        "ema": (lambda v: v is None or isinstance(v, dict), "a dict or None"),
        "history": (lambda v: isinstance(v, list) and all(map(row, v)),
                    "a list of rows (column -> number)"),
    }  # fmt: skip
    for key, (ok, what) in checks.items():
        if key in state and not ok(state[key]):
            problems.append(f"{key} is {_kind(state[key])}, expected {what}")
    return problems


def _kind(value: Any) -> str:
    if isinstance(value, (float, bool)) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**30 else "a huge number"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    return f"a {type(value).__name__}"


# The keys of a metrics file, by the kind of value each holds (metrics.SavedMetrics).
_SUMMARY = ("mean_accuracy", "mean_balanced_accuracy", "strict_accuracy", "majority_accuracy",
            "macro_precision", "macro_recall", "macro_f1", "mean_average_precision")  # fmt: skip
_TEXTS = ("majority_source", "threshold_source", "split", "model", "backend", "dataset", "root",
          "tta")  # fmt: skip
_RATES = ("accuracy", "precision", "recall", "f1", "balanced_accuracy", "average_precision",
          "majority_accuracy", "threshold")  # fmt: skip
_COUNTS = ("positives", "negatives", "support", "tp", "fp", "tn", "fn")


def _is_number(v: Any, *, none: bool = True) -> bool:
    return (none and v is None) or isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def metrics_problems(data: Mapping[str, Any]) -> list[str]:
    """How ``data`` (a ``metrics-<split>.json``) differs from what faceattr writes: each key
    present must hold its kind of value, and ``per_attribute`` must be there (reports read
    every attribute's numbers from it). Keys of other versions are allowed."""
    problems: list[str] = []

    def expect(key: str, value: Any, ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{key} is {_kind(value)}, expected {what}")

    for key in _SUMMARY:
        if key in data:
            expect(key, data[key], _is_number(data[key]), "a number or null")
    for key in ("n_images", "n_attributes", "skipped_images"):
        if key in data:
            expect(key, data[key], _is_count(data[key]), "a count")
    for key in _TEXTS:
        if key in data:
            expect(key, data[key], isinstance(data[key], str), "a text")
    checks: dict[str, Callable[[Any], bool]] = {
        "thresholds": lambda v: _is_number(v, none=False),
        "notes": lambda v: isinstance(v, str),
    }
    for key, ok in checks.items():
        if key in data:
            v = data[key]
            expect(key, v, isinstance(v, list) and all(ok(x) for x in v), "a list")
    half = data.get("at_threshold_0.5", {})
    expect("at_threshold_0.5", half, isinstance(half, dict)
           and all(_is_number(v) for v in half.values()), "an object of numbers")  # fmt: skip
    per = data.get("per_attribute")
    if not isinstance(per, dict) or not per:
        return [*problems, f"per_attribute is {_kind(per)}, expected an object of attributes"]
    for name, m in per.items():
        if not isinstance(m, dict):
            expect(f"per_attribute[{name[:40]!r}]", m, False, "an object")
            continue
        bad = [(k, "a number") for k in _RATES
               if k in m and not _is_number(m[k], none=k != "threshold")]  # fmt: skip
        bad += [(k, "a count") for k in _COUNTS if k in m and not _is_count(m[k])]
        if not isinstance(m.get("note", ""), (str, type(None))):
            bad.append(("note", "a text"))
        if bad:
            key, what = bad[0]
            expect(f"per_attribute[{name[:40]!r}][{key!r}]", m[key], False, what)
        if len(problems) >= 5:
            break
    return problems


def structure_problem(saved: Any, fresh: Any, name: str) -> str | None:
    """Why ``saved`` (part of a resume state) cannot stand for ``fresh`` (the same part of
    this run, new): a key ``fresh`` lacks, or a value of another kind (numbers of either
    type, tensors of the same shape, lists of the same length), recursively. None: it fits.
    Keys ``saved`` lacks are fine (``load_state_dict`` keeps the fresh value)."""
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            return f"{name} is {_kind(saved)}, expected a dict"
        for key, value in saved.items():
            if key not in fresh:
                return f"{name} has an unknown entry {str(key)[:60]!r}"
            problem = structure_problem(value, fresh[key], f"{name}[{key!r}]")
            if problem:
                return problem
        return None
    if isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            return f"{name} is {_kind(saved)}, expected {len(fresh)} values"
        for k, (s, f) in enumerate(zip(saved, fresh, strict=True)):
            problem = structure_problem(s, f, f"{name}[{k}]")
            if problem:
                return problem
        return None
    if isinstance(fresh, bool) or fresh is None or isinstance(fresh, str):
        ok = type(saved) is type(fresh)
    elif isinstance(fresh, (int, float)):
        ok = isinstance(saved, (int, float)) and not isinstance(saved, bool)
    elif hasattr(fresh, "shape"):  # a tensor
        ok = type(saved) is type(fresh) and saved.shape == fresh.shape
    else:
        ok = type(saved) is type(fresh)
    return None if ok else f"{name} is {_kind(saved)}, expected {_kind(fresh)}"


def _read_json(path: Path) -> dict[str, Any]:
    from faceattr.errors import DataError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise DataError(f"Cannot read {path}: {exc}", "Re-run the command that wrote it.") from exc
    if not isinstance(data, dict):
        raise DataError(
            f"Cannot read {path}: not a JSON object.", "Re-run the command that wrote it."
        )
    return data
