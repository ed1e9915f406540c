"""Class activation maps of the one-logit classifier: GradCAM and EigenCAM by name, safe inside Lightning.

The TensorBoard callback (``callbacks/cam_logger.py``) and ``visualize.py`` both draw their maps here, so
targets, EigenCAM orientation and overlays are defined once. See docs/cam.md for what the maps mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam import EigenCAM, GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from covidnet.models.archs import LAYER_STRIDES
from covidnet.core.configs import load
from covidnet.images.covid_ct_layout import CLASS_NAMES
from covidnet.core.options import Rule, items, list_of, one_of
from covidnet.models.predict import eval_mode

# How the target category of each image is chosen: its true label, or the model's own prediction.
TARGET_MODES = ("label", "prediction")


def cam_defaults() -> dict:
    """``methods``, ``layer`` and ``target`` as conf/cam/default.yaml sets them: the one place of these
    defaults, shared by the training callback (callbacks.cam) and visualize.py."""
    return OmegaConf.to_container(load("cam/default.yaml"), resolve=True)


def oriented_projection(activations: np.ndarray) -> np.ndarray:
    """EigenCAM's map (projection on the first principal component) with a deterministic sign.

    The SVD fixes the principal direction ``v`` only up to sign. Rule: ``v`` is flipped so that its
    channel sum is positive, which is the same as the map correlating positively with the layer's total
    activation ``sum_k A_k(x, y)`` (for the first principal component, ``cov(A v, A 1) = lambda * sum(v)``).
    So the map is high where the layer responds strongly, never where it is silent. ``activations`` is
    (N, C, H, W); the result (N, H, W).
    """
    acts = np.nan_to_num(np.asarray(activations, dtype=np.float64))
    maps = []
    for a in acts:
        flat = a.reshape(a.shape[0], -1).T  # (H*W, C)
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        v = vt[0]
        if v.sum() < 0:
            v = -v
        maps.append((flat @ v).reshape(a.shape[1:]))
    return np.float32(maps)


class OrientedEigenCAM(EigenCAM):
    """pytorch-grad-cam's EigenCAM with the sign rule of :func:`oriented_projection`."""

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return oriented_projection(activations)


# method name -> (class, whether the map depends on the target category)
METHODS = {
    "gradcam": (GradCAM, True),
    "eigencam": (OrientedEigenCAM, False),
}


# cam.layer: the deepest map at output stride 4, 8, 16, 32 (each architecture says which module, covidnet/models/archs.py)
LAYERS = tuple(LAYER_STRIDES)

# the keys of conf/cam/default.yaml (top-level in visualize.yaml; the training callback's arguments), covidnet.core.options
OPTIONS: dict[str, Rule] = {
    "methods": list_of(METHODS).because("e.g. methods=[gradcam,eigencam]"),
    "layer": one_of(LAYERS),
    "target": one_of(TARGET_MODES).because("label (the true class) or prediction (the model's class)"),
}


def check_methods(methods: Sequence[str] | str) -> list[str]:
    """Method names as a list; an unknown name is an error that lists the known ones."""
    return items(OPTIONS["methods"].check("methods", methods))


def check_target(target: str) -> str:
    return OPTIONS["target"].check("target", target)


def target_layer(model: nn.Module, name: str = "layer4") -> nn.Module:
    """The module whose output the maps are computed on: ``layer1``..``layer4`` name the deepest map at output
    stride 4, 8, 16, 32 (default ``layer4``: the deepest map with a spatial layout). On a ResNet that is the
    stage's last block; every architecture says which module it is (covidnet/models/archs.py ``cam_layers``, by stride)."""
    arch = getattr(model, "arch", None)
    net = getattr(model, "net", model)
    path = arch.cam_layer(name) if arch is not None else (name if name.startswith("layer") else None)
    try:
        module = net.get_submodule(path) if path is not None else None
    except AttributeError:  # a ResNet stage name on a network without it
        module = None
    if module is None:
        raise ValueError(f"CAM layer={name!r}: {type(net).__name__} has no such map; choose one of {', '.join(LAYERS)}.")
    return module[-1] if isinstance(module, nn.Sequential) else module



# the smallest map (cells a side) a CAM can localise with: a 1 x 1 map is one constant once upsampled; a 2 x 2 map
# still tells the quadrants apart (the blob model of the tests, layer4 at 64 px, points at its blobs so)
MIN_GRID = 2


def cam_grid(model: nn.Module, x: torch.Tensor, layer: str | nn.Module = "layer4") -> tuple[int, int]:
    """The (height, width) of the map the CAM layer gives for inputs like ``x``: what a map can resolve at most."""
    module = target_layer(model, layer) if isinstance(layer, str) else layer
    found: list[tuple[int, int]] = []
    hook = module.register_forward_hook(lambda _m, _i, out: found.append(tuple((out[0] if isinstance(out, tuple) else out).shape[-2:])))
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1].to(next(model.parameters()).device))
    finally:
        hook.remove()
    return found[0]


def grid_problem(grid: tuple[int, int], layer: str) -> str | None:
    """Why maps on a ``grid`` cannot localise (fewer than ``MIN_GRID`` cells a side), with what to change; else None.
    A 1 x 1 map is one constant: pointing, removal drops and lung shares computed on it would be numbers about nothing."""
    if min(grid) >= MIN_GRID:
        return None
    return (f"the CAM layer {layer} gives a {grid[0]}x{grid[1]} map at this input size (fewer than {MIN_GRID}x{MIN_GRID} cells): "
            "its maps cannot localise, so no CAM numbers are computed; use larger images (a model trained with a larger "
            "data.image_size) or an earlier layer (e.g. layer=layer3)")


def categories_for(target: str, labels: Sequence[int], probs: Sequence[float]) -> list[int]:
    """Target category per image: the true label (``label``) or the predicted class (``prediction``)."""
    check_target(target)
    if target == "label":
        return [int(y) for y in labels]
    return [int(p >= 0.5) for p in probs]


def compute_cams(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    categories: Sequence[int],
    layer: str | nn.Module = "layer4",
) -> np.ndarray:
    """Maps (N, H, W) in [0, 1] for a batch of network inputs ``x`` (N, 3, H, W).

    Every image gets ``BinaryClassifierOutputTarget(category)``: on a one-logit model ``targets=None``
    would silently mean class 0, so a category is required for every image even for EigenCAM.
    ``layer`` is a ResNet stage name (its last block is used) or a module.

    Safe inside Lightning: gradients are enabled even under ``no_grad``/``inference_mode``; the input is
    cloned (and requires grad, so frozen layers still get activation gradients); afterwards the model's
    train/eval mode and its parameter gradients are as they were, and the hooks are released.
    """
    check_methods(method)
    categories = [int(c) for c in categories]
    if len(categories) != len(x) or any(c not in (0, 1) for c in categories):
        raise ValueError(f"compute_cams needs one category (0 or 1) per image: got {categories} for {len(x)} images.")
    layer = target_layer(model, layer) if isinstance(layer, str) else layer
    cls, _ = METHODS[method]
    saved_grads = [(p, p.grad) for p in model.parameters()]
    device = next(model.parameters()).device
    cam = None
    try:
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            inp = x.detach().clone().to(device).requires_grad_(True)
            cam = cls(model=model, target_layers=[layer])  # sets eval mode
            # Not `with cam:` - its __exit__ swallows IndexError; release explicitly instead.
            maps = cam(input_tensor=inp, targets=[BinaryClassifierOutputTarget(c) for c in categories])
    finally:
        if cam is not None:
            cam.activations_and_grads.release()
            cam.outputs = None
        for p, g in saved_grads:
            p.grad = g
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def target_text(method: str, category: int, target: str) -> str:
    """Says in a caption which category a map was computed for."""
    if not METHODS[method][1]:
        return "no target (EigenCAM)"
    return f"target {CLASS_NAMES[category]} ({'true label' if target == 'label' else 'prediction'})"


def overlay(grey: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """RGB uint8 (H, W, 3): the jet-coloured map blended with the de-normalised grey image."""
    grey = np.clip(np.asarray(grey, dtype=np.float32), 0, 1)
    return show_cam_on_image(np.repeat(grey[..., None], 3, axis=2), np.clip(cam, 0, 1), use_rgb=True, image_weight=image_weight)


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    """The plain grey image as RGB uint8, for the input column."""
    return np.repeat((np.clip(grey, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def caption(label: int, prob: float) -> str:
    return f"{CLASS_NAMES[int(label)]}, P(COVID)={prob:.2f}"


def panel_grid(panels: list[list[tuple[np.ndarray, str]]], column_titles: Sequence[str] | None = None, title: str | None = None,
               min_panel: int = 160, font_size: int = 11) -> np.ndarray:
    """A captioned grid as one RGB uint8 image: ``panels[row][col] = (RGB uint8 image, caption)``.

    Drawn with PIL (fast enough to run every validation epoch). Small images are enlarged to
    ``min_panel`` pixels (nearest neighbour, so the map's real resolution stays visible).
    """
    font = ImageFont.load_default(size=font_size)
    line = font_size + 3
    rows, cols = len(panels), max(len(r) for r in panels)
    side = max(min_panel, max(img.shape[0] for r in panels for img, _ in r))
    cap_h = line * max(t.count("\n") + 1 for r in panels for _, t in r) + 4
    head_h = line * max((t.count("\n") + 1 for t in column_titles), default=0) + 4 if column_titles else 0
    title_h = line * (title.count("\n") + 1) + 6 if title else 0
    pad = 4
    width = cols * (side + pad) + pad
    height = title_h + head_h + rows * (side + cap_h + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.multiline_text((pad, 3), title, fill="black", font=font, spacing=3)
    for c, text in enumerate(column_titles or []):
        draw.multiline_text((pad + c * (side + pad), title_h), text, fill="black", font=font, spacing=3)
    for r, row in enumerate(panels):
        top = title_h + head_h + r * (side + cap_h + pad)
        for c, (img, text) in enumerate(row):
            left = pad + c * (side + pad)
            draw.multiline_text((left, top), text, fill="black", font=font, spacing=3)
            tile = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (left, top + cap_h))
    return np.asarray(canvas)
