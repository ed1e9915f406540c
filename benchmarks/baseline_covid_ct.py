"""The published COVID-CT baseline recipe written as a plain PyTorch loop: the reference for benchmarks/end_to_end.py.

Recipe as in the dataset authors' baseline (UCSD-AI4H/COVID-CT, `baseline methods/`, e.g.
Self-Trans/CT-predict-pretrain.ipynb): every image opened and decoded with PIL in every epoch (no cache),
converted to RGB; training: Resize(256), RandomResizedCrop(224, scale=(0.5, 1)), RandomHorizontalFlip,
ToTensor, Normalize(mean 0.4527, std 0.3317 per channel); evaluation: Resize(224), CenterCrop(224); batch 10,
two-class head with CrossEntropyLoss, Adam lr 1e-4, fp32. Here with a ResNet-18 from scratch (the network of
covidnet's default), the validation split after every epoch (as covidnet does) and the test split at the end.
Prints one JSON line with the timings (seconds per epoch include that epoch's validation) and test metrics.

    python benchmarks/baseline_covid_ct.py --data-root ../shared/data/covid-ct --epochs 3
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import models, transforms

CLASSES = ((1, "CT_COVID", "COVID"), (0, "CT_NonCOVID", "NonCOVID"))
NORMALIZE = transforms.Normalize(mean=[0.45271412] * 3, std=[0.33165374] * 3)
TRAIN = transforms.Compose([
    transforms.Resize(256),
    transforms.RandomResizedCrop(224, scale=(0.5, 1.0)),
    transforms.RandomHorizontalFlip(),
    transforms.ToTensor(),
    NORMALIZE,
])
EVAL = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(), NORMALIZE])


class CovidCTFiles(Dataset):
    """One split of the official layout; every item is read from disk and decoded again."""

    def __init__(self, root: Path, split: str, transform):
        self.items = []
        for label, folder, split_dir in CLASSES:
            names = (root / "Data-split" / split_dir / f"{split}{folder}.txt").read_text().split()
            self.items += [(root / "Images-processed" / folder / name, label) for name in names]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        return self.transform(Image.open(path).convert("RGB")), label


@torch.no_grad()
def evaluate(net: nn.Module, loader: DataLoader) -> dict:
    net.eval()
    probs, labels = [], []
    for x, y in loader:
        probs.append(torch.softmax(net(x), 1)[:, 1])
        labels.append(y)
    p, y = torch.cat(probs), torch.cat(labels)
    pos, neg = p[y == 1], p[y == 0]
    auroc = ((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean().item()
    return {"acc": ((p >= 0.5).long() == y).float().mean().item(), "auroc": auroc}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/covid-ct")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.time()
    torch.manual_seed(args.seed)
    root = Path(args.data_root)
    train = DataLoader(CovidCTFiles(root, "train", TRAIN), batch_size=args.batch_size, shuffle=True, drop_last=False)
    val = DataLoader(CovidCTFiles(root, "val", EVAL), batch_size=args.batch_size)
    test = DataLoader(CovidCTFiles(root, "test", EVAL), batch_size=args.batch_size)
    net = models.resnet18(num_classes=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    epochs = []
    fit_start = time.time()
    for _ in range(args.epochs):
        t = time.time()
        net.train()
        for x, y in train:
            optimizer.zero_grad()
            loss_fn(net(x), y).backward()
            optimizer.step()
        val_metrics = evaluate(net, val)
        epochs.append(round(time.time() - t, 2))
    fit_seconds = time.time() - fit_start
    test_metrics = evaluate(net, test)
    print(json.dumps({
        "recipe": "published baseline, plain loop",
        "epochs": args.epochs,
        "epoch_seconds": epochs,
        "fit_seconds": round(fit_seconds, 1),
        "wall_seconds": round(time.time() - start, 1),
        "val": val_metrics,
        "test": test_metrics,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
