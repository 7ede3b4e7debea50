"""Pictures of depth maps (colour bar in metres) and class maps (legend of class names)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from diff2in1.viz import add_colorbar, colormap, default_font, nice_ticks


def depth_range(depth: np.ndarray) -> float:
    """A round upper end for the colour scale: the smallest tick step multiple >= the largest depth."""
    d = np.asarray(depth, np.float64)
    valid = d[np.isfinite(d) & (d > 0)]
    top = float(valid.max()) if valid.size else 1.0
    ticks = nice_ticks(top * 1.0001, degrees=False)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else top
    return float(np.ceil(top / step - 1e-9) * step) if step > 0 else top


def depth_to_rgb(depth: np.ndarray, vmax: float | None = None, vmin: float = 0.0) -> np.ndarray:
    """Depth in metres (H, W) -> uint8 RGB on the package's colour ramp (near = dark blue, far =
    red); pixels without depth (0, negative, non-finite) black."""
    d = np.asarray(depth, np.float32)
    vmax = depth_range(d) if vmax is None else float(vmax)
    rgb = colormap(np.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0), vmax, vmin)
    rgb[~(np.isfinite(d) & (d > 0))] = 0
    return rgb


def depth_picture(depth: np.ndarray, vmax: float | None = None, vmin: float = 0.0) -> Image.Image:
    """The coloured depth map with a colour bar labelled in metres on its right."""
    vmax = depth_range(depth) if vmax is None else float(vmax)
    return add_colorbar(depth_to_rgb(depth, vmax, vmin), vmax, vmin, unit=" m")


def classes_to_rgb(classes: np.ndarray, colors) -> np.ndarray:
    """Class ids (H, W) -> uint8 RGB with each class's colour (`colors`: a list of RGB triples, or a
    ClassList); ids without a colour (255 = ignore) black."""
    palette = colors.palette() if hasattr(colors, "palette") else None
    if palette is None:
        palette = np.zeros((256, 3), np.uint8)
        palette[: len(colors)] = np.asarray(colors, np.uint8)
    return palette[np.asarray(classes).astype(np.int64).clip(0, 255)]


def segmentation_picture(classes: np.ndarray, class_list, all_classes: bool = False) -> Image.Image:
    """The colour class map with a legend on its right: a swatch and the name of every class that
    occurs in the map (`all_classes`: every class of the list), in id order."""
    c = np.asarray(classes).astype(np.int64)
    rgb = classes_to_rgb(c, class_list)
    h, w = rgb.shape[:2]
    n = len(class_list.names)
    ids = list(range(n)) if all_classes else [i for i in np.unique(c).tolist() if 0 <= i < n]
    font = default_font(max(11, min(h // 16, 16)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), class_list.names[i], font=font) for i in ids]
    text_h = max([b[3] - b[1] for b in boxes] + [10])
    text_w = max([b[2] - b[0] for b in boxes] + [0])
    row, gap = text_h + 6, 6
    legend_w = gap + text_h + gap + text_w + gap if ids else 0
    out = Image.new("RGB", (w + legend_w, max(h, gap + row * len(ids))), (255, 255, 255))
    out.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(out)
    for k, (i, b) in enumerate(zip(ids, boxes, strict=True)):
        y = gap + k * row
        x = w + gap
        swatch = [x, y, x + text_h - 1, y + text_h - 1]
        draw.rectangle(swatch, fill=tuple(class_list.colors[i]), outline=(0, 0, 0))
        draw.text((x + text_h + gap, y - b[1] + (text_h - (b[3] - b[1])) // 2), class_list.names[i],
                  fill=(0, 0, 0), font=font)  # fmt: skip
    return out


__all__ = ["classes_to_rgb", "depth_picture", "depth_range", "depth_to_rgb", "segmentation_picture"]
