"""`stargon fit`: fit every readable spectrum in files or folders, one CSV row each.

Files are read ahead (optionally in worker processes) while the model fits; spectra wait in
one bucket per instrument (so a batch pads to similar lengths) and are fitted `batch_size` at a
time, or fewer once a bucket holds the fit's pixel budget (`Fitter.fit_batch`). Rows are
appended and flushed batch by batch, so a killed run loses at most the batch in flight, and
`resume` skips the spectra the output already holds.
"""

from __future__ import annotations

import csv
import functools
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from astropy.table import Table
from tqdm import tqdm

from stargon.core.interop import UserSettings
from stargon.core.spectrum import Spectrum, SpectrumReadError
from stargon.model.devices import pick_device
from stargon.model.fit_config import FitConfig
from stargon.model.fitter import Fitter
from stargon.model.outliers import SCORE_COLUMNS, OutlierReference
from stargon.model.refine import FitResult
from stargon.model.release import Release
from stargon.surveys.registry import FileOutcome, iter_files, scan

COLUMNS = ["source", "star_id", "instrument", "frame", "rv_kms", "rv_err_kms", "chi2_dof", "n_pix"]


@dataclass
class FitRun:
    """What a `fit_paths` run did: spectra fitted now, spectra the output already held, and
    every file or spectrum that failed, with the reason."""

    fitted: int = 0
    already_done: int = 0
    files: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def fit_paths(
    paths: list[Path],
    checkpoint: Path | None,
    out: Path,
    device: str = "cpu",
    user: UserSettings | None = None,
    batch_size: int = 64,
    workers: int = 0,
    resume: bool = False,
    fits_table: bool = False,
    config: FitConfig | None = None,
    progress: bool = True,
) -> FitRun:
    """Fit every spectrum under `paths` into the CSV `out` (and `out` as a FITS table when
    `fits_table`). Files of no known survey are read with `user`'s settings (resolving power,
    medium, frame). A missing path or a bad file is a failure; the rest goes on."""
    device = pick_device(device)
    release = Release.load(checkpoint, device)
    fitter = Fitter.from_release(release, device, config)
    run = FitRun()
    files = []  # (path, named by the user): a named file is never skipped in silence
    for path in paths:
        try:
            files.extend((found, found == path) for found in iter_files(path))
        except SpectrumReadError as exc:
            run.failures.append((str(exc.path), exc.problem))
    dim = fitter.model.config.latent_dim
    columns = COLUMNS + list(SCORE_COLUMNS)
    columns += [f"{p}_{k}" for p in ("z", "z_err") for k in range(dim)]
    done = _rows_done(out, columns) if resume else set()
    fit = functools.partial(_fit_and_score, fitter.fit_batch, release.outliers)
    with _csv_rows(out, columns, append=resume) as write_rows:
        buckets: dict[str, list[Spectrum]] = defaultdict(list)
        bar = tqdm(total=len(files), unit="file", desc="fitting", disable=not progress)
        start = time.perf_counter()
        for outcome in read_ahead(files, user, workers):
            run.files += 1
            bar.update()
            if outcome.error is not None:
                run.failures.append((str(outcome.path), outcome.error))
            for spectrum in outcome.spectra:
                if (spectrum.source, spectrum.star_id) in done:
                    run.already_done += 1
                    continue
                bucket = buckets[spectrum.instrument]
                bucket.append(spectrum)
                if len(bucket) >= batch_size or _pixels(bucket) >= fitter.config.pixel_budget:
                    _fit_bucket(fit, bucket, write_rows, run)
                    bar.set_postfix(spectra=run.fitted, per_s=_rate(run.fitted, start))
        for bucket in buckets.values():
            _fit_bucket(fit, bucket, write_rows, run)
        bar.set_postfix(spectra=run.fitted, per_s=_rate(run.fitted, start))
        bar.close()
    if fits_table:
        Table.read(out, format="ascii.csv").write(out.with_suffix(".fits"), overwrite=True)
    return run


def read_ahead(
    files: list[tuple[Path, bool]], user: UserSettings | None, workers: int
) -> Iterator[FileOutcome]:
    """One outcome per (file, named by the user), in order; with `workers` processes reading up
    to 2 × workers files ahead of the fitting (bounded: memory does not grow with the number
    of files)."""
    read = functools.partial(_read_one, user=user)
    if workers <= 0:
        yield from (read(path, named) for path, named in files)
        return
    with ProcessPoolExecutor(workers) as pool:
        pending: deque = deque()
        for path, named in files:
            pending.append(pool.submit(read, path, named))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _read_one(path: Path, named: bool, user: UserSettings | None) -> FileOutcome:
    return next(scan(path, user=user, skip_non_spectra=not named))


def _pixels(bucket: list[Spectrum]) -> int:
    return sum(spectrum.n_pixels for spectrum in bucket)


def _fit_bucket(fit, bucket: list[Spectrum], write_rows, run: FitRun) -> None:
    """Fit and write a bucket, then empty it. A batch that fails is fitted spectrum by
    spectrum, so that only the spectrum at fault is lost (and named)."""
    if not bucket:
        return
    try:
        pairs = list(zip(bucket, fit(bucket), strict=True))
    except (RuntimeError, ValueError):
        pairs = []
        for spectrum in bucket:
            try:
                pairs.append((spectrum, fit([spectrum])[0]))
            except (RuntimeError, ValueError) as exc:
                run.failures.append((spectrum.source, f"fit failed: {exc}"))
    write_rows([_row(spectrum, result) for spectrum, result in pairs])
    run.fitted += len(pairs)
    bucket.clear()


def _fit_and_score(
    fit_batch, reference: OutlierReference | None, spectra: list[Spectrum]
) -> list[tuple[FitResult, dict]]:
    """Fit a batch; each result with its outlier score's columns (empty for a release made
    before the score existed)."""
    results = fit_batch(spectra)
    if reference is None:
        return [(result, dict.fromkeys(SCORE_COLUMNS, "")) for result in results]
    scores = reference.score_fits(spectra, results)
    return [(result, {name: f"{value:.4g}" for name, value in scores.row(k).items()})
            for k, result in enumerate(results)]  # fmt: skip


def _row(spectrum: Spectrum, fitted: tuple[FitResult, dict]) -> dict:
    result, scores = fitted
    row = scores | {
        "source": spectrum.source,
        "star_id": spectrum.star_id,
        "instrument": spectrum.instrument,
        "frame": spectrum.frame,
        "rv_kms": f"{result.v_kms:.3f}",
        "rv_err_kms": f"{result.v_err_kms:.3f}",
        "chi2_dof": f"{result.chi2_dof:.4f}",
        "n_pix": result.n_pix,
    }
    row |= {f"z_{k}": f"{v:.5g}" for k, v in enumerate(result.z)}
    return row | {f"z_err_{k}": f"{v:.5g}" for k, v in enumerate(result.z_err)}


def _rate(n: int, start: float) -> str:
    return f"{n / max(time.perf_counter() - start, 1e-9):.1f}"


def _rows_done(out: Path, columns: list[str]) -> set[tuple[str, str]]:
    """(source, star_id) of the complete rows in an earlier output; a row cut short by a kill
    is dropped from the file so that appending continues cleanly."""
    if not out.exists():
        return set()
    text = out.read_text()
    complete = text[: text.rfind("\n") + 1]
    if len(complete) != len(text):
        with open(out, "r+") as handle:
            handle.truncate(len(complete.encode()))
    rows = list(csv.reader(complete.splitlines()))
    if not rows:
        return set()
    if rows[0] != columns:
        raise SpectrumReadError(out, "cannot resume: its columns are not this model's")
    return {(row[0], row[1]) for row in rows[1:] if len(row) == len(columns)}


@contextmanager
def _csv_rows(out: Path, columns: list[str], append: bool) -> Iterator[Callable[[list], None]]:
    """A function writing rows to the CSV `out`, each call's rows on disk when it returns."""
    append = append and out.exists() and out.stat().st_size > 0
    with open(out, "a" if append else "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        if not append:
            writer.writeheader()

        def write_rows(rows: list[dict]) -> None:
            writer.writerows(rows)
            handle.flush()

        yield write_rows
