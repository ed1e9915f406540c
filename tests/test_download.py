"""Downloading COVID-CT, without network: official-style zips built in tmp, served from file:// or a local server."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import threading
import urllib.error
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import covidnet.images.download as download
from covidnet.images.covid_ct_layout import CLASSES, SPLITS, DatasetError, read_split
from covidnet.images.download import download_covid_ct, fetch
from mirror_md5 import mirror_md5
from synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {"train": 3, "val": 2, "test": 2}
N_SYNTHETIC = 2 * sum(COUNTS.values())


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """The official repository's files as served: Images-processed/CT_*.zip (wrapping a folder) + Data-split/."""
    src = tmp_path_factory.mktemp("src") / "covid-ct"
    make_dataset(src, COUNTS)
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(src / "Data-split", site / "Data-split")
    for _, folder, *_ in CLASSES:
        archive = site / f"{folder}.zip"
        archive.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive, "w") as zf:
            for image in sorted((src / folder).iterdir()):
                zf.write(image, f"{Path(folder).name}/{image.name}")  # like the official zips
            zf.writestr(f"__MACOSX/{Path(folder).name}/._junk.png", b"resource fork")
    return site


@pytest.fixture
def mirror_sums(mirror, monkeypatch):
    """The mirror's files in place of the official md5 sums (its images are not the official ones)."""
    monkeypatch.setattr(download, "KNOWN_MD5", mirror_md5(mirror))


@pytest.fixture
def synthetic_count(mirror_sums, monkeypatch):
    """The check expects the official 746 images; the mirror has fewer."""
    monkeypatch.setattr(download, "N_IMAGES", N_SYNTHETIC)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_download_from_a_mirror_gives_the_official_layout(mirror, tmp_path, synthetic_count, capsys):
    root = tmp_path / "data" / "covid-ct"
    assert download_covid_ct(root, base_url=mirror.as_uri()) == root
    for split in SPLITS:
        samples = read_split(root, split)
        assert len(samples) == 2 * COUNTS[split]
        assert all(s.path.is_file() for s in samples)
    for _, folder, *_ in CLASSES:
        assert not (root / f"{folder}.zip").exists()  # archives are unpacked, not kept
        assert not any(p.name.startswith("._") for p in (root / folder).iterdir())  # macOS junk skipped
    assert leftovers(root.parent) == ["covid-ct"]  # no temporary folder or .part file left
    assert "CT_COVID.zip" in capsys.readouterr().err  # a progress bar per file


def test_the_data_module_downloads_when_asked(mirror, tmp_path, synthetic_count, monkeypatch):
    from covidnet.data.datamodule import CovidCTDataModule

    monkeypatch.setattr(download, "BASE_URL", mirror.as_uri())
    monkeypatch.setattr(download.download_covid_ct, "__defaults__", (mirror.as_uri(),))
    dm = CovidCTDataModule(root=str(tmp_path / "covid-ct"), image_size=32, download=True)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 2 * COUNTS["train"]


def test_a_wrong_image_count_fails_and_leaves_nothing(mirror, tmp_path, mirror_sums):
    root = tmp_path / "covid-ct"  # N_IMAGES stays 746: the mirror's 14 images must be refused
    with pytest.raises(DatasetError, match="746"):
        download_covid_ct(root, base_url=mirror.as_uri())
    assert leftovers(tmp_path) == []


def test_a_missing_split_file_fails_and_leaves_nothing(mirror, tmp_path, synthetic_count):
    broken = tmp_path / "site"
    shutil.copytree(mirror, broken)
    (broken / "Data-split" / "NonCOVID" / "testCT_NonCOVID.txt").unlink()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError, match="testCT_NonCOVID.txt"):
        download_covid_ct(out / "covid-ct", base_url=broken.as_uri())
    assert leftovers(out) == []


def test_an_interrupted_download_leaves_nothing_that_looks_complete(mirror, tmp_path, synthetic_count, monkeypatch):
    real_fetch = download.fetch
    fetched: list[str] = []

    def interrupted(url, dest, **kwargs):
        if len(fetched) == 3:
            raise KeyboardInterrupt
        fetched.append(url)
        real_fetch(url, dest, **kwargs)

    monkeypatch.setattr(download, "fetch", interrupted)
    root = tmp_path / "covid-ct"
    with pytest.raises(KeyboardInterrupt):
        download_covid_ct(root, base_url=mirror.as_uri())
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(download, "fetch", real_fetch)
    download_covid_ct(root, base_url=mirror.as_uri())  # the next try starts cleanly
    assert len(read_split(root, "train")) == 2 * COUNTS["train"]


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Promises 1000 bytes, sends 100, closes: a connection dropped mid-file."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 100)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_dropped_connection_never_produces_the_file(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "CT_COVID.zip"
        with pytest.raises((OSError, urllib.error.URLError, ValueError)):
            fetch(f"http://127.0.0.1:{server.server_port}/CT_COVID.zip", dest, timeout=10)
        assert leftovers(tmp_path) == []  # neither the file nor its .part
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_server_says_where_to_put_the_data(tmp_path):
    with socket.socket() as s:  # a local port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "covid-ct"
    with pytest.raises(DatasetError) as err:
        download_covid_ct(root, base_url=f"http://127.0.0.1:{port}/COVID-CT")
    message = str(err.value)
    assert "Could not download" in message
    assert str(root) in message and "data.root" in message
    assert leftovers(tmp_path) == []


def test_a_non_empty_root_is_never_overwritten(mirror, tmp_path, synthetic_count):
    root = tmp_path / "covid-ct"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        download_covid_ct(root, base_url=mirror.as_uri())
    assert (root / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("altered", ["Data-split/COVID/valCT_COVID.txt", "Images-processed/CT_NonCOVID.zip"])
def test_a_file_that_is_not_the_official_one_is_refused_and_leaves_nothing(mirror, tmp_path, synthetic_count, altered):
    """A split file or an archive's images whose md5 is not the known one: refused, naming the file and both sums."""
    site = tmp_path / "site"
    shutil.copytree(mirror, site)
    if altered.endswith(".zip"):
        with zipfile.ZipFile(site / altered, "a") as zf:
            zf.writestr("CT_NonCOVID/extra.png", b"not in the official archive")
    else:
        (site / altered).write_text((site / altered).read_text() + "extra.png\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError, match=rf"(?s){altered}.*md5 [0-9a-f]{{32}}, expected {download.KNOWN_MD5[altered]}.*data.root="):
        download_covid_ct(out / "covid-ct", base_url=site.as_uri())
    assert leftovers(out) == []


def test_the_known_sums_are_those_of_the_official_files(real_root):
    """KNOWN_MD5 against a copy of the official dataset (the split files byte for byte, each archive's images)."""
    from covidnet.images.download import images_md5

    for rel, expected in download.KNOWN_MD5.items():
        got = images_md5(real_root / rel[: -len(".zip")]) if rel.endswith(".zip") else hashlib.md5((real_root / rel).read_bytes()).hexdigest()
        assert got == expected, rel


def test_train_downloads_by_default_but_only_into_a_missing_or_empty_root(tmp_path, monkeypatch):
    """The README's main command fetches the data on a fresh machine; a folder holding anything is never written to."""
    import covidnet.data.datamodule as data

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={tmp_path / 'covid-ct'}"])
    assert cfg.data.download is True
    calls = []
    monkeypatch.setattr(data, "download_covid_ct", lambda root: calls.append(Path(root)))
    dm = data.CovidCTDataModule(root=str(tmp_path / "covid-ct"), download=True)
    dm.prepare_data()  # missing: fetched
    (tmp_path / "empty").mkdir()
    data.CovidCTDataModule(root=str(tmp_path / "empty"), download=True).prepare_data()  # empty: fetched
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    used = data.CovidCTDataModule(root=str(tmp_path / "used"), download=True)
    used.prepare_data()  # holds something: not touched, setup lists what is missing
    assert calls == [(tmp_path / "covid-ct").resolve(), (tmp_path / "empty").resolve()]
    with pytest.raises(DatasetError, match=r"COVID-CT data not found at .*used"):
        used.setup()
