"""The one `stargon` command: data (check, fetch), pack, train, fit, sample, release, evaluate,
serve."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stargon import __version__
from stargon.core.interop import UserSettings
from stargon.core.paths import data_dir
from stargon.model.decoder import ModelConfig
from stargon.model.devices import keep_freed_memory
from stargon.model.fit_config import FitConfig
from stargon.options import split_settings, with_config_options
from stargon.train.loop import TrainConfig

app = typer.Typer(help="StarGON: a generative model of stellar spectra from many surveys.")
data_app = typer.Typer(help="Survey data: check a folder, fetch from the archives.")
fetch_app = typer.Typer(help="Download real spectra from the public archives into a cache.")
app.add_typer(data_app, name="data")
data_app.add_typer(fetch_app, name="fetch")
console = Console(width=None if Console().is_terminal else 160)
errors = Console(stderr=True, soft_wrap=True)  # an error stays one line


@contextmanager
def said_in_one_line(port: int | None = None) -> Iterator[None]:
    """What the user can fix — a checkpoint or run that is not there, a port taken — as one
    `error:` line and exit status 2, not a traceback."""
    from stargon.model.checkpoint import CheckpointError

    try:
        yield
    except (CheckpointError, FileNotFoundError) as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        errors.print(f"[red]error:[/] port {port} is in use: choose another with --port "
                     "(0 takes any free one)")  # fmt: skip
        raise typer.Exit(2) from exc


def default_data_dir() -> Path:
    return data_dir()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        console.print(f"stargon {__version__}")
        raise typer.Exit()
    keep_freed_memory()
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())


@data_app.command("check")
def data_check(
    directory: Annotated[
        Path | None, typer.Argument(help="Data folder (default: $STARGON_DATA or ../shared/data).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Read every spectrum under DIRECTORY and summarise each source; list failed files."""
    from stargon.surveys.check import check_folder, summaries_as_dict

    directory = directory or default_data_dir()
    if not directory.exists():
        errors.print(f"[red]error:[/] {directory}: no such file or directory")
        raise typer.Exit(2)
    with Progress(console=errors, transient=True, disable=as_json) as progress:
        task = progress.add_task(f"reading {directory}", total=None)
        summaries = check_folder(directory, progress=lambda _: progress.advance(task))
    if as_json:
        print(json.dumps(summaries_as_dict(summaries), indent=1))
        return
    console.print(_summary_table(directory, summaries))
    failures = [f for s in summaries for f in s.failures]
    if failures:
        table = Table(
            "file", "problem", title=f"{len(failures)} files failed", title_justify="left"
        )
        for failure in failures:
            table.add_row(failure["file"], failure["reason"])
        console.print(table)


def _summary_table(directory: Path, summaries) -> Table:
    table = Table(title=f"Spectra in {directory}", title_justify="left")
    for column in ("source", "files", "spectra", "failed", "instrument", "Å range"):
        table.add_column(
            column, justify="right" if column in ("files", "spectra", "failed") else "left"
        )
    for column in ("median S/N", "normalised", "errors", "labels"):
        table.add_column(column)
    for s in summaries:
        wave = f"{s.wave_min:,.0f}–{s.wave_max:,.0f}" if s.spectra else "—"
        snr = f"{s.median_snr:.0f}" if s.spectra else "—"
        table.add_row(
            s.source,
            str(s.files),
            str(s.spectra),
            f"[red]{s.failed}[/]" if s.failed else "0",
            ", ".join(s.instruments) or "—",
            wave,
            snr,
            s.normalised,
            s.has_errors,
            ", ".join(s.labels) or "—",
        )
    total = [sum(getattr(s, k) for s in summaries) for k in ("files", "spectra", "failed")]
    table.add_section()
    table.add_row("total", *map(str, total), "", "", "", "", "", "")
    return table


CacheOption = Annotated[Path | None, typer.Option("--cache", help="Cache folder.")]
BaseUrlOption = Annotated[
    str | None, typer.Option("--base-url", help="Archive root URL (a mirror, or a test server).")
]
Md5Option = Annotated[str | None, typer.Option("--md5", help="Expected MD5 of the file.")]


def _fetch_all(remotes, cache, base_url, md5=None) -> None:
    from stargon.surveys.fetch import FetchError, fetch

    failed = 0
    for remote in remotes:
        try:
            path = fetch(remote, cache=cache, base_url=base_url, md5=md5)
            console.print(f"[green]ok[/] {path}")
        except FetchError as exc:
            failed += 1
            errors.print(f"[red]error:[/] {exc}")
    if failed:
        raise typer.Exit(1)


@fetch_app.command("apogee-star")
def fetch_apogee_star(
    apogee_id: Annotated[str, typer.Argument(help="APOGEE id, e.g. 2M17335483-2753043.")],
    telescope: Annotated[str, typer.Option(help="apo25m, lco25m or apo1m.")] = "apo25m",
    field: Annotated[str, typer.Option(help="APOGEE field, e.g. 000+02.")] = ...,
    release: str = "dr17",
    cache: CacheOption = None,
    base_url: BaseUrlOption = None,
    md5: Md5Option = None,
) -> None:
    """An SDSS APOGEE apStar file (combined spectrum of one star)."""
    from stargon.surveys.fetch import apogee_star

    _fetch_all([apogee_star(apogee_id, telescope, field, release)], cache, base_url, md5)


@fetch_app.command("apogee-visit")
def fetch_apogee_visit(
    plate: Annotated[str, typer.Option(help="Plate number.")],
    mjd: Annotated[int, typer.Option(help="MJD of the visit.")],
    fiber: Annotated[int, typer.Option(help="Fiber number.")],
    field: Annotated[str, typer.Option(help="APOGEE field.")],
    telescope: str = "apo25m",
    release: str = "dr17",
    cache: CacheOption = None,
    base_url: BaseUrlOption = None,
    md5: Md5Option = None,
) -> None:
    """An SDSS APOGEE apVisit file (one visit, observed frame)."""
    from stargon.surveys.fetch import apogee_visit

    remote = apogee_visit(telescope, field, plate, mjd, fiber, release)
    _fetch_all([remote], cache, base_url, md5)


@fetch_app.command("galah")
def fetch_galah(
    sobject_ids: Annotated[list[str], typer.Argument(help="GALAH sobject_id(s).")],
    release: Annotated[str, typer.Option(help="dr3 or dr4.")] = "dr3",
    cache: CacheOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """The four HERMES arms of GALAH spectra, by sobject_id."""
    from stargon.surveys.fetch import galah_arms

    _fetch_all([r for s in sobject_ids for r in galah_arms(s, release)], cache, base_url)


@fetch_app.command("lamost")
def fetch_lamost(
    obsids: Annotated[list[int], typer.Argument(help="LAMOST obsid(s).")],
    release: Annotated[str, typer.Option(help="Data release, e.g. dr8, dr10.")] = "dr8",
    cache: CacheOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """LAMOST low-resolution spectra, by obsid."""
    from stargon.surveys.fetch import lamost_spectrum

    _fetch_all([lamost_spectrum(o, release) for o in obsids], cache, base_url)


@app.command("train")
@with_config_options(TrainConfig, ModelConfig, skip=frozenset({"data", "out"}))
def train_command(
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, metrics, split).")],
    data: Annotated[Path | None, typer.Option("--data", help="Data folder.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from latest.json.")] = False,
    package: Annotated[
        bool, typer.Option(help="After training: prior, held-out metrics, RUN/model.")
    ] = True,
    *,
    settings: dict,
) -> None:
    """Train the GON on real spectra (run under `torchrun` for several processes). Every
    setting of TrainConfig and ModelConfig is an option; its default is the dataclass's."""
    from stargon.evaluate.release import release
    from stargon.train.loop import train

    model_settings, train_settings = split_settings(settings, ModelConfig)
    config = TrainConfig(
        data=str(data or default_data_dir()),
        out=str(out),
        model=ModelConfig(**model_settings),
        **train_settings,
    )
    run = train(config, resume=resume)
    if package and int(os.environ.get("RANK", "0")) == 0:
        console.print(f"[green]trained[/] {run}; packaging the model …")
        console.print(f"[green]model[/] {release(run)}")


@app.command("fit")
@with_config_options(UserSettings, FitConfig)
def fit_command(
    paths: Annotated[list[Path], typer.Argument(help="Spectrum files or folders.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Model folder (default: the embedded one).")
    ] = None,
    out: Annotated[Path, typer.Option(help="CSV with one row per spectrum.")] = Path("fits.csv"),
    device: Annotated[str, typer.Option(help="auto (the GPU if any), cpu, cuda, …")] = "auto",
    batch_size: Annotated[
        int, typer.Option(help="Spectra fitted at once (fewer once a batch holds pixel-budget).")
    ] = 64,
    workers: Annotated[int, typer.Option(help="Processes reading files ahead (0: none).")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Keep OUT's rows; fit only what is missing.")
    ] = False,
    fits: Annotated[bool, typer.Option(help="Also write OUT as a FITS table (.fits).")] = False,
    *,
    settings: dict,
) -> None:
    """Fit radial velocity, latents and continuum to every readable spectrum: survey files,
    or your own (any format specutils reads, CSV with wavelength, flux and optional error
    columns; give --resolving-power when its header has none). Exits with status 1 when any
    input failed (each is listed)."""
    from stargon.model.fit_files import fit_paths

    try:
        fit_settings, user_settings = split_settings(settings, FitConfig)
        user, config = UserSettings(**user_settings), FitConfig(**fit_settings)
        run = fit_paths(
            paths, checkpoint, out, device, user, batch_size, workers, resume, fits, config
        )
    except ValueError as exc:  # bad settings, or an output that cannot be resumed
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    for path, reason in run.failures:
        errors.print(f"[yellow]failed[/] {path}: {reason}")
    kept = f", {run.already_done} kept from before" if run.already_done else ""
    console.print(
        f"[green]wrote[/] {out}: {run.fitted} spectra fitted{kept} from {run.files} files"
    )
    if run.failures:
        errors.print(f"[red]{len(run.failures)} inputs failed[/]")
        raise typer.Exit(1)


@app.command("pack")
def pack_command(
    data: Annotated[Path, typer.Argument(help="Data folder with one folder per survey.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the shards and manifest.json.")],
    shard_size: Annotated[int, typer.Option(help="Spectra per Parquet shard.")] = 2000,
    surveys: Annotated[
        str | None, typer.Option(help="Comma-separated survey folders (default: all).")
    ] = None,
    held_out_fraction: Annotated[float, typer.Option(help="Stars held out, by star.")] = 0.1,
) -> None:
    """Pack survey folders into Parquet shards of spectra with a manifest (counts per survey,
    held-out split by star), for streaming."""
    from stargon.train.shards import pack

    if not data.is_dir():
        errors.print(f"[red]error:[/] {data}: no such folder")
        raise typer.Exit(2)
    chosen = surveys.split(",") if surveys else None
    manifest = pack(data, out, shard_size, chosen, held_out_fraction)
    for failure in manifest["failures"]:
        errors.print(f"[yellow]failed[/] {failure['file']}: {failure['reason']}")
    console.print(f"[green]packed[/] {manifest['spectra']} spectra into {len(manifest['shards'])} "
                  f"shards in {out}")  # fmt: skip


@app.command("sample")
def sample_command(
    n: Annotated[int, typer.Option("-n", help="How many spectra.")] = 10,
    instrument: Annotated[
        str, typer.Option(help="apogee, galah, lamost, miles, stelib, boss, gaia_rvs")
    ] = "apogee",
    checkpoint: Annotated[Path | None, typer.Option(help="Model folder.")] = None,
    out: Annotated[Path, typer.Option(help="Output .fits or .csv")] = Path("samples.fits"),
    v_kms: Annotated[float, typer.Option("--rv", help="Radial velocity of the samples.")] = 0.0,
    seed: int = 0,
) -> None:
    """Draw new spectra from the latent prior, on an instrument's pixels and resolution."""
    from stargon.model.sampling import sample_to_file

    with said_in_one_line():
        sample_to_file(n, instrument, checkpoint, out, v_kms, seed)
    console.print(f"[green]wrote[/] {out}")


@app.command("release")
def release_command(
    run: Annotated[Path, typer.Argument(help="A training run folder (with latest.json).")],
    out: Annotated[Path | None, typer.Option(help="Model folder (default RUN/model).")] = None,
    evaluate: Annotated[bool, typer.Option(help="Held-out χ²/dof per survey vs PCA.")] = True,
    step: Annotated[
        int | None, typer.Option(help="Package this step's checkpoint, not the latest.")
    ] = None,
) -> None:
    """Package a run's latest checkpoint: latent prior, template bank, model card, metrics."""
    from stargon.evaluate.release import release

    with said_in_one_line():
        folder = release(run, out, evaluate, step)
    console.print(f"[green]model[/] {folder}")


@app.command("evaluate")
def evaluate_command(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Model folder (default: embedded).")
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Data folder.")] = None,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("report"),
    surveys: Annotated[
        str | None, typer.Option(help="Comma-separated data subfolders (default: the card's).")
    ] = None,
    max_per_survey: Annotated[int, typer.Option(help="Held-out spectra fitted per survey.")] = 60,
    injection_trials: Annotated[int, typer.Option(help="RV injection trials per setting.")] = 40,
) -> None:
    """Report how good a checkpoint is and what its latents mean (Markdown, PNG, JSON)."""
    from stargon.evaluate.report import evaluate

    with said_in_one_line():
        folder = evaluate(
            checkpoint,
            data or default_data_dir(),
            out,
            max_per_survey=max_per_survey,
            injection_trials=injection_trials,
            surveys=surveys.split(",") if surveys else None,
        )
    console.print(f"[green]report[/] {folder / 'report.md'}")


@app.command("serve")
def serve_command(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Model folder (default: embedded).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Data folder for the star picker (default: STARGON_DATA).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda …")] = "auto",
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one).")] = 5006,
    show: Annotated[bool, typer.Option(help="Open a browser tab.")] = False,
    archive_url: Annotated[
        str | None,
        typer.Option(help="One root URL for every archive the page fetches from (a mirror)."),
    ] = None,
    cache: CacheOption = None,
) -> None:
    """Open the explorer: latent and velocity sliders, instruments, fits of real stars."""
    from stargon.explorer.app import serve
    from stargon.explorer.state import Explorer
    from stargon.model.devices import pick_device

    device = str(pick_device(device))
    folder = data or default_data_dir()
    with said_in_one_line(port):
        explorer = Explorer(
            checkpoint, folder if folder.exists() else None, device, archive_url, cache
        )
        console.print(
            f"[green]StarGON explorer[/] on http://{address}:{port}  (model {explorer.checkpoint})"
        )
        serve(explorer, address, port, show)
