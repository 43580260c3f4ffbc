""":func:`fetch_celeba`: which sources to try, in what order, and what the user is told.

Each source is asked for the files still missing; the first that completes the required
files ends the run (optional files a source lacked are asked of the next). When none does,
the error lists every source tried with its reason and how to download by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from faceattr.data.archives import ArchiveError
from faceattr.data.download import DEFAULT_TIMEOUT, disk_error
from faceattr.data.fetch import FETCH_SOURCES, release
from faceattr.data.fetch.annotations import scan_partition_file
from faceattr.data.fetch.local import FromSource, adopt_local_files
from faceattr.data.fetch.manifest import MANIFEST_NAME
from faceattr.data.fetch.release import (
    DRIVE_URL_ENV,
    FILES_BY_NAME,
    HF_URL_ENV,
    OPTIONAL_FILES,
    PARTITION_FILE,
    manual_download_hint,
    read_checksums,
)
from faceattr.data.fetch.remote import DriveSource, HttpSource
from faceattr.data.fetch.run import ChecksumError, FetchRun, SourceError
from faceattr.errors import DownloadError, UsageError, unknown_name_error
from faceattr.progress import NullProgress, Progress
from faceattr.utils import JSON_OMIT, JsonResult, json_key

Source = HttpSource | FromSource


@dataclass
class SourceAttempt:
    """One source tried: ``error`` is None when it supplied what it was asked for."""

    source: str
    location: str
    error: str | None = None


@dataclass(kw_only=True)
class FetchResult(JsonResult):
    """What :func:`fetch_celeba` did.

    ``verified`` maps each file now under ``root`` to its md5 (``img_align_celeba.zip`` stands
    for the extracted images when they came from the archive); ``fetched`` maps the files
    obtained in this run to where they came from; ``source``/``location`` name the source that
    completed the required files (None when everything was already there: ``up_to_date``).
    """

    root: Path
    source: str | None
    location: str | None
    up_to_date: bool = False
    n_images: int
    split_counts: dict[str, int] = field(metadata=json_key("splits"))
    verified: dict[str, str]
    fetched: dict[str, str]
    skipped_optional: list[str]
    warnings: list[str]
    attempts: list[SourceAttempt] = field(metadata=JSON_OMIT)  # not in the JSON


def fetch_celeba(
    root: str | Path,
    *,
    source: str | None = None,
    mirror: str | None = None,
    from_path: str | Path | None = None,
    checksums: str | Path | None = None,
    progress: Progress | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    keep_archive: bool = False,
) -> FetchResult:
    """Fetch and verify CelebA (aligned and cropped) into the official layout under ``root``.

    ``source`` picks one of ``"drive"``, ``"hf"``, ``"mirror"`` (needs ``mirror``, a base URL
    serving the official file names) or ``"from"`` (needs ``from_path``: a folder or a zip of
    files downloaded by hand). Without it, ``from_path`` then ``mirror`` are used when given,
    otherwise Google Drive then the Hugging Face mirror. ``checksums`` is an md5sum-format file
    whose entries replace the official md5s (for a mirror or a hand-made subset). The
    downloaded ``img_align_celeba.zip`` is deleted once extracted unless ``keep_archive``.

    Raises :class:`~faceattr.errors.DownloadError` listing every source tried and how to
    download by hand when the required files cannot be had, :class:`ChecksumError` details in
    that listing for a file that failed verification, and
    :class:`~faceattr.errors.UsageError` for bad arguments.
    """
    root = Path(root).expanduser()
    progress = progress or NullProgress()
    user_md5 = read_checksums(checksums) if checksums is not None else {}
    plan = _plan_sources(source, mirror, from_path)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(root / MANIFEST_NAME, exc) from None
    if not root.is_dir():
        raise UsageError(
            f"{root} is a file, not a folder.", "Pass a folder for the data as `root=DIR`."
        )

    run = FetchRun(root, user_md5, progress, timeout, keep_archive)
    adopt_local_files(run)
    if not run.needed([src.location for src in plan]):
        return _result(run, None, [], up_to_date=True)
    attempts, hints, used = _try_sources(run, plan)
    if run.missing_required():
        raise _all_failed(attempts, run.missing_required(), hints)
    run.finish_checks()
    return _result(run, used, attempts)


def _try_sources(
    run: FetchRun, plan: list[Source]
) -> tuple[list[SourceAttempt], list[str], Source | None]:
    """Ask each source in turn for what is still needed, until the required files are in.

    Returns the attempts, the hints of the errors met (for the final message) and the first
    source that supplied what it was asked for.
    """
    attempts: list[SourceAttempt] = []
    hints: list[str] = []
    used: Source | None = None
    for src in plan:
        needed = run.needed([src.location])
        if not needed:
            continue
        only_optional = not any(FILES_BY_NAME[n].required for n in needed)
        run.progress.log(f"Trying {src.title} ({src.location})")
        try:
            src.fetch(run, needed)
        except (SourceError, ArchiveError, ChecksumError) as exc:
            text = str(exc) if isinstance(exc, SourceError) else exc.message
            if isinstance(exc, DownloadError) and exc.hint and exc.hint not in hints:
                hints.append(exc.hint)
            attempts.append(SourceAttempt(src.kind, src.location, text))
            run.progress.log(f"{src.title} failed: {text}")
            if only_optional:
                run.warnings.append(f"Optional files not fetched from {src.title}: {text}")
            continue
        attempts.append(SourceAttempt(src.kind, src.location))
        used = used or src
        if not run.missing_required():
            break
    return attempts, hints, used


def _result(
    run: FetchRun, used: Source | None, attempts: list[SourceAttempt], up_to_date: bool = False
) -> FetchResult:
    return FetchResult(
        root=run.root,
        source=used.kind if used else None,
        location=used.location if used else None,
        verified=run.verified(),
        fetched=dict(run.fetched),
        skipped_optional=[n for n in OPTIONAL_FILES if not run.file_ok(n)],
        warnings=list(run.warnings),
        attempts=attempts,
        n_images=int(run.manifest.images.get("count", 0)),
        split_counts=scan_partition_file(run.root / PARTITION_FILE),
        up_to_date=up_to_date,
    )


def _all_failed(
    attempts: list[SourceAttempt], missing: list[str], hints: list[str]
) -> DownloadError:
    lines = [f"Could not fetch CelebA: still missing {', '.join(missing)}. Sources tried:"]
    for a in attempts:
        status = f"failed: {a.error}" if a.error else "ok, but did not have everything"
        lines.append(f"  - {a.source} ({a.location}): {status}")
    if not attempts:
        lines.append("  (none)")
    return DownloadError("\n".join(lines), "\n".join([*hints, manual_download_hint()]))


# ---------------------------------------------------------------------------------------------
# Which sources


def _base_url(env: str, constant: str) -> str:
    return (os.environ.get(env) or constant).strip()


def _plan_sources(
    source: str | None, mirror: str | None, from_path: str | Path | None
) -> list[Source]:
    if mirror is not None:
        scheme = urlsplit(mirror).scheme.lower()
        if scheme not in ("http", "https"):
            raise UsageError(
                f"`mirror={mirror!r}` is not an http(s) URL.",
                "Pass the base URL under which the official file names are served, e.g. "
                '`mirror="https://example.org/celeba/"`. For files on this machine, run '
                "`faceattr data fetch celeba --root DIR --from FOLDER_OR_ZIP` instead.",
            )
    if from_path is not None and not Path(from_path).expanduser().exists():
        raise UsageError(
            f"The folder or zip of downloaded files {from_path} does not exist.",
            "Pass the folder (or zip) holding the files you downloaded by hand.",
        )

    def make(kind: str) -> Source:
        # The base URLs are read now, not at import: the environment variable, else the
        # module constant (tests and users behind a proxy redirect them).
        if kind == "drive":
            return DriveSource(_base_url(DRIVE_URL_ENV, release.DRIVE_URL))
        if kind == "hf":
            return HttpSource("hf", _base_url(HF_URL_ENV, release.HF_URL), strict=True)
        if kind == "mirror":
            if not mirror:
                raise UsageError(
                    '`source="mirror"` needs a mirror URL.',
                    "Pass `mirror=URL`, the base URL under which the official file names are "
                    "served.",
                )
            return HttpSource("mirror", mirror)
        if not from_path:
            raise UsageError(
                '`source="from"` needs the files you downloaded by hand.',
                "Pass the folder (or zip) holding them too, as in "
                "`faceattr data fetch celeba --root DIR --from FOLDER_OR_ZIP`.",
            )
        return FromSource(Path(from_path).expanduser())

    if source is not None:
        kind = source.strip().lower()
        if kind not in FETCH_SOURCES:
            raise unknown_name_error("source", source, FETCH_SOURCES)
        return [make(kind)]
    # Files given by hand are used first (local, free); the default network sources are only
    # tried when the user named no source of their own.
    kinds = [k for k, given in (("from", from_path), ("mirror", mirror)) if given]
    return [make(k) for k in (kinds or ["drive", "hf"])]
