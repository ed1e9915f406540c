"""Fetch COVID-CT from the official repository, atomically and checked: a partial or altered download never looks complete.

Every file is checked against the md5 of the official files (``KNOWN_MD5``, with torchvision's dataset helper):
a split file before it lands, an archive's images once unpacked (the archives are not kept, and what matters is
what lands in ``data.root``). A mismatch is refused with the file, both sums and what to do, before anything
reaches ``data.root``."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from torchvision.datasets.utils import calculate_md5
from tqdm import tqdm

from covidnet.core.atomic import atomic_path, remove_stale
from covidnet.images.covid_ct_layout import CLASSES, SPLITS, DatasetError, check_dataset

BASE_URL = "https://github.com/UCSD-AI4H/COVID-CT/raw/master"
N_IMAGES = 746
# md5 of each official file (official_urls' names); for an archive, of its images: the md5 of the listing
# "<md5 of the image>  <file name>\n", one line per image sorted by name (:func:`images_md5`), as md5sum prints it
KNOWN_MD5 = {
    "Images-processed/CT_COVID.zip": "da13f682b16648107126151ebb1d62af",  # 349 images
    "Images-processed/CT_NonCOVID.zip": "e01a5ebbeb8758321547302799e762bd",  # 397 images
    "Data-split/COVID/trainCT_COVID.txt": "bb40944c2265d20ed9dabd0f45faea8c",
    "Data-split/COVID/valCT_COVID.txt": "1556e6129091387444f0245f80e3e531",
    "Data-split/COVID/testCT_COVID.txt": "b7815cd9c80915d44e3bac5aebf3766d",
    "Data-split/NonCOVID/trainCT_NonCOVID.txt": "f4a58844297f0b74be354ed9d17a2a4a",
    "Data-split/NonCOVID/valCT_NonCOVID.txt": "056d3c56b748a6dad76641ed94208a1a",
    "Data-split/NonCOVID/testCT_NonCOVID.txt": "af1c23b6448cd5eed291344a738876f8",
}


def official_urls() -> dict[str, str]:
    """Relative path in the official layout -> download address (two zips, six split files)."""
    urls = {}
    for _label, folder, split_dir, suffix in CLASSES:
        urls[f"{folder}.zip"] = f"{BASE_URL}/{folder}.zip"
        for split in SPLITS:
            rel = f"{split_dir}/{split}{suffix}"
            urls[rel] = f"{BASE_URL}/{rel}"
    return urls


def images_md5(folder: Path) -> str:
    """md5 of a folder's images: of the listing ``<md5>  <name>`` of each file, sorted by name (``KNOWN_MD5``)."""
    files = sorted(folder.iterdir(), key=lambda p: p.name) if folder.is_dir() else []
    listing = "".join(f"{calculate_md5(p)}  {p.name}\n" for p in files)
    return hashlib.md5(listing.encode(), usedforsecurity=False).hexdigest()


def check_md5(what: str, got: str, expected: str | None) -> None:
    """Refuse a download whose md5 is not the official file's (``expected``; None: not known, not checked)."""
    if expected is not None and got != expected:
        raise DatasetError(f"{what}: md5 {got}, expected {expected}: the download is damaged or the official files have changed. "
                           "Run again to retry; if it fails the same way, download COVID-CT elsewhere (github.com/UCSD-AI4H/COVID-CT) "
                           "and pass data.root=/path/to/covid-ct.")


def fetch(url: str, dest: Path, timeout: float = 60.0, md5: str | None = None) -> None:
    """Download one file with a progress bar, into ``dest`` only once it is whole (and has the ``md5`` given)."""
    with atomic_path(dest) as part, urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        # http.client's read(n) ends quietly when the server drops the connection: compare with Content-Length
        if total is not None and received != total:
            raise OSError(f"{url}: the connection ended after {received} of {total} bytes")
        out.flush()
        check_md5(url, calculate_md5(part), md5)


def extract(archive: Path, target: Path) -> None:
    """Unzip so that images land directly in ``target`` whatever folder the archive wraps them in."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            name = Path(member.filename)
            if member.is_dir() or name.name.startswith(".") or "__MACOSX" in name.parts:
                continue
            target.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target / name.name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def download_covid_ct(root: Path | str, base_url: str = BASE_URL) -> Path:
    """Download and check the dataset into ``root``, which must not hold anything yet.

    Everything goes to a temporary folder beside ``root`` that is renamed to ``root`` only after
    the check passes, so an interrupted download leaves no ``root`` behind and the next run
    starts cleanly.
    """
    root = Path(root).expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        raise DatasetError(
            f"{root} exists and is not empty, but does not hold the complete official layout. "
            "covidnet never overwrites files: remove or rename that folder, or pass another data.root."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(root.parent, f".{root.name}.download-")  # folders of downloads whose process was killed
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.download-{os.getpid()}-", dir=root.parent))
    try:
        for rel, url in official_urls().items():
            url = url.replace(BASE_URL, base_url.rstrip("/"))
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                fetch(url, dest, md5=None if rel.endswith(".zip") else KNOWN_MD5.get(rel))
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                raise DatasetError(
                    f"Could not download {url} ({err}). Without network access, download COVID-CT elsewhere "
                    f"(github.com/UCSD-AI4H/COVID-CT: unzip Images-processed/CT_COVID.zip and CT_NonCOVID.zip, "
                    f"keep Data-split/), copy it to {root} or pass data.root=/path/to/covid-ct."
                ) from err
            if rel.endswith(".zip"):
                extract(dest, tmp / rel[: -len(".zip")])
                dest.unlink()
                check_md5(f"{url} (its images)", images_md5(tmp / rel[: -len(".zip")]), KNOWN_MD5.get(rel))
        splits, _ = check_dataset(tmp)
        n = sum(len(s) for s in splits.values())
        if n != N_IMAGES:
            raise DatasetError(f"The downloaded split files list {n} images, expected {N_IMAGES}; the official files may have changed.")
        if root.exists():
            root.rmdir()
        tmp.replace(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root

