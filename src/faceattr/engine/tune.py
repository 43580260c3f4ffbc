"""``faceattr tune``: a hyperparameter study on Optuna, each trial an ordinary run directory.

- A study lives in ``DIR/study.db`` (SQLite; ``storage`` takes any Optuna storage URL, e.g.
  ``postgresql://``, for several workers) with its trials' run directories in
  ``DIR/trials/trial-NNN``, which ``eval``, ``predict`` and ``report`` read as any run.
- Every trial reports its validation metric after each epoch; the pruner may stop it there,
  before its last epoch (a trial that ran all its epochs is complete, with its metrics).
- The study's settings (the base train options, the parameters, the metric) are stored with it:
  re-running the same command continues it; other settings are refused.
- Resume: a trial whose process died (kill -9, a crash, a lost machine) is marked failed and
  tried again with the same parameters in the same run directory, continuing from its last
  finished epoch (:func:`faceattr.engine.fit.resume`). On this host that is noticed at once
  (the process is gone); elsewhere through Optuna's heartbeat, after :data:`GRACE_SECONDS`.
- A grid study enqueues every combination once, so several workers never run one twice.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from faceattr.errors import FaceAttrError, UsageError
from faceattr.progress import EpochEnd, NullProgress, Progress
from faceattr.redaction import redact
from faceattr.utils import JsonResult

STUDY_NAME = "faceattr"
STUDY_FILE = "study.db"
TRIALS_DIR = "trials"
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120


@dataclass(frozen=True)
class ParamSpec:
    """One ``--param``: ``choices``, or a range ``low:high`` (``log`` scale, ints if both ends
    are)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {', '.join(map(str, self.choices))}"
        scale = ", log scale" if self.log else ""
        kind = "integers" if self.integer else "floats"
        return f"{self.name} from {self.low:g} to {self.high:g} ({kind}{scale})"


def _typed(value: str, kind: type) -> Any:
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(value)
        return value.lower() in ("true", "1", "yes")
    return kind(value)


def parse_param(text: str, kinds: dict[str, type]) -> ParamSpec:
    """``NAME=SPEC`` for a train option ``NAME`` whose value type is ``kinds[NAME]``."""
    from faceattr.errors import unknown_name_error

    name, sep, spec = text.partition("=")
    name = name.strip().replace("-", "_").lstrip("_")
    if not sep or not spec.strip():
        raise UsageError(
            f"`param={text!r}`: expected NAME=SPEC.",
            "e.g. lr=1e-4:1e-2:log, dropout=0.3,0.5 or epochs=3:10",
        )
    if name not in kinds:
        raise unknown_name_error("tunable train option", name, sorted(kinds))
    kind = kinds[name]
    spec = spec.strip()
    try:
        if "," in spec or ":" not in spec:
            choices = tuple(_typed(v.strip(), kind) for v in spec.split(","))
            return ParamSpec(name, choices=tuple(dict.fromkeys(choices)))
        parts = spec.split(":")
        log = len(parts) == 3 and parts[2] == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log) or kind not in (int, float):
            raise ValueError(spec)
        integer = kind is int or all(p.strip().lstrip("-").isdigit() for p in parts[:2])
        low, high = (int(p) if integer else float(p) for p in parts[:2])
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high or (log and low <= 0):
            raise ValueError(spec)
    except ValueError:
        what = "a number" if kind in (int, float) else f"a {kind.__name__}"
        raise UsageError(
            f"`param={text!r}`: {spec!r} is not a valid spec for {name} ({what}).",
            "Use a list of values (a,b,c), a range LOW:HIGH with LOW < HIGH (integers give "
            "an integer range), or LOW:HIGH:log with LOW > 0.",
        ) from None
    return ParamSpec(name, low=low, high=high, log=log, integer=integer)


@dataclass
class TrialRecord(JsonResult):
    """One trial of a study."""

    number: int
    state: str  # complete, pruned, fail, running or waiting
    params: dict[str, Any]  # the trial's parameter values
    value: float | None  # its best validation metric (None unless it finished)
    epochs: int  # epochs it reported
    seconds: float | None  # None while it runs
    run_dir: str | None  # its run directory
    retry_of: int | None  # the trial it continues (its process died)


@dataclass
class StudySummary:
    """A study: ``faceattr tune --json`` and ``--summary`` (docs/formats.md)."""

    study_dir: str
    metric: str  # the validation metric maximised
    params: list[dict[str, Any]]  # the parameters searched (ParamSpec fields)
    trials: list[TrialRecord]
    best: TrialRecord | None  # the best complete trial
    command: str | None  # the `faceattr train` command that reproduces the best trial
    importances: dict[str, float] | None  # parameter -> importance (fANOVA), >= 4 trials
    counts: dict[str, int]  # trials per state
    seconds: float | None = None  # run_study only: how long this run took

    def to_json(self) -> dict[str, Any]:
        best = None if self.best is None else {**self.best.to_json(), "command": self.command}
        out: dict[str, Any] = {
            "study_dir": self.study_dir,
            "metric": self.metric,
            "params": self.params,
            "trials": [t.to_json() for t in self.trials],
            "best": best,
            "importances": self.importances,
            "counts": self.counts,
        }
        if self.seconds is not None:
            out["seconds"] = self.seconds
        return out


@dataclass
class StudySettings:
    """What a study is: stored with it, checked on every re-run."""

    base_args: list[str]  # the train options given, as on the command line
    params: list[dict[str, Any]]
    metric: str
    sampler: str
    pruner: str
    trials: int | None
    teacher: str | None = None  # a distillation study: each trial distils from this teacher

    def key(self) -> dict[str, Any]:
        import json

        d = json.loads(json.dumps(asdict(self)))  # as stored: tuples are lists
        d.pop("trials")  # asking for more trials later is fine
        if d["teacher"] is None:
            del d["teacher"]  # as studies made before distillation could be tuned stored it
        return d

    def command(self, params: dict[str, Any]) -> str:
        """The command line of one trial: `faceattr train` (or `distill TEACHER`) with the
        base options and ``params``."""
        import shlex

        head = ["train"] if self.teacher is None else ["distill", self.teacher]
        args = ["faceattr", *head, *self.base_args]
        for name, value in params.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        return " ".join(shlex.quote(a) for a in args)


def _here() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class _Reporter(Progress):
    """Passes each epoch's validation metric to Optuna and stops the run when it prunes."""

    def __init__(self, trial: Any, metric: str, inner: Progress) -> None:
        self.trial = trial
        self.key = f"val_{metric}"
        self.inner = inner
        self.best = -math.inf

    def start(self, description: str, total: int | None = None, unit: str = "img") -> None:
        self.inner.start(description, total, unit)

    def advance(self, n: int = 1, **info: Any) -> None:
        self.inner.advance(n, **info)

    def finish(self) -> None:
        self.inner.finish()

    def log(self, message: str) -> None:
        self.inner.log(message)

    def epoch_end(self, event: EpochEnd) -> None:
        import optuna

        self.inner.epoch_end(event)
        value = float(event.row[self.key])
        self.best = max(self.best, value)
        self.trial.report(value, event.epoch)
        # A trial that ran its last epoch is complete, whatever the pruner thinks: stopping it
        # then would save nothing and lose its thresholds and metrics (finish() is next).
        if event.epoch < event.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {event.epoch} ({self.key} {value:.4f})")


def _count(study: Any, states: tuple[Any, ...]) -> int:
    """The study's trials in ``states``, leaving out grid points drawn twice (``unused``)."""
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for t in trials if not t.user_attrs.get("unused"))


def _retry(study: Any, trial: Any) -> None:
    """A trial whose process died: try its parameters again, in its run directory."""
    run_dir = trial.user_attrs.get("run_dir")
    study.enqueue_trial(dict(trial.params), user_attrs={"run_dir": run_dir,
                                                        "retry_of": trial.number})  # fmt: skip


def _storage(url: str) -> Any:
    """Optuna's storage at ``url``; its messages never show the URL's password."""
    import warnings

    given = url
    for scheme in ("postgresql://", "postgres://"):  # SQLAlchemy's name for psycopg (3)
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url[len(scheme) :]

    import optuna
    import sqlalchemy.exc

    def connect() -> Any:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=_retry,
            )

    try:
        for attempt in range(3):
            try:
                return connect()
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers started together on a new database race to create its tables
                # (PostgreSQL: a duplicate key in pg_type); the winner's tables are there now.
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    except Exception as e:  # SQLAlchemy raises many types for bad URLs and servers
        reason = (redact(e, given, url).splitlines() or ["(no reason given)"])[0][:300]
        raise FaceAttrError(
            f"Cannot open the study storage {redact(given)}: {reason}",
            'Pass `storage="sqlite:///PATH"` or a postgresql://USER@HOST:PORT/DB URL (psycopg '
            "needed).",
        ) from None  # the library's error (and its cause) quote the URL, password included


def _reclaim_dead_trials(study: Any) -> list[int]:
    """Running trials of processes on this host that are gone: failed, and retried."""
    from optuna.trial import TrialState

    here = socket.gethostname()
    reclaimed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner") or {}
        if owner.get("host") == here and not _alive(int(owner.get("pid", 0))):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            _retry(study, t)
            reclaimed.append(t.number)
    return reclaimed


def open_study(study_dir: Path, settings: StudySettings, storage: str | None) -> Any:
    """The study in ``storage`` (default ``DIR/study.db``), created with ``settings`` or
    checked against them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(study_dir / STUDY_FILE).absolute()}"
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "grid": optuna.samplers.RandomSampler}  # grid: every point enqueued  # fmt: skip
    sampler = samplers[settings.sampler](seed=0)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
              if settings.pruner == "median" else optuna.pruners.NopPruner())  # fmt: skip
    storage_obj = _storage(url)
    try:  # the one process that creates the study (a unique name in the database) sets it up
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage_obj, sampler=sampler,
                                    pruner=pruner, direction="maximize")  # fmt: skip
        if settings.sampler == "grid":
            for values in itertools.product(*(p["choices"] for p in settings.params)):
                study.enqueue_trial(dict(zip((p["name"] for p in settings.params), values,
                                             strict=True)))  # fmt: skip
        study.set_user_attr("settings", asdict(settings))  # last: the study is ready
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage_obj, sampler=sampler,
                                  pruner=pruner)  # fmt: skip
    deadline = time.monotonic() + 60
    while "settings" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)  # another worker is still setting the study up
    saved = study.user_attrs.get("settings")
    if saved is not None:
        previous = StudySettings(**saved)
        if previous.key() != settings.key():
            raise UsageError(
                f"{study_dir} holds a study with other settings (teacher "
                f"{previous.teacher or 'none'}; train options "
                f"{redact(' '.join(previous.base_args))}; parameters "
                f"{', '.join(ParamSpec(**p).describe() for p in previous.params)}; metric "
                f"{previous.metric}, sampler {previous.sampler}, pruner {previous.pruner}).",
                "Re-run it with the same settings to continue it, or choose another "
                "`study_dir=DIR`.",
            )
    return study


def _suggest(trial: Any, spec: ParamSpec) -> Any:
    if spec.choices is not None:
        return trial.suggest_categorical(spec.name, list(spec.choices))
    assert spec.low is not None and spec.high is not None  # a range
    if spec.integer:
        return trial.suggest_int(spec.name, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_float(spec.name, float(spec.low), float(spec.high), log=spec.log)


def run_study(
    study_dir: str | Path,
    settings: StudySettings,
    make_config: Callable[[dict[str, Any], Path], Any],
    *,
    storage: str | None = None,
    progress: Progress | None = None,
) -> StudySummary:
    """Run trials until the study has ``settings.trials`` finished ones (grid: every
    combination); a summary (see :func:`summarize`). ``make_config(values, run_dir)`` is the
    TrainConfig of a trial: the base train options with the trial's parameter ``values``."""
    import optuna
    from optuna.trial import TrialState

    from faceattr.engine.fit import fit, resume
    from faceattr.runs import RunDir

    progress = progress or NullProgress()
    study_dir = Path(study_dir)
    study = open_study(study_dir, settings, storage)
    reclaimed = _reclaim_dead_trials(study)
    if reclaimed:
        progress.log(f"Trial(s) {', '.join(map(str, reclaimed))} of a process that is gone: "
                     "continuing them from their last finished epoch.")  # fmt: skip
    specs = [ParamSpec(**p) for p in settings.params]
    if settings.sampler == "grid":
        target = math.prod(len(s.choices or ()) for s in specs)
    else:
        target = settings.trials or 10
    finished = (TrialState.COMPLETE, TrialState.PRUNED)

    def objective(trial: Any) -> float:
        values = {s.name: _suggest(trial, s) for s in specs}
        if settings.sampler == "grid" and not trial.user_attrs.get("retry_of"):
            # Another worker took the last queued point between our count and this trial:
            # the sampler drew a point that is taken. Leave it unused and stop.
            taken = [t for t in study.get_trials(deepcopy=False)
                     if t.number != trial.number and t.params == values]  # fmt: skip
            if taken:
                trial.set_user_attr("unused", True)  # left out of every count and summary
                study.stop()
                raise optuna.TrialPruned("this grid point is taken")
        default = study_dir.absolute() / TRIALS_DIR / f"trial-{trial.number:03d}"
        run_dir = Path(trial.user_attrs.get("run_dir") or default)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("owner", _here())
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        progress.log(f"Trial {trial.number}: {shown} -> {run_dir}")
        reporter = _Reporter(trial, settings.metric, progress)
        try:
            if RunDir(run_dir).is_run():  # a retried trial: continue its run
                result = resume(run_dir, progress=reporter)
            else:
                result = fit(make_config(values, run_dir), progress=reporter)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # tried again when the study continues
            raise
        history = [float(row[f"val_{settings.metric}"]) for row in result.history
                   if f"val_{settings.metric}" in row]  # fmt: skip
        return max(history) if history else reporter.best

    def enough(study: Any, _trial: Any) -> None:
        # Trials other workers are running count too: no worker starts one too many.
        if _count(study, finished + (TrialState.RUNNING,)) >= target:
            study.stop()

    started = time.perf_counter()
    try:
        if _count(study, finished + (TrialState.RUNNING,)) < target:
            study.optimize(objective, callbacks=[enough], gc_after_trial=True)
    except KeyboardInterrupt:
        from faceattr.errors import Interrupted

        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get("interrupted") and t.user_attrs.get("owner") == _here():
                _retry(study, t)
        raise Interrupted(
            f"Finished trials are kept in {study_dir}; the interrupted one continues from its "
            "last finished epoch when you run the same command again."
        ) from None
    summary = summarize(study_dir, storage, study=study)
    summary.seconds = round(time.perf_counter() - started, 1)
    return summary


def summarize(
    study_dir: str | Path, storage: str | None = None, *, study: Any = None
) -> StudySummary:
    """The study's trials (parameters, metric, time, state, run directory), the best one with
    the command line that reproduces it, and parameter importances when there are enough
    finished trials."""
    import optuna

    study_dir = Path(study_dir)
    if study is None:
        url = storage or f"sqlite:///{(study_dir / STUDY_FILE).absolute()}"
        if storage is None and not (study_dir / STUDY_FILE).exists():
            raise FaceAttrError(f"No study in {study_dir} (no {STUDY_FILE}).",
                                "Start one with `faceattr tune ... --study-dir DIR`.")  # fmt: skip
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=STUDY_NAME, storage=_storage(url))
        except KeyError:
            raise FaceAttrError(f"No study in {redact(url)}.") from None
    settings = StudySettings(**study.user_attrs["settings"])
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("unused"):  # a grid point drawn twice, never trained
            continue
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if (
            t.datetime_complete and t.datetime_start) else None  # fmt: skip
        trials.append(TrialRecord(
            number=t.number, state=t.state.name.lower(), params=dict(t.params),
            value=t.value, epochs=len(t.intermediate_values),
            seconds=round(seconds, 1) if seconds is not None else None,
            run_dir=t.user_attrs.get("run_dir"), retry_of=t.user_attrs.get("retry_of"),
        ))  # fmt: skip
    complete = [t for t in trials if t.state == "complete" and t.value is not None]
    best = max(complete, key=lambda t: t.value or 0.0) if complete else None
    importances = None
    if len(complete) >= 4 and settings.params:
        try:
            # fANOVA: Optuna 5's default (PED-ANOVA) gives every parameter the same share
            # with a handful of trials.
            fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
            found = optuna.importance.get_param_importances(study, evaluator=fanova)
            importances = {k: float(v) for k, v in found.items()}
        except (RuntimeError, ValueError):  # e.g. a parameter that never varied
            importances = None
    return StudySummary(
        study_dir=str(study_dir),
        metric=settings.metric,
        params=settings.params,
        trials=trials,
        best=best,
        command=None if best is None else redact(settings.command(best.params)),
        importances=importances,
        counts={s: sum(t.state == s for t in trials)
                for s in ("complete", "pruned", "fail", "running", "waiting")},
    )  # fmt: skip


def study_run_dirs(study_dir: str | Path, best: int | None = None) -> list[Path]:
    """The run directories of a study's finished trials, best first (``best``: the first k)."""
    summary = summarize(study_dir)
    done = [t.run_dir for t in sorted(summary.trials, key=lambda t: -(t.value or 0.0))
            if t.state == "complete" and t.run_dir]  # fmt: skip
    # Where the run is now: as recorded, or (a study moved, or run from another folder) in
    # the study's own trials folder.
    here = [Path(d) if Path(d).is_absolute() else Path(study_dir) / TRIALS_DIR / Path(d).name
            for d in done if d is not None]  # fmt: skip
    from faceattr.runs import RunDir

    dirs = [d for d in here if RunDir(d).is_run()]
    return dirs[:best] if best else dirs
