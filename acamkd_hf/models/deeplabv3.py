"""DeepLabV3 (ASPP head) on a timm backbone, as a Hugging Face `PreTrainedModel`.

transformers has no DeepLabV3-ResNet, and the ACAM-KD paper's Cityscapes teacher/students are DeepLabV3-R101,
DeepLabV3-R18 and DeepLabV3-MobileNetV2 at output stride 8. This file provides them.

This file is deliberately SELF-CONTAINED (imports only torch, timm and transformers, never `acamkd_hf`):
`save_pretrained` copies it next to the weights (see `register_for_auto_class` at the bottom), so a checkpoint loads
with `AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=...)` turned on by the user, on a
machine without this package. With the package imported, `acamkd_hf.models` registers the classes with the Auto* factories instead.

Shapes (B = batch, K = num_labels, H x W = input size, s = output stride, 8 by default):
    pixel_values (B, 3, H, W) -> backbone maps [(B, C_i, H/r_i, W/r_i)] (r_i = 4, 8, 8, 8 for out_indices 1..4 at s=8)
    -> ASPP on the last map -> logits (B, K, H/s, W/s)
"""

from __future__ import annotations

import contextlib
import contextvars

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import SemanticSegmenterOutput

# Set while `from_pretrained` builds the model: the checkpoint holds every weight, so the backbone must not fetch
# ImageNet weights from the Hub (that would be wasted work, and fails offline).
_LOADING_FROM_CHECKPOINT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "timm_deeplabv3_loading_from_checkpoint", default=False
)
# Set while a model is built from a local copy of the backbone's ImageNet weights (instead of the download). Not a
# config field: a local path has no place in a config.json that may be published.
_BACKBONE_WEIGHTS_FILE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "timm_deeplabv3_backbone_weights_file", default=None
)


@contextlib.contextmanager
def backbone_weights_file(path: str):
    """Within this block, a model built with ``use_pretrained_backbone=True`` reads its backbone's ImageNet weights
    from the local file ``path`` (timm's ``pretrained_cfg_overlay=dict(file=path)``) instead of downloading them."""
    token = _BACKBONE_WEIGHTS_FILE.set(str(path))
    try:
        yield
    finally:
        _BACKBONE_WEIGHTS_FILE.reset(token)


class DeepLabV3Config(PretrainedConfig):
    r"""Configuration of [`DeepLabV3ForSemanticSegmentation`].

    Args:
        backbone (`str`): timm model name, e.g. "resnet101", "resnet50", "resnet18", "mobilenetv2_100".
        backbone_kwargs (`dict`, *optional*): extra keyword arguments for `timm.create_model` (e.g. `channels`,
            `stem_type`, `stem_width` for ResNets; `depth_multiplier` for MobileNetV2), used to build tiny backbones.
        use_pretrained_backbone (`bool`): load timm's ImageNet weights when the model is first created. Ignored when
            the model is loaded with `from_pretrained` (the checkpoint already holds the backbone weights).
        out_indices (`tuple[int]`): timm feature indices to extract; 1..4 are the four stages (strides 4, 8, 16, 32
            before dilation). The ASPP head reads the last one, the auxiliary head the second to last.
        output_stride (`int`): 8 (the paper's setting) or 16; later stages are dilated instead of strided.
        aspp_channels (`int`): width of every ASPP branch and of the head.
        atrous_rates (`tuple[int, int, int]`): dilation of the three 3x3 ASPP branches; 12/24/36 suits stride 8
            (6/12/18 suits stride 16).
        head_dropout (`float`): dropout before each classifier.
        use_auxiliary_head (`bool`): add an FCN head on the stage-3 map, trained with weight `auxiliary_loss_weight`.
        auxiliary_channels (`int`): width of the auxiliary head.
        auxiliary_loss_weight (`float`): weight of the auxiliary cross-entropy (0.4 as in mmsegmentation).
        semantic_loss_ignore_index (`int`): label value ignored by the loss (255 = Cityscapes "ignore").
        num_channels (`int`): input image channels.
    """

    model_type = "timm_deeplabv3"

    backbone: str = "resnet101"
    backbone_kwargs: dict | None = None
    use_pretrained_backbone: bool = False
    out_indices: list[int] | tuple[int, ...] = (1, 2, 3, 4)
    output_stride: int = 8
    aspp_channels: int = 256
    atrous_rates: list[int] | tuple[int, ...] = (12, 24, 36)
    head_dropout: float = 0.1
    use_auxiliary_head: bool = True
    auxiliary_channels: int = 256
    auxiliary_loss_weight: float = 0.4
    semantic_loss_ignore_index: int = 255
    num_channels: int = 3


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    # ReLU is NOT in-place anywhere in this head: feature taps keep references to module outputs, and an in-place op
    # would silently change a stored tensor (and break autograd for the student).
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool -> 1x1 conv-BN-ReLU -> broadcast back to (B, C_out, h, w)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = _conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(self.pool(features))  # (B, C_out, 1, 1)
        return F.interpolate(pooled, size=features.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: (B, C_in, h, w) -> (B, C, h, w).

    Branches: 1x1 conv, three 3x3 atrous convs (rates `atrous_rates`), image pooling; each conv-BN-ReLU, concatenated
    and projected back to C by a 1x1 conv-BN-ReLU.
    """

    def __init__(self, in_channels: int, channels: int, atrous_rates: tuple[int, ...]):
        super().__init__()
        branches = [_conv_bn_relu(in_channels, channels, 1)]
        branches += [_conv_bn_relu(in_channels, channels, 3, dilation=int(rate)) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = _conv_bn_relu(len(branches) * channels, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(features) for branch in self.branches], dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP -> 3x3 conv-BN-ReLU -> dropout -> 1x1 classifier: (B, C_in, h, w) -> logits (B, K, h, w)."""

    def __init__(self, in_channels: int, channels: int, atrous_rates: tuple[int, ...], num_labels: int, dropout: float):
        super().__init__()
        self.aspp = ASPP(in_channels, channels, atrous_rates)
        self.bottleneck = _conv_bn_relu(channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_labels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.bottleneck(self.aspp(features))))


class FCNAuxiliaryHead(nn.Module):
    """Auxiliary FCN head on the stage-3 map: 3x3 conv-BN-ReLU -> dropout -> 1x1 classifier, (B, C_in, h, w) ->
    (B, K, h, w). Only used for the training loss."""

    def __init__(self, in_channels: int, channels: int, num_labels: int, dropout: float):
        super().__init__()
        self.conv = _conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_labels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(features)))


def segmentation_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored pixels, with logits bilinearly upsampled to the label size.

    logits (B, K, h, w), labels (B, H, W) int64 -> scalar. Equal to `F.cross_entropy(up, labels,
    ignore_index=...)` except that a batch whose pixels are all ignored gives 0 (with a graph) instead of NaN: one
    all-void crop must not poison a training run.
    """
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(upsampled, labels, ignore_index=ignore_index, reduction="sum")
    valid = (labels != ignore_index).sum().clamp_min(1)
    return total / valid


class DeepLabV3PreTrainedModel(PreTrainedModel):
    config_class = DeepLabV3Config
    config: DeepLabV3Config
    base_model_prefix = "deeplabv3"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Every weight comes from the checkpoint: never let the timm backbone download ImageNet weights here.
        token = _LOADING_FROM_CHECKPOINT.set(True)
        try:
            return super().from_pretrained(*args, **kwargs)
        finally:
            _LOADING_FROM_CHECKPOINT.reset(token)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # timm already initialised the backbone (ImageNet weights, or timm's own init): transformers' generic init
        # (normal(0, 0.02) for every conv) would overwrite it.
        if getattr(module, "_keep_timm_init", False):
            return
        if isinstance(module, nn.Conv2d):
            if module.bias is not None:
                # Only the classifiers have a bias (every other conv feeds a BatchNorm): small init as mmsegmentation.
                init.normal_(module.weight, mean=0.0, std=0.01)
            else:
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)


class DeepLabV3ForSemanticSegmentation(DeepLabV3PreTrainedModel):
    """DeepLabV3 on a timm `features_only` backbone.

    Submodules: `backbone` (timm feature extractor; its forward returns the list of maps for `out_indices`),
    `decode_head` (ASPP head on the last map), `auxiliary_head` (FCN on the second-to-last map; None when disabled).
    """

    def __init__(self, config: DeepLabV3Config):
        super().__init__(config)
        out_indices = tuple(int(i) for i in config.out_indices)
        if config.use_auxiliary_head and len(out_indices) < 2:
            raise ValueError("use_auxiliary_head=True needs at least two out_indices (stage 3 and stage 4 maps).")
        pretrained = bool(config.use_pretrained_backbone) and not _LOADING_FROM_CHECKPOINT.get()
        local_weights = _BACKBONE_WEIGHTS_FILE.get() if pretrained else None
        overlay = {"pretrained_cfg_overlay": {"file": local_weights}} if local_weights else {}
        self.backbone = timm.create_model(
            config.backbone,
            pretrained=pretrained,
            features_only=True,
            output_stride=config.output_stride,
            out_indices=out_indices,
            in_chans=config.num_channels,
            **overlay,
            **(config.backbone_kwargs or {}),
        )
        for module in self.backbone.modules():
            module._keep_timm_init = True  # noqa: SLF001 (our marker, read by _init_weights)
        channels = self.backbone.feature_info.channels()  # one entry per out_index
        self.decode_head = DeepLabV3Head(
            channels[-1], config.aspp_channels, tuple(config.atrous_rates), config.num_labels, config.head_dropout
        )
        self.auxiliary_head = (
            FCNAuxiliaryHead(channels[-2], config.auxiliary_channels, config.num_labels, config.head_dropout)
            if config.use_auxiliary_head
            else None
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        Args:
            pixel_values: (B, num_channels, H, W) normalised images.
            labels: (B, H', W') int64 class ids, `semantic_loss_ignore_index` for void pixels. Any size: the logits
                are bilinearly upsampled to it for the loss.
            output_hidden_states: also return the backbone maps, a tuple of (B, C_i, H/r_i, W/r_i), one per
                `out_indices` entry.

        Returns:
            `SemanticSegmenterOutput` with `logits` (B, num_labels, H/s, W/s) (s = output stride of the last map),
            `loss` (when labels are given) = CE(logits) + auxiliary_loss_weight * CE(auxiliary logits), and
            `hidden_states`.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)

        features = self.backbone(pixel_values)  # list of (B, C_i, h_i, w_i)
        logits = self.decode_head(features[-1])

        loss = None
        if labels is not None:
            ignore_index = self.config.semantic_loss_ignore_index
            loss = segmentation_cross_entropy(logits, labels, ignore_index)
            # The auxiliary head only exists for the training loss: skip it at inference.
            if self.auxiliary_head is not None:
                auxiliary_logits = self.auxiliary_head(features[-2])
                aux_loss = segmentation_cross_entropy(auxiliary_logits, labels, ignore_index)
                loss = loss + self.config.auxiliary_loss_weight * aux_loss

        hidden_states = tuple(features) if output_hidden_states else None
        if not return_dict:
            output = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states)


# `save_pretrained` then copies this file next to the weights and writes `auto_map` into config.json, so the folder
# loads without this package when the user turns trust_remote_code on.
DeepLabV3Config.register_for_auto_class()
DeepLabV3ForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
