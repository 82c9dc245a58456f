"""The distillation settings: the method's knobs, in one dataclass.

:class:`DistillationSettings` is the single home of every distillation option: its fields (with their help text)
are also command-line flags, because :class:`~acamkd_hf.config.DistillationArguments` inherits them; the trainer
resolves the defaults that depend on the models once (:meth:`DistillationSettings.resolved`); the per-point losses
read what they need from the whole object (``from_settings``); the run record (``run_config.json``) and the model card
store :meth:`DistillationSettings.to_dict`. Adding an option touches this dataclass, the loss that reads it, and its
test.

Imports only the method's modules (no transformers), so ``acamkd_hf.losses`` can use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .alignment import ALIGNMENT_KINDS
from .choices import require_choice
from .functional import MASK_ACTIVATIONS, MASK_NORMALIZERS, STANDARDIZE_OVER
from .fusion import DEFAULT_MAX_KV_TOKENS, FUSION_MODES, kv_reduction_ratio
from .mask_objectives import IMITATION_FORMS, MASK_OBJECTIVES
from .masking import MASK_KINDS

#: ``--method`` values: the per-point losses of :data:`acamkd_hf.losses.DISTILLATION_LOSSES` plus ``none`` (the
#: student trained alone under the same recipe).
METHODS = ("acamkd", "mse", "mgd", "cwd", "pkd", "none")
#: Each method's published imitation weight, used when ``alpha`` is not given (MGD: alpha_mgd for detection; PKD:
#: mmrazor's loss_weight 6 per FPN level).
#: ACAM-KD's comes from its variant (:data:`ACAMKD_VARIANTS`).
DEFAULT_ALPHA = {"mse": 1.0, "cwd": 1.0, "mgd": 2e-5, "pkd": 6.0}
#: The paper's number of masks for detection (segmentation: the number of classes).
DETECTION_NUM_MASKS = 6

#: ``--acamkd_variant``: what the ACAM-KD settings left unset (``None``) become. ``paper`` is the spec's literal
#: reading (sum-M normaliser, sigmoid masks trained by the total loss, raw features, exact fusion, alpha = lambda =
#: 1). ``recommended`` is the project's default, chosen on the quality benchmark (docs/results.md, "What makes
#: ACAM-KD help" and "Masks that matter"): the paper's losses on per-channel standardised features (the imitation
#: no longer depends on the features' scale, so one weight serves logits, features and necks); the fusion's
#: keys/values reduced to at most DEFAULT_MAX_KV_TOKENS tokens (the attention's cost linear in the map size); masks
#: trained by the ``adversarial`` objective (the paper's imitation-trained masks shrink to nothing; budgeted masks
#: cannot); and per-image standardisation statistics (batch-independent: 1 x 8 accumulation equals 8 x 1,
#: 2 processes x 2 equal 1 x 4). A flag given explicitly always wins.
ACAMKD_VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {
        "alpha": 1.0,
        "lambda_div": 1.0,
        "mask_normalizer": "sum",
        "mask_activation": "sigmoid",
        "detach_masks_in_imitation": False,
        "imitation_standardize": False,
        "standardize_over": "batch",
        "fusion_kv_reduction": "1",
        "mask_objective": "imitation",
        "imitation_form": "squared_error",
    },
}
ACAMKD_VARIANTS["recommended"] = {**ACAMKD_VARIANTS["paper"], "imitation_standardize": True, "fusion_kv_reduction": "auto",
                                  "mask_objective": "adversarial", "standardize_over": "image"}

def _variant_values(setting: str) -> str:
    """``"paper: 1; recommended: auto"``: what each ACAM-KD variant sets ``setting`` to (for help texts)."""
    return "; ".join(f"{variant}: {values[setting]}" for variant, values in ACAMKD_VARIANTS.items())


def check_mask_uniform_mix(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--mask_uniform_mix must be in [0, 1], got {value}")


def check_imitation_form(imitation_form: str | None, mask_objective: str | None) -> None:
    if imitation_form == "distribution" and mask_objective == "imitation":
        raise ValueError("--imitation_form distribution needs masks that the imitation does not train: use "
                         "--mask_objective adversarial, predictive, task or uniform")


def check_mgd_mask_ratio(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"--mgd_mask_ratio must be in [0, 1), got {value}")


#: Settings added after the first release, and the value that reproduces the code before each existed: what a run
#: record without the setting means (:meth:`DistillationSettings.from_record`, automatic resume).
BEFORE_THE_SETTING_EXISTED: dict[str, Any] = {
    "acamkd_variant": "paper",
    "mask_activation": "sigmoid",
    "imitation_standardize": False,
    "fusion_kv_reduction": "1",
    "fusion_max_kv_tokens": DEFAULT_MAX_KV_TOKENS,
    "standardize_over": "batch",
    "mask_objective": "imitation",
    "imitation_form": "squared_error",
}
#: The same settings for the other methods when not given (only ``imitation_standardize`` applies to them).
BASELINE_DEFAULTS: dict[str, Any] = {"lambda_div": 1.0, "mask_normalizer": "sum", "mask_activation": "sigmoid",
                                     "detach_masks_in_imitation": False, "imitation_standardize": False,
                                     "standardize_over": "batch", "fusion_kv_reduction": "1",
                                     "mask_objective": "imitation", "imitation_form": "squared_error"}


@dataclass
class DistillationSettings:
    """What is distilled where, and how. A setting left ``None`` is filled in when the run starts (:meth:`resolved`):
    from the method (:func:`method_defaults`: for ACAM-KD its variant's values, :data:`ACAMKD_VARIANTS`, by default
    ``recommended``; for a baseline :data:`BASELINE_DEFAULTS` and its published weight, :data:`DEFAULT_ALPHA`) or,
    for the points and ``M``, from the models.

    Args:
        method: ``acamkd`` or a baseline (``mse``, ``mgd``, ``cwd``, ``pkd``); ``none`` trains the student alone.
        distillation_points: where to distil (``logits``, ``stage1``..., ``neck1``...). ``None``: the paper's points
            (logits for segmentation, every neck level for detection).
        alpha: weight of the imitation terms (ACAM-KD: ``L_c + L_s``). ``None``: the method's own
            (:data:`DEFAULT_ALPHA`).
        acamkd_variant: what the ACAM-KD settings left ``None`` become (:data:`ACAMKD_VARIANTS`).
        lambda_div: weight of the Dice diversity term ``L_div`` (paper: 1).
        num_masks: ``M`` per point. ``None``: the number of classes for segmentation, 6 for detection.
        mask_kinds: spatial and/or channel masks (paper Table 8).
        fusion_mode: STCA-FF's query source (Tables 9 and 10).
        fusion_kv_reduction: ``R``, the per-side pooling of STCA-FF's key/value source, or ``"auto"``.
        fusion_max_kv_tokens: the key/value token budget of ``"auto"``.
        detach_student_in_fusion: detach the aligned student where it enters the fusion (documented default).
        alignment: the student adapter ``f_align``.
        detach_masks_in_imitation: keep the imitation terms' gradient out of the masks.
        mask_normalizer: denominator of ``L_c`` / ``L_s`` (``sum``: the paper's; ``sum_sq``: scale-invariant).
        mask_activation: ``sigmoid`` (the paper's) or ``softmax`` across the masks (a partition).
        imitation_standardize: per-channel standardisation of both features before the imitation (PKD's).
        standardize_over: the standardisation's statistics: over the ``batch`` (PKD's) or each ``image``.
        mask_objective: what trains ACAM-KD's selection units (:mod:`acamkd_hf.mask_objectives`).
        imitation_form: what the masks weight: the paper's squared error or CWD's spatial distributions.
        mask_entropy_weight: the adversarial objective's KL-to-uniform weight ``beta``.
        mask_uniform_mix: the learned masks' share ``gamma`` of the imitation weights (the rest uniform).
        mask_ramp_steps: optimizer updates over which the adversarial reversal ramps up.
        distillation_eps: normaliser guard of ``L_c`` and ``L_s``.
        cwd_tau: CWD's temperature.
        mgd_mask_ratio: MGD's fraction of masked positions.
        inherit_from_teacher: start the student's neck/heads from the teacher (FGD's trick).
    """

    method: str = field(
        default="acamkd",
        metadata={"help": "Distillation method; 'none' trains the student alone under the same recipe.", "choices": list(METHODS)},
    )
    distillation_points: list[str] | None = field(
        default=None,
        metadata={"help": "Where to distil: a family point (logits, stem, stage1.., neck1..; the README's table lists "
                          "each family's) or any submodule by its path, module:PATH (module:PATH[i]: item i of its "
                          "output). Default: the paper's points: logits for segmentation, every neck level (neck1, "
                          "neck2, ...) for detection. A wrong name lists the available ones."},
    )
    alpha: float | None = field(
        default=None,
        metadata={"help": "Weight of the imitation terms (ACAM-KD: L_c + L_s). Default: the method's own (ACAM-KD: its "
                          f"variant's; {', '.join(f'{name.upper()} {value:g}' for name, value in DEFAULT_ALPHA.items())})."},
    )
    acamkd_variant: str = field(
        default="recommended",
        metadata={"help": "ACAM-KD settings not given explicitly: 'recommended' (the project's default, chosen on the "
                          "quality benchmark, docs/results.md: features standardised per channel and image, reduced "
                          "fusion, masks trained by the adversarial objective; it ties the earlier default and its "
                          "masks add nothing over uniform weighting there) or 'paper' (the spec's literal losses: "
                          "sum-M normaliser, sigmoid masks trained by the total loss, raw features, alpha = lambda = 1).",
                  "choices": list(ACAMKD_VARIANTS)},
    )
    lambda_div: float | None = field(
        default=None,
        metadata={"help": f"Weight of the Dice diversity term L_div. Default: the variant's ({_variant_values('lambda_div')})."},
    )
    num_masks: int | None = field(
        default=None,
        metadata={"help": "Masks M per point. Default: the number of classes for segmentation (paper), "
                          f"{DETECTION_NUM_MASKS} for detection."},
    )
    mask_kinds: str = field(default="both", metadata={"help": "Paper Table 8 ablation.", "choices": list(MASK_KINDS)})
    fusion_mode: str = field(
        default="teacher_query",
        metadata={"help": "STCA-FF query source (Table 9: student_query; Table 10: teacher_only).", "choices": list(FUSION_MODES)},
    )
    fusion_kv_reduction: str | None = field(
        default=None,
        metadata={"help": "STCA-FF key/value sequence reduction (ours, not the paper's): average-pool the key/value "
                          "source by R per side (queries, fused feature and masks keep full size). 1 = the paper's "
                          "exact fusion; 'auto' = the smallest R leaving at most --fusion_max_kv_tokens tokens. "
                          f"Default: the variant's ({_variant_values('fusion_kv_reduction')})."},
    )
    fusion_max_kv_tokens: int = field(
        default=DEFAULT_MAX_KV_TOKENS,
        metadata={"help": "Token budget per image of --fusion_kv_reduction auto."},
    )
    detach_student_in_fusion: bool = field(
        default=True,
        metadata={"help": "Detach the aligned student where it enters the fusion (documented default; False = literal)."},
    )
    alignment: str = field(default="conv1x1", metadata={"help": "Student adapter f_align.", "choices": list(ALIGNMENT_KINDS)})
    detach_masks_in_imitation: bool | None = field(
        default=None,
        metadata={"help": "Keep the imitation terms' gradient out of the masks (they then learn from the Dice term "
                          f"only). Default: the variant's ({_variant_values('detach_masks_in_imitation')}); see "
                          "distill/<point>/*_mask_mean in the logs."},
    )
    mask_normalizer: str | None = field(
        default=None,
        metadata={"help": "Denominator of L_c / L_s: 'sum' (the paper's sum of the mask; the masks can shrink towards 0, "
                          "see docs/results.md) or 'sum_sq' (sum of the squared mask: scale-invariant). Default: the "
                          f"variant's ({_variant_values('mask_normalizer')}).", "choices": list(MASK_NORMALIZERS)},
    )
    mask_activation: str | None = field(
        default=None,
        metadata={"help": "Masks from the selection units' scores: 'sigmoid' (the paper's; the masks can all shrink) "
                          "or 'softmax' across the M masks (ours: they partition the map and cannot all vanish). "
                          f"Default: the variant's ({_variant_values('mask_activation')}).", "choices": list(MASK_ACTIVATIONS)},
    )
    imitation_standardize: bool | None = field(
        default=None,
        metadata={"help": "Standardise teacher and aligned student per channel (statistics: --standardize_over) before the "
                          "imitation (as PKD does; ours, not the paper's): one weight serves logits, features and "
                          f"necks. acamkd and mse. Default: the variant's ({_variant_values('imitation_standardize')}; other "
                          f"methods: {BASELINE_DEFAULTS['imitation_standardize']})."},
    )
    standardize_over: str | None = field(
        default=None,
        metadata={"help": "Statistics of --imitation_standardize: over the 'batch' and positions (PKD's; the update "
                          "then depends on the per-device batch) or over each 'image' (batch-independent). "
                          f"Default: the variant's ({_variant_values('standardize_over')}).", "choices": list(STANDARDIZE_OVER)},
    )
    mask_objective: str | None = field(
        default=None,
        metadata={"help": "What trains ACAM-KD's masks: 'imitation' (the paper's: the total loss, the imitation they "
                          "weight included; they shrink), 'adversarial' (budgeted masks maximise the imitation "
                          "error, ramped gradient reversal + KL to uniform), 'predictive' (they regress the "
                          "student's standardised error), 'task' (they keep the teacher's prediction from its masked "
                          "logits; logits point only) or 'uniform' (the control: constant masks, no fusion). "
                          f"Default: the variant's ({_variant_values('mask_objective')}).", "choices": list(MASK_OBJECTIVES)},
    )
    imitation_form: str | None = field(
        default=None,
        metadata={"help": "What the masks weight: 'squared_error' (the paper's) or 'distribution' (CWD's per-channel "
                          "spatial KL at --cwd_tau under the masks; not with --mask_objective imitation). Default: "
                          f"the variant's ({_variant_values('imitation_form')}).", "choices": list(IMITATION_FORMS)},
    )
    mask_entropy_weight: float = field(
        default=1.0, metadata={"help": "--mask_objective adversarial: weight of the masks' KL-to-uniform term."}
    )
    mask_uniform_mix: float = field(
        default=0.5,
        metadata={"help": "Learned (non-imitation) objectives: the masks' share of the imitation weights; the rest "
                          "is uniform weight (0 = uniform, 1 = the masks alone)."},
    )
    mask_ramp_steps: int = field(
        default=100, metadata={"help": "--mask_objective adversarial: optimizer updates over which the reversal ramps up."}
    )
    distillation_eps: float = field(default=1e-6, metadata={"help": "Normaliser guard of L_c and L_s."})
    cwd_tau: float = field(default=1.0, metadata={"help": "CWD temperature (mmrazor 1; segmentation forks 4)."})
    mgd_mask_ratio: float = field(default=0.65, metadata={"help": "MGD: fraction of positions masked."})
    inherit_from_teacher: bool = field(
        default=False,
        metadata={"help": "Start the student's non-backbone weights (neck, heads) from the teacher where names and "
                          "shapes match (FGD's trick; the paper uses it for detection). What was inherited is logged."},
    )

    def __post_init__(self) -> None:
        self.validate_settings()

    def validate_settings(self) -> None:
        """Raises ``ValueError`` for a value no loss could use (checked when the settings are made, not mid-run)."""
        if isinstance(self.distillation_points, str):  # one point given as a plain string from Python
            self.distillation_points = [self.distillation_points]
        for item in fields(DistillationSettings):
            value = getattr(self, item.name)
            if item.metadata.get("choices") is not None and value is not None:
                require_choice(item.name, value, item.metadata["choices"])
        if self.num_masks is not None and self.num_masks < 1:
            raise ValueError(f"--num_masks must be >= 1, got {self.num_masks}")
        if self.fusion_kv_reduction is not None:
            self.fusion_kv_reduction = str(self.fusion_kv_reduction)
        try:
            kv_reduction_ratio(self.fusion_kv_reduction or "1", 1, 1, self.fusion_max_kv_tokens)
        except ValueError as error:
            raise ValueError(f"--fusion_kv_reduction / --fusion_max_kv_tokens: {error}") from None
        check_mask_uniform_mix(self.mask_uniform_mix)
        check_imitation_form(self.imitation_form, self.mask_objective)
        check_mgd_mask_ratio(self.mgd_mask_ratio)

    @classmethod
    def from_object(cls, source: Any) -> DistillationSettings:
        """The settings held by ``source`` (e.g. a :class:`~acamkd_hf.config.DistillationArguments`), field by field."""
        return cls(**{item.name: getattr(source, item.name) for item in fields(cls)})

    @property
    def distilling(self) -> bool:
        return self.method != "none"

    def with_method_defaults(self) -> DistillationSettings:
        """A copy with each setting left ``None`` filled from the ACAM-KD variant (method ``acamkd``) or the method's
        own (``alpha``: :data:`DEFAULT_ALPHA`); the model-dependent ones (points, ``M``) stay as they are."""
        defaults = dict(ACAMKD_VARIANTS[self.acamkd_variant]) if self.method == "acamkd" else dict(BASELINE_DEFAULTS)
        defaults.setdefault("alpha", DEFAULT_ALPHA.get(self.method))
        return replace(self, **{name: value for name, value in defaults.items() if getattr(self, name) is None})

    def resolved(self, points: list[str], num_masks: int) -> DistillationSettings:
        """A copy with every default filled in: the points, ``M`` (``num_masks`` when none was given) and the
        method's defaults (:meth:`with_method_defaults`). The copy is what the losses are built from and what the
        run records."""
        return replace(
            self.with_method_defaults(),
            distillation_points=list(points),
            num_masks=self.num_masks if self.num_masks is not None else num_masks,
        )

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DistillationSettings:
        """The settings a run recorded (``training_args.json`` of a checkpoint, ``run_config.json``'s
        ``distillation``). A setting the record does not have did not exist when it was written: it takes the value
        that reproduces what the code did then (:data:`BEFORE_THE_SETTING_EXISTED`), never today's default."""
        values = {item.name: record[item.name] for item in fields(cls) if item.name in record}
        for name, value in BEFORE_THE_SETTING_EXISTED.items():
            values.setdefault(name, value)
        return cls(**values)

    def differences(self, other: DistillationSettings) -> dict[str, tuple[Any, Any]]:
        """``{setting: (this value, the other's)}`` for every setting on which the two would train differently once
        the method's defaults are filled in (the variant name itself is not compared: only what it fills in)."""
        mine, theirs = self.with_method_defaults().to_dict(), other.with_method_defaults().to_dict()
        # the token budget is read only by ACAM-KD's "auto" reduction: compared only when both sides read it
        if not all(values["method"] == "acamkd" and values["fusion_kv_reduction"] == "auto" for values in (mine, theirs)):
            mine["fusion_max_kv_tokens"] = theirs["fusion_max_kv_tokens"] = None
        return {name: (mine[name], theirs[name]) for name in mine if name != "acamkd_variant" and mine[name] != theirs[name]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def method_defaults(method: str) -> DistillationSettings:
    """What ``--method <method>`` uses for every setting no flag gives (the model-dependent points and ``M`` stay
    ``None``): the one source of the losses' constructor defaults, so that Python and the command line agree."""
    return DistillationSettings(method=method).with_method_defaults()


def default_num_masks(model: Any) -> int:
    """The paper's ``M`` for ``model`` (the student): 6 for detection, the number of classes for segmentation."""
    config = getattr(model, "config", None)
    if config is not None and "ForObjectDetection" in type(model).__name__:
        return DETECTION_NUM_MASKS
    return int(getattr(config, "num_labels", DETECTION_NUM_MASKS))
__all__ = ["DistillationSettings", "METHODS", "DEFAULT_ALPHA", "ACAMKD_VARIANTS", "DETECTION_NUM_MASKS", "default_num_masks",
           "method_defaults"]
