"""Fetch COVID-CT from the official repository, atomically: a partial download never looks complete."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from covidnet.atomic import atomic_path, remove_stale
from covidnet.covid_ct_layout import CLASSES, SPLITS, DatasetError, check_dataset

BASE_URL = "https://github.com/UCSD-AI4H/COVID-CT/raw/master"
N_IMAGES = 746


def official_urls() -> dict[str, str]:
    """Relative path in the official layout -> download address (two zips, six split files)."""
    urls = {}
    for _label, folder, split_dir, suffix in CLASSES:
        urls[f"{folder}.zip"] = f"{BASE_URL}/{folder}.zip"
        for split in SPLITS:
            rel = f"{split_dir}/{split}{suffix}"
            urls[rel] = f"{BASE_URL}/{rel}"
    return urls


def fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download one file with a progress bar, into ``dest`` only once it is whole."""
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
                fetch(url, dest)
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                raise DatasetError(
                    f"Could not download {url} ({err}). Without network access, download COVID-CT elsewhere "
                    f"(github.com/UCSD-AI4H/COVID-CT: unzip Images-processed/CT_COVID.zip and CT_NonCOVID.zip, "
                    f"keep Data-split/), copy it to {root} or pass data.root=/path/to/covid-ct."
                ) from err
            if rel.endswith(".zip"):
                extract(dest, tmp / rel[: -len(".zip")])
                dest.unlink()
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

