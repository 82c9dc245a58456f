"""The ImageNet backbone weights the paper-scale DeepLabV3 presets start from (timm's, downloaded from the Hub once),
and how to run without that download.

- :func:`build_deeplabv3`: the model for a config; with ``backbone_weights`` (a local file or folder) the backbone
  starts from that copy, checked to hold the backbone's tensors; a failed download is a :class:`BackboneDownloadError`
  whose message says how to run anyway (``--pretrained_backbone false``, ``--backbone_weights PATH``).
- :data:`PRETRAINED_BACKBONE_PRESETS`, :func:`preset_options`: which presets take those options.
- :func:`pretrained_backbone_license`: the licence timm declares for a preset's backbone weights (the run record).
"""

from __future__ import annotations

from pathlib import Path

from .deeplabv3 import DeepLabV3Config, DeepLabV3ForSemanticSegmentation, backbone_weights_file


class BackboneDownloadError(OSError):
    """A DeepLabV3 preset's ImageNet backbone could not be downloaded (offline); the message says how to run anyway."""


#: Where a local copy of a timm backbone's weights can be: a file, or a folder holding one of these (timm's Hub layout).
BACKBONE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")

#: Presets whose backbone starts from timm's ImageNet weights (a download), with that timm backbone.
PRETRAINED_BACKBONES = {
    "deeplabv3-resnet101": "resnet101",
    "deeplabv3-resnet50": "resnet50",
    "deeplabv3-resnet18": "resnet18",
    "deeplabv3-mobilenetv2": "mobilenetv2_100",
}
PRETRAINED_BACKBONE_PRESETS = tuple(PRETRAINED_BACKBONES)


def build_deeplabv3(config: DeepLabV3Config, backbone_weights: str | None = None) -> DeepLabV3ForSemanticSegmentation:
    """``DeepLabV3ForSemanticSegmentation(config)``. ``backbone_weights``: a local copy of the backbone's ImageNet
    weights (file or folder), used instead of the download (with ``use_pretrained_backbone`` true; the config
    records no path). A download that fails (offline, or the Hub unreachable) is a :class:`BackboneDownloadError`."""
    if backbone_weights is not None and config.use_pretrained_backbone:
        file = _backbone_weights_path(backbone_weights)
        with backbone_weights_file(file):
            model = DeepLabV3ForSemanticSegmentation(config)
        _check_backbone_weights(model, file, config.backbone)
        return model
    try:
        return DeepLabV3ForSemanticSegmentation(config)
    except OSError as error:  # huggingface_hub's LocalEntryNotFoundError & co: offline, or the Hub unreachable
        if not config.use_pretrained_backbone:
            raise
        raise BackboneDownloadError(_download_advice(config.backbone, error)) from None


def _backbone_weights_path(path: str) -> str:
    """The weights file of ``path`` (a file, or a folder with one of :data:`BACKBONE_WEIGHT_FILES`)."""
    location = Path(path).expanduser()
    if location.is_dir():
        for name in BACKBONE_WEIGHT_FILES:
            if (location / name).is_file():
                return str(location / name)
        raise FileNotFoundError(f"backbone weights {path}: the folder holds none of {', '.join(BACKBONE_WEIGHT_FILES)}")
    if not location.is_file():
        raise FileNotFoundError(f"backbone weights {path}: no such file or folder")
    return str(location)


def _check_backbone_weights(model: DeepLabV3ForSemanticSegmentation, file: str, backbone: str) -> None:
    """timm loads a local weights file leniently (names it does not find are skipped with a log line): refuse a file
    that does not hold the backbone's weights, instead of training from a silently random backbone."""
    import torch

    if file.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(file, framework="pt") as handle:
            names = set(handle.keys())
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
        names = {name.removeprefix("module.") for name in state}
    wanted = [name for name in model.backbone.state_dict() if not name.endswith("num_batches_tracked")]
    found = sum(name in names for name in wanted)
    if found < len(wanted):
        raise ValueError(
            f"backbone weights {file} do not fit the {backbone} backbone: {found} of its {len(wanted)} tensors are in "
            f"the file. Use timm's {backbone} weights (e.g. the model.safetensors of its Hub repository)."
        )


def _download_advice(backbone: str, error: BaseException) -> str:
    import timm

    try:
        hub_id = timm.models.get_pretrained_cfg(backbone).hf_hub_id
    except Exception:  # noqa: BLE001 (only for the message)
        hub_id = None
    source = f"{hub_id} on the Hugging Face Hub" if hub_id else "the Hugging Face Hub"
    preset = next((name for name, builder in PRETRAINED_BACKBONES.items() if builder == backbone), backbone)
    return (
        f"the preset {preset!r} starts from timm's ImageNet weights of {backbone} ({source}), which could not be "
        f"downloaded ({type(error).__name__}); run anyway with --pretrained_backbone false (a random-initialised "
        f"backbone) or a local copy of those weights (a .safetensors/.pth file, or a folder holding "
        f"model.safetensors or pytorch_model.bin) with --backbone_weights PATH (student) or "
        f"--teacher_backbone_weights PATH (teacher)."
    )


def pretrained_backbone_license(preset: str) -> str | None:
    """The license timm declares for the ImageNet weights a preset's backbone starts from (None if unknown)."""
    import timm

    try:
        return getattr(timm.models.get_pretrained_cfg(PRETRAINED_BACKBONES[preset]), "license", None)
    except Exception:  # noqa: BLE001 (metadata only)
        return None


def preset_options(name: str, *, pretrained_backbone: bool | None = None, backbone_weights: str | None = None) -> dict:
    """Keyword arguments for preset ``name`` from ``--pretrained_backbone`` / ``--backbone_weights`` (only the
    presets with an ImageNet backbone take them; the others ignore them)."""
    if name not in PRETRAINED_BACKBONES:
        return {}
    options: dict = {}
    if pretrained_backbone is not None:
        options["use_pretrained_backbone"] = bool(pretrained_backbone)
    if backbone_weights is not None:
        options["backbone_weights"] = backbone_weights
    return options


__all__ = [
    "BACKBONE_WEIGHT_FILES",
    "PRETRAINED_BACKBONES",
    "PRETRAINED_BACKBONE_PRESETS",
    "BackboneDownloadError",
    "build_deeplabv3",
    "preset_options",
    "pretrained_backbone_license",
]
