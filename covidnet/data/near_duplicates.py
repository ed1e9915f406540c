"""Near-duplicate images within and across the splits: a perceptual hash plus low-resolution correlation.

COVID-CT is cut from figures in papers, and the same slice sometimes appears twice under two names,
even in two splits with opposite labels (test COVID ``kjr-21-e24-p5-29.png`` is training non-COVID
``71%0.jpg``). The dataset check compares file names; this module compares pictures.

Each image becomes a 32 x 32 grey thumbnail (means over a 32 x 32 grid of blocks, aspect not kept;
block means are fast on a whole stack and nearly the same from the full image or the cached resize). Two scores per pair:

- ``correlation``: Pearson correlation of the two thumbnails (1 = the same picture up to brightness and
  contrast);
- ``hamming``: bits that differ between the two perceptual hashes (pHash: the signs of the 8 x 8
  lowest-frequency DCT coefficients of the thumbnail, DC left out, against their median; 63 bits).

A pair is a near-duplicate when ``correlation >= CORRELATION_MIN`` and ``hamming <= HAMMING_MAX``. The
thresholds were chosen by measurement on COVID-CT (docs/near_duplicates.md): every pair above them that
we looked at is the same picture or an adjacent, visually identical slice of one scan, while below
0.95 the pairs turn into different slices and different patients; the hash alone (e.g. Hamming <= 6)
also matches different patients, so both must hold. Pairs in the review band (correlation >=
``REVIEW_MIN``) are listed too, marked as not near-duplicates, so that the threshold can be judged.

Cost: the thumbnails come from the images the data module has already decoded; the pair scores are
one matrix product, milliseconds for 746 images. ``python -m covidnet.data.near_duplicates <root>`` writes
the list (docs/near_duplicates.csv) and, with ``--effect <run dirs>``, the effect of leaving the
cross-split near-duplicates out of the test metrics.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from covidnet.images.covid_ct_layout import SPLITS, load_grey, read_split
from covidnet.rundirs.run_files import PREDICTIONS_FILE, read_prediction_rows
from covidnet.metrics.stats import binary_metrics, bootstrap_indices, percentile_interval

THUMB = 32
HASH_SIDE = 8
CORRELATION_MIN = 0.95
HAMMING_MAX = 10
REVIEW_MIN = 0.90
CSV_FIELDS = ("split_a", "label_a", "file_a", "split_b", "label_b", "file_b", "correlation", "hamming", "near_duplicate")


@dataclass(frozen=True)
class Item:
    name: str
    label: int
    split: str


@dataclass(frozen=True)
class Pair:
    a: Item
    b: Item
    correlation: float
    hamming: int
    near_duplicate: bool

    @property
    def cross_split(self) -> bool:
        return self.a.split != self.b.split

    def row(self) -> dict:
        return {"split_a": self.a.split, "label_a": self.a.label, "file_a": self.a.name, "split_b": self.b.split,
                "label_b": self.b.label, "file_b": self.b.name, "correlation": f"{self.correlation:.4f}",
                "hamming": self.hamming, "near_duplicate": int(self.near_duplicate)}


def thumbnail(image) -> np.ndarray:
    """A grey image (H x W float in [0, 1], or a uint8 tensor (1,) H x W as the data module caches it) -> 32 x 32 float."""
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.dtype == torch.uint8:
        x = x.float() / 255
    return F.adaptive_avg_pool2d(x.float().reshape(1, 1, *x.shape[-2:]), THUMB)[0, 0].numpy()


def thumbnails(images: torch.Tensor) -> np.ndarray:
    """A stack of same-size uint8 grey images (N, 1, H, W), as the data module caches them -> (N, 32, 32) in one call."""
    x = images.reshape(len(images), 1, *images.shape[-2:])
    # in chunks: no float copy of the whole cache
    parts = [F.adaptive_avg_pool2d(x[i : i + 64].float(), THUMB)[:, 0] / 255 for i in range(0, len(x), 64)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, THUMB, THUMB), np.float32)


def fingerprints(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32) thumbnails -> unit-norm centred vectors (N, 1024) and hash bits (N, 63)."""
    from scipy.fft import dctn

    t = np.asarray(thumbs, dtype=np.float64).reshape(len(thumbs), -1)
    z = t - t.mean(1, keepdims=True)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)  # a flat image correlates with nothing
    low = dctn(np.asarray(thumbs, dtype=np.float64), axes=(1, 2), norm="ortho")[:, :HASH_SIDE, :HASH_SIDE].reshape(len(thumbs), -1)[:, 1:]
    bits = low > np.median(low, axis=1, keepdims=True)
    return z, bits


def find_pairs(items: list[Item], thumbs, review_min: float = REVIEW_MIN, correlation_min: float = CORRELATION_MIN,
               hamming_max: int = HAMMING_MAX) -> list[Pair]:
    """Every pair with correlation >= ``review_min`` (the near-duplicates and the review band), highest first."""
    if len(items) < 2:
        return []
    z, bits = fingerprints(np.stack([np.asarray(t) for t in thumbs]))
    corr = z @ z.T
    b = bits.astype(np.int32)
    hamming = b @ (1 - b).T + (1 - b) @ b.T
    ii, jj = np.nonzero(np.triu(corr >= review_min, k=1))
    pairs = [Pair(items[i], items[j], float(corr[i, j]), int(hamming[i, j]),
                  bool(corr[i, j] >= correlation_min and hamming[i, j] <= hamming_max)) for i, j in zip(ii, jj)]
    return sorted(pairs, key=lambda p: (-p.correlation, p.a.name, p.b.name))


def cross_split_names(pairs: list[Pair], split: str = "test", others=("train", "val")) -> set[str]:
    """Images of ``split`` that have a near-duplicate in one of ``others``: left out by the clean evaluation."""
    out: set[str] = set()
    for p in pairs:
        if not p.near_duplicate:
            continue
        for x, y in ((p.a, p.b), (p.b, p.a)):
            if x.split == split and y.split in others:
                out.add(x.name)
    return out


def summary(pairs: list[Pair]) -> str:
    """The warning the dataset check prints: counts, and every cross-split near-duplicate."""
    dup = [p for p in pairs if p.near_duplicate]
    if not dup:
        return ""
    cross = [p for p in dup if p.cross_split]
    conflict = [p for p in dup if p.a.label != p.b.label]
    lines = [(f"near-duplicate images (correlation >= {CORRELATION_MIN} at {THUMB} px and pHash distance <= {HAMMING_MAX}): "
              f"{len(dup)} pair(s), {len(cross)} across splits, {len(conflict)} with opposite labels")]
    for p in cross:
        lines.append(f"  {p.a.split} {p.a.name} (label {p.a.label}) ~ {p.b.split} {p.b.name} (label {p.b.label}): "
                     f"correlation {p.correlation:.3f}, hamming {p.hamming}")
    lines.append("  test metrics are also reported without the test images that have one in train/val (metrics.json: test_without_near_duplicates)")
    return "\n".join(lines)


def write_csv(pairs: list[Pair], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(p.row() for p in pairs)


def dataset_pairs(root: str | Path, review_min: float = REVIEW_MIN, correlation_min: float = CORRELATION_MIN) -> list[Pair]:
    """Decode every image of the official splits (full resolution) and find the pairs."""
    items, thumbs = [], []
    for split in SPLITS:
        for s in read_split(root, split):
            items.append(Item(s.name, s.label, split))
            thumbs.append(thumbnail(load_grey(s.path)))
    return find_pairs(items, thumbs, min(review_min, correlation_min), correlation_min)


# --- effect on the test metrics -------------------------------------------------------------------------------
def clean_effect(run_dirs: list[Path], excluded: set[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """Seed-averaged P(COVID) of the runs, test metrics on all test images and on the clean subset, and the
    bootstrap interval of (clean - all), resampling test images (the clean value of each resample is its
    images that are not excluded)."""
    tables = [_predictions(d / PREDICTIONS_FILE) for d in run_dirs]
    names = tables[0][0]
    if any(t[0] != names for t in tables):
        raise ValueError("The runs' predictions_test.csv list different test images; compare runs of one split.")
    labels = tables[0][1]
    probs = np.mean([t[2] for t in tables], axis=0)
    keep = np.array([n not in excluded for n in names])
    idx = bootstrap_indices(len(names), n_boot, seed)
    lab_b, prob_b, keep_b = labels[idx], probs[idx], keep[idx]
    out = {"runs": [str(d) for d in run_dirs], "n_test": len(names), "excluded": sorted(set(names) & excluded), "metrics": {}}
    everything = binary_metrics(labels, probs)
    clean = binary_metrics(labels[keep], probs[keep])
    for metric in ("auroc", "acc"):
        diffs = []
        for lb, pb, kb in zip(lab_b, prob_b, keep_b):
            diffs.append(float(binary_metrics(lb[kb], pb[kb])[metric]) - float(binary_metrics(lb, pb)[metric]))
        iv = percentile_interval(float(clean[metric]) - float(everything[metric]), np.asarray(diffs))
        per_run = [float(binary_metrics(lab[keep], p[keep])[metric]) - float(binary_metrics(lab, p)[metric]) for _, lab, p in tables]
        out["metrics"][metric] = {"all": float(everything[metric]), "clean": float(clean[metric]),
                                  "clean_minus_all": iv.estimate, "ci95": [iv.low, iv.high], "per_run_clean_minus_all": per_run}
    return out


def _predictions(path: Path):
    rows = read_prediction_rows(path)
    return [r["file"] for r in rows], np.array([r["label"] for r in rows]), np.array([r["prob_covid"] for r in rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="COVID-CT in the official layout")
    parser.add_argument("--csv", type=Path, help="write the pairs here (e.g. docs/near_duplicates.csv)")
    parser.add_argument("--effect", nargs="*", type=Path, default=[], help="run directories (with predictions_test.csv) to compare all vs clean test metrics")
    parser.add_argument("--review-min", type=float, default=REVIEW_MIN, help="also list pairs down to this correlation")
    parser.add_argument("--correlation-min", type=float, default=CORRELATION_MIN, help="near-duplicate threshold (a sensitivity check)")
    args = parser.parse_args(argv)
    pairs = dataset_pairs(args.root, args.review_min, args.correlation_min)
    print(summary(pairs) or "no near-duplicates")
    if args.csv:
        write_csv(pairs, args.csv)
        print(f"Wrote {args.csv} ({len(pairs)} pairs with correlation >= {args.review_min})")
    if args.effect:
        import json

        runs = [d for d in args.effect if (d / PREDICTIONS_FILE).is_file()]
        print(json.dumps(clean_effect(runs, cross_split_names(pairs)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
