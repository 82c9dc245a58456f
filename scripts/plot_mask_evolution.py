"""ACAM-KD's masks over training, as one figure (the paper's Fig. 1): rows = training steps, columns = the image, a
few spatial masks over it and the channel masks as bars, for one image and one distillation point; below, the
numbers: mask magnitudes and how much the masks change between renders.

Reads what ``acamkd_hf.visualization.MaskVisualizationCallback`` saved in a run's output folder
(``mask_visualizations/step-<N>/masks.safetensors``) and, when present, the run's ``trainer_state.json`` (its
``log_history`` holds ``distill/<point>/mask_change`` and the training-time ``spatial_mask_mean``)::

    python scripts/plot_mask_evolution.py outputs/acamkd-synthetic --point logits --num_steps 5 --scale log \
        --output docs/figures/mask_evolution.png

Needs matplotlib (``pip install -e ".[viz]"``), and neither torch nor transformers (it reads the files through
``acamkd_hf.mask_rendering``). Prints the path of the PNG it wrote.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import re
import sys

import numpy as np

from acamkd_hf.mask_rendering import MASK_VISUALIZATION_DIR, MASKS_FILE, load_mask_render, point_file_name


# ----------------------------------------------------------------------------------------------------- inputs
def find_renders(run_dir: str) -> dict[int, str]:
    """``{step: path of its masks.safetensors}`` under ``run_dir`` (a run's output folder or its
    ``mask_visualizations`` folder)."""
    base = run_dir
    if os.path.isdir(os.path.join(run_dir, MASK_VISUALIZATION_DIR)):
        base = os.path.join(run_dir, MASK_VISUALIZATION_DIR)
    renders = {}
    for path in glob.glob(os.path.join(base, "step-*", MASKS_FILE)):
        match = re.fullmatch(r"step-(\d+)", os.path.basename(os.path.dirname(path)))
        if match:
            renders[int(match.group(1))] = path
    return dict(sorted(renders.items()))


def find_trainer_state(run_dir: str) -> str | None:
    """``run_dir/trainer_state.json``, else the one of the latest ``checkpoint-*`` folder, else None."""
    path = os.path.join(run_dir, "trainer_state.json")
    if os.path.isfile(path):
        return path
    checkpoints = []
    for folder in glob.glob(os.path.join(run_dir, "checkpoint-*")):
        match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(folder))
        if match and os.path.isfile(os.path.join(folder, "trainer_state.json")):
            checkpoints.append((int(match.group(1)), os.path.join(folder, "trainer_state.json")))
    return max(checkpoints)[1] if checkpoints else None


def logged_series(log_history: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of every log entry holding ``key``."""
    pairs = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)


def choose_steps(available: list[int], num_steps: int, requested: list[int] | None) -> list[int]:
    """The requested steps (each must exist), or ``num_steps`` spread evenly from the first to the last render."""
    if requested:
        missing = [step for step in requested if step not in available]
        if missing:
            raise SystemExit(f"no render at step(s) {missing}; rendered steps: {available}")
        return requested
    count = min(num_steps, len(available))
    indices = np.unique(np.round(np.linspace(0, len(available) - 1, count)).astype(int))
    return [available[i] for i in indices]


# ----------------------------------------------------------------------------------------------------- figure
def plot(args: argparse.Namespace) -> str:
    """Writes the figure; returns its path."""
    renders = find_renders(args.run_dir)
    if not renders:
        raise SystemExit(
            f"no {MASK_VISUALIZATION_DIR}/step-*/{MASKS_FILE} under {args.run_dir}: was the run trained with "
            f"MaskVisualizationCallback?"
        )
    loaded = {step: load_mask_render(path)[1:] for step, path in renders.items()}
    first_masks, _ = next(iter(loaded.values()))
    point = args.point or next(iter(first_masks))
    if point not in first_masks:
        raise SystemExit(f"point {point!r} not in the saved masks; available: {', '.join(first_masks)}")
    steps = choose_steps(list(renders), args.num_steps, args.steps)

    masks_at = {step: loaded[step][0][point] for step in renders}
    images_at = {step: loaded[step][1] for step in renders}
    example = masks_at[steps[0]]
    num_masks = (example["spatial"] if "spatial" in example else example["channel"]).shape[1]
    shown = args.masks if args.masks else list(range(min(args.num_masks, num_masks)))
    if any(not 0 <= m < num_masks for m in shown):
        raise SystemExit(f"--masks must be in 0..{num_masks - 1}, got {shown}")
    image_index = args.image_index
    num_images = images_at[steps[0]].shape[0]
    if not 0 <= image_index < num_images:
        raise SystemExit(f"--image_index must be in 0..{num_images - 1}, got {image_index}")
    has_spatial, has_channel = "spatial" in example, "channel" in example

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    norm = None
    if args.scale == "absolute":
        vmin, vmax = 0.0, 1.0
    elif args.scale == "log":
        norm, vmin, vmax = LogNorm(vmin=args.log_floor, vmax=1.0, clip=True), args.log_floor, 1.0
    elif args.scale == "global" and has_spatial:
        vmin = 0.0
        vmax = max(float(masks_at[s]["spatial"][image_index, shown].max()) for s in steps) or 1.0
    else:
        vmin = vmax = None  # per mask

    state_path = args.trainer_state or find_trainer_state(args.run_dir)
    log_history = []
    if state_path and os.path.isfile(state_path):
        with open(state_path) as handle:
            log_history = json.load(handle).get("log_history", [])

    image = images_at[steps[0]][image_index]
    height, width = image.shape[:2]
    columns = 1 + (len(shown) if has_spatial else 0) + (1 if has_channel else 0)
    cell_w = 1.9
    cell_h = max(0.8, cell_w * height / width)
    figure = plt.figure(figsize=(cell_w * columns + 0.8, cell_h * len(steps) + 3.0), constrained_layout=True)
    grid = figure.add_gridspec(len(steps) + 1, columns, height_ratios=[cell_h] * len(steps) + [2.6])
    colours = plt.get_cmap("tab10")
    last_image = None
    for row, step in enumerate(steps):
        masks = masks_at[step]
        axis = figure.add_subplot(grid[row, 0])
        axis.imshow(images_at[step][image_index])
        axis.set_xticks([]), axis.set_yticks([])
        axis.set_ylabel(f"step {step}", fontsize=9)
        if row == 0:
            axis.set_title("image", fontsize=9)
        column = 1
        if has_spatial:
            for mask_index in shown:
                mask = masks["spatial"][image_index, mask_index]
                axis = figure.add_subplot(grid[row, column])
                axis.imshow(images_at[step][image_index])
                shown_values = np.maximum(mask, args.log_floor) if norm is not None else mask
                last_image = axis.imshow(
                    shown_values, cmap="viridis", alpha=0.65, interpolation="bilinear",
                    extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                    **({"norm": norm} if norm is not None else {"vmin": vmin, "vmax": vmax}),
                )
                axis.text(1, 1, f"max {mask.max():.2g}", fontsize=6, color="white", va="top",
                          bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
                axis.set_xticks([]), axis.set_yticks([])
                if row == 0:
                    axis.set_title(f"spatial mask {mask_index + 1}", fontsize=9, color=colours(mask_index % 10))
                column += 1
        if has_channel:
            axis = figure.add_subplot(grid[row, column])
            channel = masks["channel"][image_index]  # (M, C)
            num_channels = channel.shape[1]
            bar_width = 0.8 / len(shown)
            for k, mask_index in enumerate(shown):
                offsets = np.arange(num_channels) + (k - (len(shown) - 1) / 2) * bar_width
                if num_channels * len(shown) <= 160:
                    axis.bar(offsets, channel[mask_index], width=bar_width, color=colours(mask_index % 10))
                else:
                    axis.plot(np.arange(num_channels), channel[mask_index], color=colours(mask_index % 10), lw=0.8)
            if args.scale == "absolute":
                axis.set_ylim(0, 1)
            elif args.scale == "log":
                axis.set_yscale("log")
                axis.set_ylim(args.log_floor, 1)
            axis.tick_params(labelsize=6)
            if row == 0:
                axis.set_title("channel masks", fontsize=9)
            if row == len(steps) - 1:
                axis.set_xlabel("channel", fontsize=7)
    if last_image is not None and vmin is not None:
        figure.colorbar(last_image, ax=figure.axes[1 : 1 + len(shown)], location="top", shrink=0.5, aspect=40,
                        label=f"spatial mask value ({args.scale} scale)").ax.tick_params(labelsize=6)

    # Bottom row: magnitudes (left half) and change between renders (right half).
    half = max(1, columns // 2)
    magnitudes = figure.add_subplot(grid[len(steps), :half])
    all_steps = np.array(list(renders), dtype=float)
    for kind, style in (("spatial", "-o"), ("channel", "-s")):
        if kind in example:
            values = [float(masks_at[s][kind].mean()) for s in renders]
            magnitudes.plot(all_steps, values, style, ms=3, label=f"mean {kind} mask (fixed batch)")
    for kind in ("spatial", "channel"):
        xs, ys = logged_series(log_history, f"distill/{point}/{kind}_mask_mean")
        if len(xs):
            magnitudes.plot(xs, ys, lw=0.8, alpha=0.7, label=f"mean {kind} mask (training logs)")
    _log_axis(magnitudes, "mask value")
    change = figure.add_subplot(grid[len(steps), half:])
    plotted = False
    for key, style in (("mask_change", "-o"), ("spatial_mask_change", "--"), ("channel_mask_change", ":"),
                       ("spatial_mask_dice", "-."), ("channel_mask_dice", "-.")):
        xs, ys = logged_series(log_history, f"distill/{point}/{key}")
        if len(xs):
            change.plot(xs, ys, style, ms=3, label=key)
            plotted = True
    if not plotted:  # no trainer_state.json: the change computed from the saved arrays
        ordered = list(renders)
        for kind in ("spatial", "channel"):
            if kind in example and len(ordered) > 1:
                values = [float(np.abs(masks_at[b][kind].astype(np.float64) - masks_at[a][kind]).mean())
                          for a, b in itertools.pairwise(ordered)]
                change.plot(ordered[1:], values, "-o", ms=3, label=f"{kind}_mask_change (saved masks)")
    _log_axis(change, "change between renders / Dice")
    figure.suptitle(f"ACAM-KD masks over training: point {point!r}, image {image_index}", fontsize=10)

    output = args.output or os.path.join(args.run_dir, f"mask_evolution_{point_file_name(point)}.png")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    figure.savefig(output, dpi=args.dpi)
    plt.close(figure)
    return output


def _log_axis(axis, ylabel: str) -> None:
    axis.set_xlabel("training step", fontsize=8)
    axis.set_ylabel(ylabel, fontsize=8)
    lines = axis.get_lines()
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in lines]) if lines else np.array([])
    if values.size and values.min() > 0 and values.max() / values.min() > 20:
        axis.set_yscale("log")  # magnitudes and changes span decades when masks shrink
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3)
    if axis.get_lines():
        axis.legend(fontsize=6)


# ----------------------------------------------------------------------------------------------------- CLI
def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Assemble the masks saved by MaskVisualizationCallback into a 'masks over training' figure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", help="the run's output folder (or its mask_visualizations/ folder)")
    parser.add_argument("--point", default=None, help="distillation point (default: the first saved)")
    parser.add_argument("--image_index", type=int, default=0, help="which image of the fixed batch")
    parser.add_argument("--num_steps", type=int, default=5, help="rows: renders spread evenly from first to last")
    parser.add_argument("--steps", type=_int_list, default=None, help="explicit rows, e.g. 0,100,500 (overrides --num_steps)")
    parser.add_argument("--num_masks", type=int, default=4, help="spatial masks shown: the first N")
    parser.add_argument("--masks", type=_int_list, default=None, help="explicit mask indices (0-based), e.g. 0,3,5")
    parser.add_argument("--scale", choices=("absolute", "log", "global", "per_mask"), default="absolute",
                        help="colour scale of the spatial masks: 0..1, log10 from --log_floor to 1 (shows both the "
                             "pattern and the magnitude of shrinking masks), 0..max over the figure, or each tile's "
                             "own range")
    parser.add_argument("--log_floor", type=float, default=1e-6, help="lower end of --scale log")
    parser.add_argument("--trainer_state", default=None,
                        help="trainer_state.json for the curves (default: run_dir's, else its latest checkpoint's)")
    parser.add_argument("--output", default=None, help="PNG to write (default: run_dir/mask_evolution_<point>.png)")
    parser.add_argument("--dpi", type=int, default=150)
    args = parser.parse_args(argv)
    if args.num_steps < 1 or args.num_masks < 1:
        parser.error("--num_steps and --num_masks must be >= 1")
    if not 0 < args.log_floor < 1:
        parser.error("--log_floor must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> str:
    output = plot(parse_args(argv))
    print(output)
    return output


if __name__ == "__main__":
    main(sys.argv[1:])
