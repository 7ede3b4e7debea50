"""Pictures: normal maps, angular errors, uncertainty, labelled side-by-side grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# The default colour scale of uncertainty (expected angular error) pictures, in degrees: the same
# for every picture of a run, so pictures compare (`--uncertainty-max` sets another).
UNCERTAINTY_MAX_DEG = 45.0

# A perceptual-ish ramp (dark blue -> cyan -> yellow -> red), 5 anchors, linearly blended.
_RAMP = np.array(
    [[0.05, 0.03, 0.35], [0.0, 0.45, 0.85], [0.2, 0.85, 0.6], [0.98, 0.85, 0.1], [0.8, 0.05, 0.05]]
)


def colormap(values: np.ndarray, vmax: float, vmin: float = 0.0) -> np.ndarray:
    """Scalars (H, W) -> uint8 RGB (H, W, 3) on the ramp, clipped to [vmin, vmax]; NaN as vmin."""
    x = np.clip((np.asarray(values, np.float32) - vmin) / max(vmax - vmin, 1e-12), 0, 1) * (len(_RAMP) - 1)
    x = np.nan_to_num(x, nan=0.0)  # a NaN prediction is refused later in one line, not by a cast warning
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    w = (x - lo)[..., None]
    return ((_RAMP[lo] * (1 - w) + _RAMP[lo + 1] * w) * 255).round().astype(np.uint8)


def normal_to_rgb(normal: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Unit normals (H, W, 3) -> the usual colour coding (n + 1) / 2, invalid (or NaN) pixels black."""
    rgb = np.nan_to_num((np.asarray(normal, np.float32) + 1) * 127.5, nan=0.0)
    rgb = rgb.clip(0, 255).round().astype(np.uint8)
    if mask is not None:
        rgb[~np.asarray(mask, bool)] = 0
    return rgb


def normal_key(size: int = 112) -> Image.Image:
    """The colour key of normal maps: a disc whose pixel at (x, y) shows the colour of the unit normal
    (x, y, sqrt(1 - x^2 - y^2)), i.e. a hemisphere seen from inside, as the walls of a room, with the
    axes labelled (x right, y down, z into the picture: the dataset convention)."""
    font = default_font(max(10, size // 9))
    r = size // 2 - 2
    yy, xx = (np.mgrid[0 : 2 * r + 1, 0 : 2 * r + 1] - r) / r
    inside = xx**2 + yy**2 <= 1.0
    n = np.stack([xx, yy, np.sqrt(np.clip(1.0 - xx**2 - yy**2, 0, 1))], -1)
    disc = normal_to_rgb(n)
    disc[~inside] = 255
    line_h = max(10, size // 9) + 3
    pad_x, pad_top, pad_bottom = 30, 4, 3 * line_h + 6
    img = Image.new("RGB", (disc.shape[1] + 2 * pad_x, disc.shape[0] + pad_top + pad_bottom), "white")
    img.paste(Image.fromarray(disc), (pad_x, pad_top))
    draw = ImageDraw.Draw(img)
    cx, cy = pad_x + r, pad_top + r
    draw.line([(cx, cy), (cx + r - 6, cy)], fill=(0, 0, 0), width=1)
    draw.line([(cx, cy), (cx, cy + r - 6)], fill=(0, 0, 0), width=1)
    draw.text((cx + r + 4, cy - 7), "+x", fill=(0, 0, 0), font=font)
    below = pad_top + 2 * r + 3
    draw.text((cx - 8, below), "+y", fill=(0, 0, 0), font=font)
    draw.text((4, below + line_h), "normal colour key", fill=(0, 0, 0), font=font)
    draw.text((4, below + 2 * line_h), "+z: into the picture", fill=(0, 0, 0), font=font)
    return img


def with_normal_key(picture: Image.Image | np.ndarray) -> Image.Image:
    """A picture (e.g. a grid of normal maps) with the normal colour key at its top right."""
    pic = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, np.uint8))
    key = normal_key(max(80, min(160, pic.height // 3)))
    out = Image.new("RGB", (pic.width + key.width + 4, max(pic.height, key.height)), "white")
    out.paste(pic.convert("RGB"), (0, 0))
    out.paste(key, (pic.width + 4, 0))
    return out


def expected_angular_error(kappa: np.ndarray) -> np.ndarray:
    """Expected angle (radians) between prediction and truth under the head's angular vMF.

    The loss of docs/method.md section 4 is the negative log of p(theta) ~ exp(-kappa * theta)
    on the sphere; its mean angle (section 10) is pi e^{-k pi} / (1 + e^{-k pi}) + 2k / (k^2 + 1):
    pi/2 for k -> 0 and about 2/k for large k. This turns kappa into an uncertainty a person can
    read (degrees).
    """
    k = np.asarray(kappa, np.float64)
    e = np.exp(-np.minimum(k * math.pi, 700.0))
    return math.pi * e / (1 + e) + 2 * k / (k * k + 1)


def uncertainty_to_rgb(kappa: np.ndarray, vmax_deg: float = UNCERTAINTY_MAX_DEG) -> np.ndarray:
    """kappa (H, W) -> colour picture of the expected angular error (0 .. vmax_deg degrees)."""
    return colormap(np.degrees(expected_angular_error(kappa)), vmax_deg)


def error_to_rgb(err_deg: np.ndarray, mask: np.ndarray | None = None, vmax_deg: float = 45.0) -> np.ndarray:
    rgb = colormap(err_deg, vmax_deg)
    if mask is not None:
        rgb[~np.asarray(mask, bool)] = 0
    return rgb


def image_to_rgb(image: np.ndarray) -> np.ndarray:
    """Image (H, W, 3) in [-1, 1] (float) or uint8 -> uint8."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return ((image + 1) * 127.5).clip(0, 255).round().astype(np.uint8)


def grid(
    rows: list[list[np.ndarray]], labels: list[str] | None = None, cell: int | None = None
) -> Image.Image:
    """Tile uint8 RGB pictures into rows, with column labels on top; cells resized to `cell` high.

    Each column is as wide as its widest picture (e.g. a map with a colour bar beside plain maps).
    """
    h = cell or max(p.shape[0] for r in rows for p in r)
    tiles = [
        [Image.fromarray(p).resize((max(1, round(p.shape[1] * h / p.shape[0])), h)) for p in r] for r in rows
    ]
    ncol = max(len(r) for r in tiles)
    widths = [max(r[c].width for r in tiles if c < len(r)) for c in range(ncol)]
    pad, top = 4, 16 if labels else 0
    xs = [pad + sum(widths[:c]) + c * pad for c in range(ncol)]
    size = (sum(widths) + (ncol + 1) * pad, top + len(tiles) * (h + pad) + pad)
    out = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for c, name in enumerate((labels or [])[:ncol]):
        draw.text((xs[c] + 2, 2), name, fill=(0, 0, 0))
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            out.paste(t, (xs[c], top + pad + r * (h + pad)))
    return out


def save_png(image: Image.Image | np.ndarray, path: str | Path) -> Path:
    """Write a PNG atomically."""
    from .atomic import atomic_path

    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


_LINE_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def line_plot(
    series: dict[str, list[float]],
    title: str = "",
    size: tuple[int, int] = (640, 360),
    smooth: int = 1,
    offsets: dict[str, int] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    max_ticks: int = 8,
) -> Image.Image:
    """A plain line chart of named series against their index (e.g. loss per step); a series
    with an offset starts at that index (a stage that continues another).

    Both axes get tick marks at round values (`nice_ticks`; the y range is widened to whole
    ticks) and, when given, the labels `xlabel` / `ylabel`.
    """
    offsets = offsets or {}
    w, h = size
    font = default_font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(8, probe.textbbox((0, 0), "0.9g", font=font)[3])
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    data = {
        k: np.convolve(v, np.ones(smooth) / smooth, mode="valid")
        if smooth > 1 and len(v) > smooth
        else np.asarray(v, float)
        for k, v in series.items()
        if len(v)
    }
    if not data:
        return img
    lo = min(float(v.min()) for v in data.values())
    hi = max(float(v.max()) for v in data.values())
    hi = hi if hi > lo else lo + 1
    ys_t = nice_ticks(hi - lo, 0.0, max_ticks, degrees=False)
    step = ys_t[1] - ys_t[0] if len(ys_t) > 1 else hi - lo
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    y_ticks = [lo + i * step for i in range(round((hi - lo) / step) + 1)]
    digits = next((d for d in range(7) if abs(step * 10**d - round(step * 10**d)) < 1e-6), 6)
    y_labels = [f"{t:.{digits}f}" for t in y_ticks]
    n = max(len(series[k]) + offsets.get(k, 0) for k in data)
    # A moving average of `smooth` values is drawn at the middle of its window.
    shift = {k: (len(series[k]) - len(v)) / 2 for k, v in data.items()}
    x_ticks = nice_ticks(max(n - 1, 1), 0.0, max_ticks, degrees=False)
    label_w = max(probe.textbbox((0, 0), s, font=font)[2] for s in y_labels)
    left = 6 + (text_h + 6 if ylabel else 0) + label_w + 6
    right, top = 12, 8 + (text_h + 6 if title else 0)
    bottom = 6 + text_h + 6 + (text_h + 6 if xlabel else 0)
    x1, y1 = w - right, h - bottom  # plot area: (left, top) .. (x1, y1)

    def px(x: float) -> float:
        return left + x / max(n - 1, 1) * (x1 - left)

    def py(y: float) -> float:
        return top + (1 - (y - lo) / (hi - lo)) * (y1 - top)

    for t in y_ticks:  # light grid lines first, under the frame
        draw.line([(left + 1, py(t)), (x1 - 1, py(t))], fill=(235, 235, 235))
    draw.rectangle([left, top, x1, y1], outline=(0, 0, 0))
    for t, s in zip(y_ticks, y_labels, strict=True):
        y = py(t)
        draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
        tw = probe.textbbox((0, 0), s, font=font)[2]
        draw.text((left - 6 - tw, y - text_h / 2 - 1), s, fill=(0, 0, 0), font=font)
    for t in x_ticks:
        x = px(t)
        s = f"{t:g}"
        draw.line([(x, y1), (x, y1 + 4)], fill=(0, 0, 0))
        tw = probe.textbbox((0, 0), s, font=font)[2]
        draw.text((min(max(x - tw / 2, 0), w - tw - 1), y1 + 6), s, fill=(0, 0, 0), font=font)
    if title:
        draw.text((left, 6), title, fill=(0, 0, 0), font=font)
    if xlabel:
        tw = probe.textbbox((0, 0), xlabel, font=font)[2]
        draw.text(((left + x1 - tw) / 2, h - text_h - 6), xlabel, fill=(0, 0, 0), font=font)
    if ylabel:
        box = probe.textbbox((0, 0), ylabel, font=font)
        tag = Image.new("RGB", (box[2] + 2, text_h + 4), (255, 255, 255))
        ImageDraw.Draw(tag).text((1, 1), ylabel, fill=(0, 0, 0), font=font)
        tag = tag.rotate(90, expand=True)
        img.paste(tag, (4, max(0, round((top + y1 - tag.height) / 2))))
    for i, (name, v) in enumerate(data.items()):
        color = _LINE_COLORS[i % len(_LINE_COLORS)]
        xs = [px(x) for x in (offsets.get(name, 0) + shift[name] + np.arange(len(v))).tolist()]
        ys = [py(y) for y in v.tolist()]
        if len(xs) > 1:
            draw.line(list(zip(xs, ys, strict=True)), fill=color, width=2)
        else:
            draw.ellipse([xs[0] - 2, ys[0] - 2, xs[0] + 2, ys[0] + 2], fill=color)
        draw.line([(x1 - 170, top + 12 + 16 * i), (x1 - 152, top + 12 + 16 * i)], fill=color, width=3)
        draw.text((x1 - 146, top + 5 + 16 * i), name, fill=color, font=font)
    return img


def nice_ticks(vmax: float, vmin: float = 0.0, max_ticks: int = 7, degrees: bool = True) -> list[float]:
    """Round tick values from vmin to at most vmax (3..max_ticks of them when possible).

    Steps that end exactly on vmax are preferred (45 -> 0, 15, 30, 45; 90 -> 0, 15, ..., 90).
    `degrees=False` leaves out the angle-friendly steps 15, 30, 45, 90 (e.g. for step counts).
    """
    span = float(vmax) - float(vmin)
    if not span > 0:
        return [float(vmin)]
    steps = sorted(
        {m * 10.0**e for e in range(-6, 9) for m in (1, 2, 2.5, 5)}
        | ({15.0, 30.0, 45.0, 90.0} if degrees else set())
    )
    fits = [s for s in steps if span / s <= max_ticks - 1 + 1e-9]
    exact = [s for s in fits if abs(span / s - round(span / s)) < 1e-9 and span / s >= 2 - 1e-9]
    step = (exact or fits or [span])[0]
    n = int(math.floor(span / step + 1e-9))
    return [round(vmin + i * step, 10) for i in range(n + 1)]


def default_font(px: int):
    """PIL's default font at `px` pixels when FreeType is available, else the fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ValueError, OSError, ImportError):  # no FreeType: the bitmap font
        return ImageFont.load_default()


def add_colorbar(rgb: np.ndarray, vmax: float, vmin: float = 0.0, unit: str = "°") -> Image.Image:
    """uint8 picture (H, W, 3) coloured by `colormap(., vmax, vmin)` -> the picture with a
    vertical colour bar and tick labels (e.g. "0°", "15°") on its right, same height.

    The font scales with the height (at least 11 px), so labels stay readable from 128 px up.
    """
    rgb = np.asarray(rgb, np.uint8)
    h, w = rgb.shape[:2]
    from PIL import ImageFont

    font = default_font(max(11, h // 24))
    if not isinstance(font, ImageFont.FreeTypeFont) and unit == "°":
        unit = " deg"  # the bitmap fallback font has no degree sign
    ticks = nice_ticks(vmax, vmin, degrees=unit in ("°", " deg"))  # angle-friendly steps for angles only
    labels = [f"{t:g}{unit}" for t in ticks]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), s, font=font) for s in labels]
    text_w = max(b[2] - b[0] for b in boxes)
    text_h = max(b[3] - b[1] for b in boxes)
    gap, bar_w, tick = max(4, text_h // 2), max(10, text_h), max(3, text_h // 3)
    margin = min(text_h // 2 + 2, max(0, h // 2 - 1))  # room for the top and bottom labels
    y0, y1 = margin, max(margin + 1, h - 1 - margin)  # bar rows: y0 shows vmax, y1 shows vmin
    out = Image.new("RGB", (w + gap + bar_w + tick + gap + text_w + gap, h), (255, 255, 255))
    out.paste(Image.fromarray(rgb), (0, 0))
    vals = vmax - (np.arange(y0, y1 + 1) - y0) / max(y1 - y0, 1) * (vmax - vmin)  # (n,)
    bar = np.repeat(colormap(vals[:, None], vmax, vmin), bar_w, axis=1)  # (n, bar_w, 3)
    x0 = w + gap
    out.paste(Image.fromarray(bar), (x0, y0))
    draw = ImageDraw.Draw(out)
    draw.rectangle([x0, y0, x0 + bar_w - 1, y1], outline=(0, 0, 0))
    span = max(vmax - vmin, 1e-12)
    for t, s, b in zip(ticks, labels, boxes, strict=True):
        y = round(y1 - (t - vmin) / span * (y1 - y0))
        draw.line([(x0 + bar_w, y), (x0 + bar_w + tick - 1, y)], fill=(0, 0, 0))
        ty = min(max(y - (b[1] + b[3]) / 2, -b[1]), h - b[3])  # centred on the tick, kept inside
        draw.text((x0 + bar_w + tick + gap // 2, ty), s, fill=(0, 0, 0), font=font)
    return out


def reliability_plot(curves: dict[str, dict], size: tuple[int, int] = (420, 420)) -> Image.Image:
    """Reliability picture: for each named calibration result (`CalibrationAccumulator.compute()`),
    observed mean angular error against predicted expected error per bin (degrees, both axes
    labelled), with the diagonal of perfect calibration and the gap in the legend."""
    w, h = size
    left, right, top, bottom = 56, 16, 28, 48
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = default_font(12)
    pts = [(b["predicted"], b["observed"]) for c in curves.values() for b in c["bins"]]
    vmax = max([10.0] + [max(p, o) for p, o in pts])
    ticks = nice_ticks(vmax * 1.05)
    vmax = max(ticks[-1], vmax)

    def xy(p: float, o: float) -> tuple[float, float]:
        return left + p / vmax * (w - left - right), top + (1 - o / vmax) * (h - top - bottom)

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for t in ticks:
        x, y = xy(t, t)
        draw.line([(x, h - bottom), (x, h - bottom + 4)], fill=(0, 0, 0))
        draw.text((x - 8, h - bottom + 6), f"{t:g}", fill=(0, 0, 0), font=font)
        draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
        draw.text((6, y - 7), f"{t:g}", fill=(0, 0, 0), font=font)
    draw.line([xy(0, 0), xy(vmax, vmax)], fill=(160, 160, 160), width=1)
    draw.text((left + 40, h - 18), "predicted expected error (deg)", fill=(0, 0, 0), font=font)
    draw.text((4, 6), "observed mean error (deg)", fill=(0, 0, 0), font=font)
    for i, (name, c) in enumerate(curves.items()):
        color = _LINE_COLORS[i % len(_LINE_COLORS)]
        line = [xy(b["predicted"], b["observed"]) for b in c["bins"]]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        for x, y in line:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        draw.text((left + 8, top + 6 + 15 * i), f"{name} (gap {c['gap']:.1f} deg)", fill=color, font=font)
    return img
