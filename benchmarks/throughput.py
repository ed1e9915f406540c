"""Throughput of the covidnet pipeline against a bare PyTorch loop and the hardware; prints one table.

    python benchmarks/throughput.py                               # resnet18, 224 px, batch 32, fp32, CPU
    python benchmarks/throughput.py --device cuda --precision bf16-mixed --channels-last --num-workers 0,4,8
    python benchmarks/throughput.py --image-size 64 --overheads   # what each Lightning feature costs per step

Everything runs in one process on the real COVID-CT data (``--data-root``), with the same model,
optimiser (AdamW, as conf/model/classifier.yaml), loss, batch size, image size and precision. The
compared variants run interleaved (A B B A A B ...) and the table reports medians, so a machine that is
busy with other work slows all variants alike and the ratios stay fair. Imports no Hydra and no
grad-cam, so it runs on any box that has torch, torchvision, lightning and torchmetrics.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics import MetricCollection

from covidnet.models.archs import ARCHS
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.models.model import CovidClassifier

PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
DEFAULT_DATA = "data/covid-ct"  # as train.py: relative to the launch directory; COVIDNET_DATA or --data-root override it

# Lightning variants for --overheads: name -> what is switched off relative to the default recipe.
OVERHEAD_VARIANTS = {
    "recipe": {},
    "no progress bar": {"progress_bar": False},
    "no LR monitor": {"lr_monitor": False},
    "no logger, no LR monitor": {"logger": False, "lr_monitor": False},
    "no train metrics": {"train_metrics": False},
    "no NaN check": {"nan_check": False},
    "log every step": {"log_every_n_steps": 1},
    "lean (all off)": {"progress_bar": False, "logger": False, "lr_monitor": False, "train_metrics": False, "nan_check": False},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("COVIDNET_DATA", DEFAULT_DATA), help="COVID-CT in the official layout")
    p.add_argument("--arch", default="resnet18", choices=sorted(ARCHS))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="32-true", choices=sorted(PRECISIONS))
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (compile time is excluded via warm-up)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default); 1 resists a busy machine")
    p.add_argument("--num-workers", default="0,2", help="comma-separated DataLoader worker counts for the data-pipeline rows")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per run (after --warmup steps)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing starts")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each compared variant (median reported)")
    p.add_argument("--data-epochs", type=int, default=3, help="passes over the training loader per worker count (first + later)")
    p.add_argument("--options", action="store_true", help="also time the bare loop with bf16-mixed / channels-last (/ compile with --compile), interleaved")
    p.add_argument("--overheads", action="store_true", help="also time Lightning with single features switched off")
    p.add_argument("--skip-data", action="store_true", help="skip the data-pipeline rows")
    return p.parse_args(argv)


# --- helpers ----------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def quiet():
    """Lightning's banners, warnings and progress bar go nowhere (they are still rendered: that cost is measured)."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs) -> str:
    return f"{min(xs):.1f}-{max(xs):.1f}" if len(xs) > 1 else ""


class Batches(Dataset):
    """A fixed list of ready batches: Lightning and the bare loop see exactly the same tensors."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


class WithoutNanCheck(CovidClassifier):
    """CovidClassifier minus its per-step non-finite-loss check (a host-device sync on GPU), for --overheads."""

    def training_step(self, batch, batch_idx: int):
        return self._shared_step(batch, self.train_metrics, "train")


class BatchClock(Callback):
    """Start time of every training batch (a whole cycle: data fetch, step, hooks, logging); for
    validation, the time from the start of batch ``first`` to the end of batch ``last``."""

    def __init__(self, device: torch.device, first: int, last: int):
        self.device, self.first, self.last = device, first, last
        self.starts: list[float] = []
        self.t0 = self.t1 = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first <= batch_idx <= self.last:
            sync(self.device)
            self.starts.append(time.perf_counter())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.first:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.last:
            sync(self.device)
            self.t1 = time.perf_counter()

    @property
    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


# --- the compared implementations -------------------------------------------------------------------


class Setup:
    """Model factory and batches shared by every variant."""

    def __init__(self, args, device: torch.device, **override):
        self.args, self.device = args, device
        self.precision = override.get("precision", args.precision)
        self.channels_last = override.get("channels_last", args.channels_last)
        self.compile = override.get("compile", args.compile)
        self.optimizer = functools.partial(torch.optim.AdamW, lr=3e-4, weight_decay=1e-4)  # conf/model/classifier.yaml
        torch.manual_seed(0)
        self.init_state = copy.deepcopy(self._module().state_dict())

    def _module(self, cls=CovidClassifier) -> CovidClassifier:
        return cls(arch=self.args.arch, init="scratch", optimizer=self.optimizer)

    def module(self, nan_check: bool = True) -> CovidClassifier:
        m = self._module(CovidClassifier if nan_check else WithoutNanCheck)
        m.load_state_dict(self.init_state)
        if self.channels_last:
            m = m.set_channels_last(True)  # weights and (in forward) inputs, as train.py's channels_last=true
        if self.compile:
            m.net = torch.compile(m.net)
        return m


def bare_train(setup: Setup, batches, first: int, last: int) -> list[float]:
    """The plain PyTorch loop the issue asks for: forward, BCE loss, backward, AdamW step.
    Returns the duration of each step ``first .. last-1`` (start of one to the start of the next)."""
    device, precision = setup.device, setup.precision
    net = setup.module().net.to(device).train()
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = setup.optimizer(net.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    starts = []
    for i, (x, y) in enumerate(batches):
        if first <= i <= last:
            sync(device)
            starts.append(time.perf_counter())
        if i == last:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = loss_fn(net(x).squeeze(1), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return [b - a for a, b in zip(starts, starts[1:])]


@torch.inference_mode()
def bare_eval(setup: Setup, batches, first: int) -> float:
    device, precision = setup.device, setup.precision
    net = setup.module().net.to(device).eval()
    t0 = None
    for i, (x, _) in enumerate(batches):
        if i == first:
            sync(device)
            t0 = time.perf_counter()
        with autocast(device, precision):
            torch.sigmoid(net(x.to(device, non_blocking=True)).squeeze(1)).float().cpu()
    sync(device)
    return time.perf_counter() - t0


def trainer(setup: Setup, clock: Callback, workdir: str, *, val_batches=0, progress_bar=True, logger=True, lr_monitor=True, log_every_n_steps=5, **_) -> L.Trainer:
    """A Trainer as conf/trainer/default.yaml + conf/callbacks/default.yaml + conf/logger/tensorboard.yaml
    build it, except checkpointing (a per-epoch file write, not a per-step cost)."""
    callbacks = [clock] + ([LearningRateMonitor(logging_interval="epoch")] if lr_monitor else [])
    return L.Trainer(
        accelerator="gpu" if setup.device.type == "cuda" else "cpu",
        devices=1,
        precision=setup.precision,
        max_epochs=1,
        log_every_n_steps=log_every_n_steps,
        deterministic=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=val_batches,
        callbacks=callbacks,
        logger=TensorBoardLogger(workdir, name="tb", version="") if logger else False,
        default_root_dir=workdir,
    )


def lightning_train(setup: Setup, batches, first: int, last: int, **variant) -> list[float]:
    model = setup.module(nan_check=variant.get("nan_check", True))
    if variant.get("train_metrics") is False:
        model.train_metrics = MetricCollection({}, prefix="train/")
    clock = BatchClock(setup.device, first, last)
    loader = DataLoader(Batches(batches), batch_size=None, shuffle=False)
    with tempfile.TemporaryDirectory() as workdir, quiet():
        trainer(setup, clock, workdir, **variant).fit(model, train_dataloaders=loader)
    return clock.step_times


def lightning_eval(setup: Setup, batches, first: int) -> float:
    model = setup.module()
    clock = BatchClock(setup.device, first, len(batches) - 1)
    loader = DataLoader(Batches(batches), batch_size=None, shuffle=False)
    with tempfile.TemporaryDirectory() as workdir, quiet():
        trainer(setup, clock, workdir, val_batches=1.0).validate(model, dataloaders=loader)
    return clock.seconds


# --- hardware ---------------------------------------------------------------------------------------


def train_step_flops(setup: Setup, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step (forward + backward), counted by torch.utils.flop_counter."""
    net = setup.module().net.to(setup.device).train()
    if setup.compile:
        net = net._orig_mod
    counter = FlopCounterMode(display=False)
    with counter, autocast(setup.device, setup.precision):
        nn.functional.binary_cross_entropy_with_logits(net(x.to(setup.device)).squeeze(1), y.to(setup.device)).backward()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, precision: str, n: int = 2048, seconds: float = 2.0) -> float:
    """Best FLOP/s of an n x n matmul measured in this process: a practical peak, not the datasheet one."""
    dtype = PRECISIONS[precision] or torch.float32
    if device.type == "cuda":
        n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident memory of this process and of its (waited-for) children, e.g. DataLoader workers."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"


# --- the benchmark ----------------------------------------------------------------------------------


def data_rows(dm: CovidCTDataModule, worker_counts: list[int], epochs: int) -> list[tuple]:
    rows = []
    n_train = len(dm.datasets["train"])
    for w in worker_counts:
        dm.hparams.num_workers = w
        loader = dm.train_dataloader()
        times = []
        for _ in range(epochs):
            t = time.perf_counter()
            n = sum(len(y) for _, y in loader)
            times.append(time.perf_counter() - t)
        del loader  # stops persistent workers
        rows.append((f"data: train loader epoch 1, workers={w}", n / times[0], "", f"{n_train} images, incl. worker start"))
        if epochs > 1:
            later = [n / s for s in times[1:]]
            rows.append((f"data: train loader later epochs, workers={w}", median(later), spread(later), "augmentation on cached uint8"))
    return rows


def channels_last(batches):
    return [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]


def option_rows(args, device, train_batches, first, last) -> list[tuple]:
    """The bare loop under each user-facing speed option, interleaved, as a speed-up over plain fp32."""
    fast = "bf16-mixed"
    variants = {
        "32-true": {"precision": "32-true", "channels_last": False, "compile": False},
        fast: {"precision": fast, "channels_last": False, "compile": False},
        "channels-last": {"precision": "32-true", "channels_last": True, "compile": False},
        f"channels-last + {fast}": {"precision": fast, "channels_last": True, "compile": False},
    }
    if args.compile:
        variants["compile"] = {"precision": "32-true", "channels_last": False, "compile": True}
        variants[f"compile + channels-last + {fast}"] = {"precision": fast, "channels_last": True, "compile": True}
    plain = [(x.contiguous(), y) for x, y in train_batches]
    cl = channels_last(plain)
    n_timed = args.steps * args.batch_size
    speed = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, v in (variants.items() if r % 2 == 0 else reversed(variants.items())):
            setup = Setup(args, device, **v)
            speed[name].append(n_timed / sum(bare_train(setup, cl if v["channels_last"] else plain, first, last)))
    base = median(speed["32-true"])
    return [(f"option: bare loop, {name}", median(x), spread(x), f"x{median(x) / base:.2f} vs 32-true") for name, x in speed.items()]


def main(argv=None) -> None:
    args = parse_args(argv)
    for name in ("lightning.pytorch", "lightning.fabric"):  # banners would break up the table
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch.")
    if not (Path(args.data_root) / "Data-split").is_dir():
        sys.exit(f"No COVID-CT data at {args.data_root}: pass --data-root (the official layout with Data-split/).")
    workers = [int(w) for w in args.num_workers.split(",") if w.strip()]
    rows: list[tuple] = []  # (what, images/s or value, spread, note)

    # data pipeline: decoding into the cache happens once, in setup()
    dm = CovidCTDataModule(root=args.data_root, image_size=args.image_size, batch_size=args.batch_size, num_workers=0, pin_memory=device.type == "cuda")
    t = time.perf_counter()
    dm.setup("fit")
    decode_s = time.perf_counter() - t
    n_all = sum(len(d) for d in dm.datasets.values())
    rows.append(("data: decode + resize into cache (setup)", n_all / decode_s, "", f"{n_all} images, all splits, once per run"))
    if not args.skip_data:
        rows += data_rows(dm, workers, args.data_epochs)

    # the same augmented batches for every training variant, the val split for evaluation
    dm.hparams.num_workers = 0
    torch.manual_seed(0)
    n_batches = args.warmup + args.steps + 1
    train_batches = []
    while len(train_batches) < n_batches:
        train_batches += list(dm.train_dataloader())
    train_batches = train_batches[:n_batches]
    val_batches = list(dm.val_dataloader())
    if args.channels_last:
        train_batches, val_batches = channels_last(train_batches), channels_last(val_batches)
    if device.type == "cuda":
        train_batches = [(x.pin_memory(), y.pin_memory()) for x, y in train_batches]
        val_batches = [(x.pin_memory(), y.pin_memory()) for x, y in val_batches]
    first, last = args.warmup, args.warmup + args.steps
    n_timed = args.steps * args.batch_size
    setup = Setup(args, device)

    # training: bare loop and Lightning interleaved (A B A B ...). Two estimates: whole runs (every cost,
    # logging steps included) and the median single step, which a busy machine disturbs least.
    bare, light, ratios, bare_steps, light_steps = [], [], [], [], []
    for r in range(args.repeats):
        # A B B A A B ...: a load that rises or falls during the benchmark favours neither variant
        if r % 2 == 0:
            b = bare_train(setup, train_batches, first, last)
            li = lightning_train(setup, train_batches, first, last)
        else:
            li = lightning_train(setup, train_batches, first, last)
            b = bare_train(setup, train_batches, first, last)
        bare.append(n_timed / sum(b))
        light.append(n_timed / sum(li))
        ratios.append(sum(b) / sum(li))
        bare_steps += b
        light_steps += li
    step_ratio = median(bare_steps) / median(light_steps)
    rows.append(("train: bare PyTorch loop", median(bare), spread(bare), f"{args.steps} steps x {args.repeats} repeats"))
    rows.append(("train: Lightning (CovidClassifier + Trainer)", median(light), spread(light), "progress bar, TensorBoard, LR monitor, metrics"))
    rows.append(("train: Lightning / bare ratio", median(ratios), f"{min(ratios):.3f}-{max(ratios):.3f}", "target >= 0.95; median of paired whole runs"))
    rows.append(("train: Lightning / bare ratio, median step", step_ratio, "", f"median of {len(bare_steps)} step times each"))

    if args.overheads:
        per_step = {name: [] for name in OVERHEAD_VARIANTS}
        bare_step = []
        for r in range(args.repeats):
            runs = [("bare", {})] + list(OVERHEAD_VARIANTS.items())
            for name, variant in runs if r % 2 == 0 else reversed(runs):
                if name == "bare":
                    bare_step += bare_train(setup, train_batches, first, last)
                else:
                    per_step[name] += lightning_train(setup, train_batches, first, last, **variant)
        base = median(bare_step)
        rows.append(("overhead: bare loop, median step (ms)", base * 1e3, "", "reference for the rows below"))
        for name, times in per_step.items():
            mean = (statistics.fmean(times) - statistics.fmean(bare_step)) * 1e3
            rows.append((f"overhead: Lightning '{name}' - bare (ms/step)", (median(times) - base) * 1e3, "", f"median steps; means: {mean:.1f}"))

    if args.options:
        rows += option_rows(args, device, train_batches, first, last)

    # evaluation on the validation split (first batch untimed)
    n_eval = sum(len(y) for _, y in val_batches[1:])
    be, le = [], []
    for r in range(args.repeats):
        for fn, out in ((bare_eval, be), (lightning_eval, le))[:: 1 if r % 2 == 0 else -1]:
            out.append(n_eval / fn(setup, val_batches, 1))
    rows.append(("eval: bare loop (inference_mode)", median(be), spread(be), f"val split, {n_eval} images timed"))
    rows.append(("eval: Lightning validate", median(le), spread(le), "with val metrics"))

    # hardware: FLOPs of one step against an in-process matmul peak
    flops = train_step_flops(setup, *train_batches[0])
    peak = matmul_peak(device, args.precision)  # the precision's own dtype: bf16 peak for bf16-mixed
    achieved = flops / args.batch_size * median(light)
    rows.append(("hw: training FLOPs per image (fwd+bwd)", flops / args.batch_size / 1e9, "", "GFLOP, torch.utils.flop_counter"))
    rows.append(("hw: matmul peak measured in-process", peak / 1e9, "", f"GFLOP/s, {'8192' if device.type == 'cuda' else '2048'}^2 matmul, {PRECISIONS[args.precision] or torch.float32}"))
    rows.append(("hw: achieved by Lightning training", achieved / 1e9, "", f"GFLOP/s = {achieved / peak:.0%} of the matmul peak"))
    if not args.skip_data:
        best_data = max((r[1] for r in rows if r[0].startswith("data: train loader later epochs")), default=float("nan"))
        rows.append(("data margin: best data rate / Lightning training", best_data / median(light), "", "target >= 5x"))
    rss, rss_children = peak_rss_mib()
    rows.append(("memory: peak RSS of this process (MiB)", rss, "", f"cache + training runs; DataLoader workers peak {rss_children:.0f} MiB"))
    if device.type == "cuda":
        rows.append(("memory: peak GPU allocated (MiB)", torch.cuda.max_memory_allocated(device) / 2**20, "", ""))

    print_table(args, device, rows)


def print_table(args, device, rows) -> None:
    print(
        f"# covidnet throughput | {device_name(device)} | torch {torch.__version__}, lightning {L.__version__}\n"
        f"# arch={args.arch} image_size={args.image_size} batch_size={args.batch_size} precision={args.precision} "
        f"channels_last={args.channels_last} compile={args.compile} device={args.device} steps={args.steps} "
        f"warmup={args.warmup} repeats={args.repeats} threads={torch.get_num_threads()} | data {args.data_root}"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'measurement':<{width}} | {'images/s or value':>17} | {'range':>13} | note")
    print(f"|{'-' * (width + 2)}|{'-' * 19}|{'-' * 15}|------")
    for what, value, rng, note in rows:
        print(f"| {what:<{width}} | {value:>17.3f} | {rng:>13} | {note}" if "ratio" in what else f"| {what:<{width}} | {value:>17.1f} | {rng:>13} | {note}")


if __name__ == "__main__":
    main()
