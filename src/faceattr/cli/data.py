"""`faceattr data ...`: get datasets and look at them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from faceattr.cli.common import Command, Group, err, handle_errors, literal, out
from faceattr.cli.options import JsonOption, OverwriteOption, choice, data_config, setting
from faceattr.cli.settings import CropOption, DatasetArgument, LabelsOption, ValidFraction
from faceattr.config import SYNTHETIC_SIZES as DEMO_SIZES
from faceattr.data.fetch import FETCH_SOURCES, FETCHABLE

if TYPE_CHECKING:
    from faceattr.data.stats import DatasetStats

data_app = typer.Typer(
    help="Fetch, prepare and inspect datasets.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    cls=Group,
)


@data_app.command("fetch", cls=Command)
@handle_errors
def fetch_command(
    name: Annotated[
        str,
        typer.Argument(
            **choice(FETCHABLE, "NAME"), help=f"Dataset to fetch: {', '.join(FETCHABLE)}."
        ),
    ],
    root: Annotated[Path, typer.Option(help="Folder to write the dataset into.")],
    from_path: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="A folder or zip of files you downloaded by hand "
            "(official names, Google Drive folders or Kaggle's archive).",
        ),
    ] = None,  # fmt: skip
    mirror: Annotated[
        str | None, typer.Option(help="Base URL of a mirror serving the official file names.")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            **choice(FETCH_SOURCES),
            help="Use only this source (default: --from, --mirror, else Google Drive "
            "then the Hugging Face mirror).",
        ),
    ] = None,  # fmt: skip
    checksums: Annotated[
        Path | None,
        typer.Option(help="md5sum-format file to verify against instead of the official md5s."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Network timeout, seconds.")] = 30.0,
    keep_archive: Annotated[
        bool, typer.Option("--keep-archive", help="Keep img_align_celeba.zip after extracting.")
    ] = False,
    json_out: JsonOption = False,
    n_train: Annotated[int, typer.Option(help="synthetic: training images.")] = DEMO_SIZES[0],
    n_valid: Annotated[int, typer.Option(help="synthetic: validation images.")] = DEMO_SIZES[1],
    n_test: Annotated[int, typer.Option(help="synthetic: test images.")] = DEMO_SIZES[2],
    seed: Annotated[int, typer.Option(help="synthetic: random seed.")] = 0,
) -> None:
    """Download a dataset into --root in its official layout, verifying every file.

    celeba: the aligned-and-cropped release (images, attributes, partition, identities,
    landmarks, boxes). Interrupted downloads resume; re-running skips verified files.

    wflw: WFLW_annotations.tar.gz and WFLW_images.tar.gz, extracted into WFLW_annotations/
    and WFLW_images/. The images are on Google Drive, which often refuses scripted
    downloads: download them by hand and pass their folder with --from.

    synthetic: a small CelebA-format dataset whose 40 labels are drawn into the pixels, for
    demos and tests (a tiny model learns it in seconds).
    """
    from faceattr.cli.common import RichProgress, print_json

    if name == "celeba":
        from faceattr.data.fetch import fetch_celeba

        result = fetch_celeba(
            root,
            source=source,
            mirror=mirror,
            from_path=from_path,
            checksums=checksums,
            progress=RichProgress(quiet=json_out),
            timeout=timeout,
            keep_archive=keep_archive,
        )
        for warning in result.warnings:
            err.print(f"[yellow]Warning:[/] {literal(warning)}", highlight=False)
        if json_out:
            print_json(result.to_json())
            return
        how = "already up to date" if result.up_to_date else f"from {literal(result.location)}"
        splits = ", ".join(f"{k} {v:,}" for k, v in result.split_counts.items())
        out.print(
            f"CelebA in {literal(result.root)}: {result.n_images:,} images ({splits}), "
            f"{len(result.verified)} files verified, {how}.",
            highlight=False,
        )
        return
    if name == "wflw":
        _fetch_wflw(root, from_path, mirror, source, checksums, timeout, keep_archive, json_out)
        return
    from faceattr.data.synthetic import fetch_synthetic

    if name == "synthetic":
        written = fetch_synthetic(root, n_train=n_train, n_valid=n_valid, n_test=n_test, seed=seed)
        if json_out:
            print_json(written.to_json())
            return
        total = sum(written.splits.values())
        out.print(f"Wrote a synthetic CelebA-format dataset ({total} images) to "
                  f"{literal(written.root)}", highlight=False)  # fmt: skip
        err.print(f"Next: {literal(written.next_command)}", highlight=False)


def _fetch_wflw(
    root: Path,
    from_path: Path | None,
    mirror: str | None,
    source: str | None,
    checksums: Path | None,
    timeout: float,
    keep_archive: bool,
    json_out: bool,
) -> None:
    from faceattr.cli.common import RichProgress, print_json
    from faceattr.data.fetch.wflw import fetch_wflw
    from faceattr.errors import UsageError

    if source is not None or checksums is not None:
        raise UsageError(
            "--source and --checksums apply to celeba only.",
            "For wflw use --from PATH (files downloaded by hand) or --mirror URL.",
        )
    result = fetch_wflw(
        root,
        from_path=from_path,
        mirror=mirror,
        progress=RichProgress(quiet=json_out),
        timeout=timeout,
        keep_archives=keep_archive,
    )
    if json_out:
        print_json(result.to_json())
        return
    for note in result.notes:
        err.print(f"[yellow]Note:[/] {literal(note)}", highlight=False)
    how = (
        "already up to date"
        if result.already_complete
        else "from " + ", ".join(f"{k} {literal(v)}" for k, v in result.sources.items())
    )
    out.print(
        f"WFLW in {literal(result.root)}: {result.faces.get('train', 0):,} train and "
        f"{result.faces.get('test', 0):,} test faces in {result.photos:,} photos, {how}.",
        highlight=False,
    )
    from faceattr.errors import command  # the folder shell-quoted: safe to copy

    then = command("faceattr train --dataset wflw --root {root}", root=result.root)
    err.print(f"Next: {literal(then)}", highlight=False)


@data_app.command("prepare", cls=Command)
@handle_errors
def prepare_command(
    ctx: typer.Context,
    dataset: DatasetArgument,
    root: Annotated[
        Path, setting("data.root", "--root", help="Dataset folder (as for train/eval).")
    ],
    img_size: Annotated[
        int | None,
        setting(
            "data.img_size",
            "--img-size",
            help="Side of the square model input, pixels (as train's (default: {default})).",
        ),
    ] = None,
    crop: CropOption = None,
    labels: LabelsOption = None,
    workers: Annotated[
        int | None,
        setting("data.workers", "--workers", help="Decoding processes (default: min(4, CPUs))."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even an up-to-date cache.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Decode, crop and resize every image once into a fast memory-mapped cache.

    `train` and `eval` then read pixels straight from the cache whenever it matches their
    --img-size (augmentation runs as batched tensor ops), instead of decoding JPEGs every
    epoch. The cache lives in ROOT/.faceattr-cache (set FACEATTR_CACHE_DIR=DIR to keep caches
    elsewhere, e.g. for a read-only dataset) and is rebuilt when images change.
    """
    from faceattr.cli.common import RichProgress, print_json
    from faceattr.data.cache import prepare_cache

    data = data_config(ctx)
    res = prepare_cache(
        data, workers=data.workers, force=force, progress=RichProgress(quiet=json_out)
    )
    if json_out:
        print_json(res.to_json())
        return
    for note in res.notes:
        err.print(literal(note), highlight=False)
    size = f"{res.nbytes / 1e9:.2f} GB" if res.nbytes >= 1e8 else f"{res.nbytes / 1e6:.1f} MB"
    if not res.built:
        out.print(f"Cache up to date: {literal(res.path)} ({res.n_images:,} images, {size}).",
                  highlight=False)  # fmt: skip
    else:
        out.print(
            f"Prepared {res.n_images:,} images at {res.img_size} px in {res.seconds:.1f} s "
            f"({res.images_per_second:.0f} img/s): {literal(res.path)} ({size})",
            highlight=False,
        )
    if res.failed:
        shown = list(res.failed.items())[:5]
        err.print(
            f"[yellow]{len(res.failed):,} image(s) could not be decoded[/] and will be skipped "
            "by train/eval:",
            highlight=False,
        )
        for _, reason in shown:
            err.print(f"  {literal(reason)}", highlight=False)
    from faceattr.errors import command

    shown_root = literal(command("{root}", root=root))
    err.print(
        f"train/eval with --root {shown_root} --img-size {res.img_size} now read this cache.",
        highlight=False,
    )


@data_app.command("stats", cls=Command)
@handle_errors
def stats_command(
    ctx: typer.Context,
    dataset: DatasetArgument,
    root: Annotated[
        Path, setting("data.root", "--root", help="Dataset folder (as for train/eval).")
    ],
    labels: LabelsOption = None,
    split: Annotated[str, typer.Option(help="all, train, valid (val) or test.")] = "all",
    valid_fraction: ValidFraction = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write the correlation heatmap to this .png file.")
    ] = None,
    top_pairs: Annotated[int, typer.Option("--top", help="Strongest pairs listed per sign.")] = 10,
    overwrite: OverwriteOption = False,
    json_out: JsonOption = False,
) -> None:
    """Images per split, positive rate and imbalance of each attribute, and how attributes
    go together (phi correlation, strongest pairs; --plot draws the whole matrix).

    The splits are the ones train uses: where the data has no validation split, the
    validation images train carves out of train (--valid-fraction, by identity) are shown
    as such. Reads only the label files, so it is quick even on the full CelebA.

    \b
    Example:
      faceattr data stats celeba --root data/celeba --plot corr.png
    """
    from faceattr.cli.common import print_json
    from faceattr.data import read_dataset
    from faceattr.data.stats import check_plot_path, dataset_stats, plot_correlation
    from faceattr.fileio import Inputs

    sources = Inputs([root, *([labels] if labels else [])])  # the label files: never replaced
    if plot is not None:  # before reading the data: fail fast on a bad or taken file name
        check_plot_path(plot, overwrite=overwrite, inputs=sources)
    cfg = data_config(ctx)
    stats = dataset_stats(read_dataset(cfg), split, top=top_pairs,
                          valid_fraction=cfg.valid_fraction, split_seed=cfg.split_seed)  # fmt: skip
    if plot is not None:
        stats.plot = str(plot_correlation(stats, plot, overwrite=overwrite, inputs=sources))
    if json_out:
        print_json(stats.to_json())
        return
    for note in stats.notes:
        err.print(literal(note), highlight=False)
    _render_stats(stats)
    if plot is not None:
        err.print(f"Wrote the correlation heatmap to {literal(stats.plot)}", highlight=False)


def _render_stats(stats: DatasetStats) -> None:
    from rich.table import Table

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    files = f", {stats.n_files:,} files" if stats.n_files != stats.n_images else ""
    people = f", {stats.n_identities:,} identities" if stats.n_identities else ""
    carved = " (carved out of train, as train does)" if stats.valid_carved else ""
    per_split = ", ".join(f"{s} {n:,}" + (carved if s == "valid" else "")
                          for s, n in stats.splits.items())  # fmt: skip
    out.print(
        f"[bold]{literal(stats.dataset)}[/] ({literal(stats.split)}): {stats.n_images:,} images"
        f"{files}{people}; per split: {per_split}",
        highlight=False,
    )
    table = Table(title="attributes", title_justify="left")
    for col in ("attribute", "pos %", "positives", "negatives", "unknown", "imbalance"):
        table.add_column(col, justify="left" if col == "attribute" else "right")
    for a in stats.attributes:
        c = stats.counts[a]
        imb = stats.imbalance[a]
        table.add_row(
            literal(a),  # a CSV dataset's attributes are its header's names
            pct(stats.positive_rate[a]),
            f"{c['positive']:,}",
            f"{c['negative']:,}",
            f"{c['unknown']:,}" if c["unknown"] else "",
            "-" if imb is None else f"{imb:.1f}:1",
        )
    out.print(table)
    unit = "face" if stats.n_files != stats.n_images else "image"  # WFLW: rows are faces
    out.print(
        f"Mean positive attributes per {unit}: {stats.mean_positives_per_image:.2f}; "
        f"always answering the majority class scores {pct(stats.majority_accuracy)}% mean "
        "accuracy.",
        highlight=False,
    )
    for sign in ("positive", "negative"):
        pairs = stats.top_pairs[sign]
        if not pairs:
            continue
        t = Table(title=f"strongest {sign} correlations (phi)", title_justify="left")
        t.add_column("attribute")
        t.add_column("attribute")
        t.add_column("r", justify="right")
        for p in pairs:
            t.add_row(literal(p["a"]), literal(p["b"]), f"{p['r']:+.3f}")
        out.print(t)
