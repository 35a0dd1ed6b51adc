"""Download real spectra from the public archives into a local cache.

Downloads stream to `<name>.part`, resume from where a broken transfer stopped (HTTP Range),
check the size against the server's and an optional MD5, check the bytes are FITS, and only
then move into place, so the cache never holds a half file under a real name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs
import requests
from tqdm import tqdm

ARCHIVES = {
    "sdss": "https://data.sdss.org/sas",
    "galah": "https://datacentral.org.au",
    "lamost": "https://www.lamost.org",
}
GALAH_CAMERAS = {1: "B", 2: "V", 3: "R", 4: "I"}
CHUNK = 1 << 16
FITS_MAGIC = b"SIMPLE  ="
GZIP_MAGIC = b"\x1f\x8b"


class FetchError(RuntimeError):
    """A download that could not be completed; the message says which URL and why."""


@dataclass(frozen=True)
class Remote:
    """One archive file: where it lives (relative to an archive root) and its cache name."""

    archive: str
    path: str
    filename: str

    def url(self, base_url: str | None = None) -> str:
        return f"{(base_url or ARCHIVES[self.archive]).rstrip('/')}/{self.path}"


def apogee_star(apogee_id: str, telescope: str, field: str, release: str = "dr17") -> Remote:
    """SDSS APOGEE combined spectrum (apStar) of one star."""
    name = f"apStar-{release}-{apogee_id}.fits"
    path = f"{release}/apogee/spectro/redux/{release}/stars/{telescope}/{field}/{name}"
    return Remote("sdss", path, name)


def apogee_visit(
    telescope: str, field: str, plate: str, mjd: int, fiber: int, release: str = "dr17"
) -> Remote:
    """SDSS APOGEE single-visit spectrum (apVisit)."""
    name = f"apVisit-{release}-{plate}-{mjd}-{fiber:03d}.fits"
    path = (
        f"{release}/apogee/spectro/redux/{release}/visit/{telescope}/{field}/{plate}/{mjd}/{name}"
    )
    return Remote("sdss", path, name)


def galah_arms(sobject_id: str, release: str = "dr3") -> list[Remote]:
    """The four HERMES arms of one GALAH spectrum, via Data Central's SSA links service."""
    return [
        Remote(
            "galah",
            f"vo/slink/links?ID={sobject_id}&DR=galah_{release}&IDX=0"
            f"&FILT={camera}&RESPONSEFORMAT=fits",
            f"{sobject_id}{arm}.fits",
        )
        for arm, camera in GALAH_CAMERAS.items()
    ]


def lamost_spectrum(obsid: int, release: str = "dr8") -> Remote:
    """A LAMOST low-resolution spectrum by obsid (served gzipped)."""
    return Remote(
        "lamost", f"{release}/v2.0/spectrum/fits/{obsid}", f"lamost-{release}-{obsid}.fits.gz"
    )


def default_cache() -> Path:
    return Path(platformdirs.user_cache_dir("stargon")) / "archive"


def fetch(
    remote: Remote,
    cache: Path | None = None,
    base_url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Make sure `remote` is in the cache and return its path; resume a partial download."""
    cache = Path(cache or default_cache()) / remote.archive
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / remote.filename
    if dest.exists() and (md5 is None or _md5(dest) == md5):
        return dest
    url = remote.url(base_url)
    part = dest.with_name(dest.name + ".part")
    total = _download(url, part, progress, timeout)
    _verify(url, part, total, md5)
    os.replace(part, dest)
    return dest


def _download(url: str, part: Path, progress: bool, timeout: float) -> int | None:
    """Stream `url` into `part`, continuing after any bytes already there; returns full size."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.ConnectionError as exc:
        host = urlsplit(url).netloc
        raise FetchError(f"{url}: cannot reach {host} — are you offline? ({exc})") from exc
    except requests.Timeout as exc:
        raise FetchError(f"{url}: no answer within {timeout:.0f} s") from exc
    with response:
        if response.status_code == 416 and start:  # nothing left: the part file is complete
            return start
        if response.status_code == 404:
            raise FetchError(f"{url}: not found (404) — check the identifiers")
        if response.status_code not in (200, 206):
            raise FetchError(f"{url}: HTTP {response.status_code} {response.reason}")
        if response.status_code == 200:
            start = 0  # the server ignored the Range header: start again
        total = _total_size(response, start)
        mode = "ab" if start else "wb"
        with (
            open(part, mode) as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            try:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as exc:
                raise FetchError(f"{url}: transfer broke off ({exc}); run again to resume") from exc
    return total


def _total_size(response: requests.Response, start: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None else None


def _verify(url: str, part: Path, total: int | None, md5: str | None) -> None:
    size = part.stat().st_size
    if total is not None and size != total:
        raise FetchError(f"{url}: got {size} bytes, the server announced {total}; run again")
    if md5 is not None and _md5(part) != md5.lower():
        part.unlink()
        raise FetchError(f"{url}: MD5 checksum does not match; the partial file was removed")
    with open(part, "rb") as handle:
        head = handle.read(len(FITS_MAGIC))
    if not (head.startswith(FITS_MAGIC) or head.startswith(GZIP_MAGIC)):
        part.unlink()
        raise FetchError(f"{url}: the server did not send a FITS file (got {head!r}…)")


def _md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()
