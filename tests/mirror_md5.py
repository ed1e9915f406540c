"""The md5 sums (covidnet.images.download.KNOWN_MD5's form) of a test mirror of the official COVID-CT files, computed
here from the mirror's files and archives, independently of covidnet's own code, so a download test can put them
in place of the official ones."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from covidnet.images.download import official_urls


def mirror_md5(site: Path) -> dict[str, str]:
    """``{official name: md5}`` for the files under ``site``; an archive's entry is the md5 of its images' listing."""
    sums = {}
    for rel in official_urls():
        if rel.endswith(".zip"):
            with zipfile.ZipFile(site / rel) as zf:
                images = {Path(m.filename).name: zf.read(m) for m in zf.infolist()
                          if not m.is_dir() and not Path(m.filename).name.startswith(".") and "__MACOSX" not in m.filename}
            listing = "".join(f"{hashlib.md5(data).hexdigest()}  {name}\n" for name, data in sorted(images.items()))
            sums[rel] = hashlib.md5(listing.encode()).hexdigest()
        else:
            sums[rel] = hashlib.md5((site / rel).read_bytes()).hexdigest()
    return sums
