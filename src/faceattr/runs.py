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
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_mean_accuracy",
    "val_strict_accuracy", "images_per_second", "seconds",
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
        """``metrics-<split>.json`` (a file of an older version may lack some keys)."""
        return cast("SavedMetrics", _read_json(self.metrics_file(split)))

    def read_history(self) -> list[dict[str, float | None]]:
        """``history.csv`` -> one dict per epoch (numbers as float, empty cells as None)."""
        if not self.history_file.exists():
            return []
        rows: list[dict[str, float | None]] = []
        with self.history_file.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                parsed: dict[str, float | None] = {}
                for key, value in row.items():
                    try:
                        parsed[key] = float(value) if value not in ("", None) else None
                    except ValueError:
                        parsed[key] = None
                rows.append(parsed)
        return rows

    def history_rows(self) -> int:
        """Rows in ``history.csv`` (-1: no file)."""
        if not self.history_file.exists():
            return -1
        with self.history_file.open(encoding="utf-8", newline="") as fh:
            return max(0, sum(1 for _ in csv.reader(fh)) - 1)

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
            return torch.load(self.state_file, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged zip or pickle
            raise ModelError(
                f"The resume state {self.state_file} cannot be read: {e}",
                f"Its model files can still be used ({BEST_FILE}, {LAST_FILE}); to train "
                "again, start a new run.",
            ) from e

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

    def check_resumable(self) -> None:
        if not self.is_run():
            raise UsageError(
                f"Cannot resume: {self.path} is not a run directory (no {CONFIG_FILE}).",
                "Pass the directory a previous `faceattr train` wrote (its `out=DIR`).",
            )


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _read_json(path: Path) -> dict[str, Any]:
    from faceattr.errors import DataError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"Cannot read {path}: {exc}", "Re-run the command that wrote it.") from exc
    if not isinstance(data, dict):
        raise DataError(
            f"Cannot read {path}: not a JSON object.", "Re-run the command that wrote it."
        )
    return data
