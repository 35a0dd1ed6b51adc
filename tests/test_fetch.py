"""`stargon data fetch` against a real HTTP server on 127.0.0.1 serving ../shared/data."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys

import pytest

from stargon.surveys import read_file
from stargon.surveys.fetch import (
    FetchError,
    apogee_star,
    apogee_visit,
    fetch,
    galah_arms,
    lamost_spectrum,
)
from tests.archive_server import ArchiveServer

APSTAR = "apogee_dr17/apStar-dr17-2M17335483-2753043.fits"


def route(remote) -> str:
    return "/" + remote.path


@pytest.fixture
def star(data):
    remote = apogee_star("2M17335483-2753043", "apo25m", "000+02")
    return remote, data / APSTAR


def test_fetch_apstar_gives_the_same_bytes_and_a_readable_file(star, tmp_path):
    remote, source = star
    with ArchiveServer({route(remote): source}) as server:
        path = fetch(remote, cache=tmp_path, base_url=server.url, progress=False)
    assert path == tmp_path / "sdss" / "apStar-dr17-2M17335483-2753043.fits"
    assert path.read_bytes() == source.read_bytes()
    assert read_file(path)[0].star_id == "2M17335483-2753043"
    assert server.requests == [("/" + remote.path, None)]


def test_archive_paths_follow_the_sdss_layout():
    visit = apogee_visit("apo25m", "120+12", "5095", 55844, 128)
    assert visit.path == (
        "dr17/apogee/spectro/redux/dr17/visit/apo25m/120+12/5095/55844/apVisit-dr17-5095-55844-128.fits"
    )
    assert apogee_star("2M0", "lco25m", "F1").url() == (
        "https://data.sdss.org/sas/dr17/apogee/spectro/redux/dr17/stars/lco25m/F1/apStar-dr17-2M0.fits"
    )


def test_second_fetch_uses_the_cache(star, tmp_path):
    remote, source = star
    with ArchiveServer({route(remote): source}) as server:
        fetch(remote, cache=tmp_path, base_url=server.url, progress=False)
        fetch(remote, cache=tmp_path, base_url=server.url, progress=False)
    assert len(server.requests) == 1


def test_broken_transfer_is_reported_then_resumed_with_a_range_request(star, tmp_path):
    remote, source = star
    size = source.stat().st_size
    with ArchiveServer({route(remote): source}, break_after=size // 3) as server:
        with pytest.raises(FetchError, match="run again"):
            fetch(remote, cache=tmp_path, base_url=server.url, progress=False)
        part = tmp_path / "sdss" / (remote.filename + ".part")
        kept = part.stat().st_size
        assert 0 < kept <= size // 3
        assert not (tmp_path / "sdss" / remote.filename).exists()
        server.break_after = None
        path = fetch(remote, cache=tmp_path, base_url=server.url, progress=False)
    assert server.requests[-1][1] == f"bytes={kept}-"
    assert path.read_bytes() == source.read_bytes()
    assert not part.exists()


def test_md5_is_checked(star, tmp_path):
    remote, source = star
    good = hashlib.md5(source.read_bytes()).hexdigest()
    with ArchiveServer({route(remote): source}) as server:
        with pytest.raises(FetchError, match="MD5 checksum does not match"):
            fetch(remote, cache=tmp_path, base_url=server.url, md5="0" * 32, progress=False)
        path = fetch(remote, cache=tmp_path, base_url=server.url, md5=good, progress=False)
    assert path.exists()


def test_not_found_and_not_fits(data, tmp_path):
    remote = lamost_spectrum(42)
    page = tmp_path / "page.html"
    page.write_text("<html>login required</html>")
    with ArchiveServer({route(lamost_spectrum(7)): page}) as server:
        with pytest.raises(FetchError, match=r"not found \(404\)"):
            fetch(remote, cache=tmp_path, base_url=server.url, progress=False)
        with pytest.raises(FetchError, match="did not send a FITS file"):
            fetch(lamost_spectrum(7), cache=tmp_path, base_url=server.url, progress=False)


def test_offline_gives_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError, match=r"cannot reach 127\.0\.0\.1.*offline"):
        fetch(
            lamost_spectrum(1), cache=tmp_path, base_url=f"http://127.0.0.1:{port}", progress=False
        )


def test_cli_fetches_galah_arms_and_lamost_then_reads_them(data, tmp_path):
    arm_dir = data / "galah_workshop/sample_data/210115/spectra/com"
    routes = {route(r): arm_dir / r.filename for r in galah_arms("210115000101001")}
    lamost = lamost_spectrum(103232)
    routes[route(lamost)] = (
        data / "lamost_dr8/20220313_CCF_test_grouped_fits/spec-55859-F5902_sp03-232.fits.gz"
    )
    with ArchiveServer(routes) as server:
        for args in (["galah", "210115000101001"], ["lamost", "103232"]):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "stargon",
                    "data",
                    "fetch",
                    *args,
                    "--base-url",
                    server.url,
                    "--cache",
                    str(tmp_path),
                ],
                check=True,
                capture_output=True,
            )
    galah = sorted((tmp_path / "galah").glob("*.fits"))
    assert [p.name for p in galah] == [f"210115000101001{arm}.fits" for arm in "1234"]
    assert {read_file(p)[0].star_id for p in galah} == {"210115000101001"}
    (spectrum,) = read_file(tmp_path / "lamost" / "lamost-dr8-103232.fits.gz")
    assert spectrum.instrument == "LAMOST LRS" and spectrum.n_pixels == 3906
