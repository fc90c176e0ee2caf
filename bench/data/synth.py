"""Synthetic datasets in exactly the layout the real loader reads (numpy only).

Classes get a temperature (RGB: colour, depth: nearness), texture and shape of their own,
so the scenes look like the modality and a small model beats chance after brief training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data.lookup import get_dataset_info
from bench.data.spec import DatasetError, DatasetInfo, Layout
from bench.data.synth_scene import Scene, SceneComposer, name_hash, role_of

# Far beyond any published dataset; a typo such as --size 100000 would ask for GBs per image.
MAX_SIDE = 4096
# Temperature (0 cold .. 1 hot, white-hot) of each role.
IR_TEMPERATURE = {
    "sky": 0.10, "fill": 0.40, "ground": 0.46, "strip": 0.57, "building": 0.50,
    "tree": 0.30, "water": 0.21, "person": 0.86, "vehicle": 0.67, "pole": 0.61,
    "small": 0.75, "ceiling": 0.53,
}  # fmt: skip
# How much surface texture a role shows (foliage most, sky least).
TEXTURE = {
    "sky": 0.004, "fill": 0.05, "ground": 0.02, "strip": 0.01, "building": 0.025,
    "tree": 0.07, "water": 0.01, "person": 0.015, "vehicle": 0.02, "pole": 0.01,
    "small": 0.01, "ceiling": 0.01,
}  # fmt: skip
RGB_COLOUR = {
    "sky": (130, 175, 225), "fill": (120, 115, 105), "ground": (105, 105, 110),
    "strip": (190, 190, 180), "building": (150, 120, 100), "tree": (55, 115, 50),
    "water": (40, 80, 140), "person": (200, 150, 125), "ceiling": (215, 215, 210),
}  # fmt: skip
# Nearness for depth maps (bright = near); the ground's ramp comes from the shading map.
NEARNESS = {
    "sky": 0.03, "fill": 0.25, "ground": 0.55, "strip": 0.6, "building": 0.3,
    "tree": 0.35, "water": 0.5, "ceiling": 0.45,
}  # fmt: skip


@dataclass
class Appearance:
    """Per-class rendering parameters for one dataset."""

    temperature: np.ndarray  # (C,)
    texture: np.ndarray  # (C,)
    colour: np.ndarray  # (C, 3) in 0-255
    nearness: np.ndarray  # (C,)

    @classmethod
    def for_classes(cls, classes: tuple[str, ...]) -> Appearance:
        temp, tex, col, near = [], [], [], []
        for name in classes:
            role, u = role_of(name), name_hash(name)
            # Known roles keep their temperature, nudged per class so road != sidewalk.
            temp.append(IR_TEMPERATURE[role] + (u - 0.5) * 0.16 if role in IR_TEMPERATURE
                        else 0.2 + 0.7 * u)  # fmt: skip
            tex.append(TEXTURE.get(role, 0.01 + 0.05 * name_hash(name + "#tex")))
            if role in RGB_COLOUR:
                base = np.array(RGB_COLOUR[role], np.float32) + (u - 0.5) * 40
            else:
                base = _hue_colour(u, 0.45 + 0.4 * name_hash(name + "#sat"))
            col.append(base)
            near.append(NEARNESS.get(role, 0.45 + 0.45 * u))
        return cls(
            np.array(temp, np.float32),
            np.array(tex, np.float32),
            np.clip(np.array(col, np.float32), 0, 255),
            np.array(near, np.float32),
        )


def _hue_colour(hue: float, sat: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    rgb = 1 - sat * np.clip(np.minimum(k, 4 - k), 0, 1)
    return (rgb * 200 + 30).astype(np.float32)


# ---------------------------------------------------------------------- fields and filters
def _interp_matrix(n: int, cells: int) -> np.ndarray:
    t = np.linspace(0, cells, n, dtype=np.float32)
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    frac = t - i0
    m = np.zeros((n, cells + 1), np.float32)
    m[np.arange(n), i0] = 1 - frac
    m[np.arange(n), i0 + 1] = frac
    return m


def smooth_field(h: int, w: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise, smooth over ``1/cells`` of the image (bilinear lattice)."""
    cy, cx = max(1, cells), max(1, round(cells * w / h))
    g = rng.standard_normal((cy + 1, cx + 1)).astype(np.float32)
    return _interp_matrix(h, cy) @ g @ _interp_matrix(w, cx).T


def box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Separable (2r+1)^2 mean filter with edge padding, via cumulative sums."""
    if r <= 0:
        return x
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float32)
        n = x.shape[axis]
        hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        x = (hi - lo) / (2 * r + 1)
    return x


def _vignette(h: int, w: int) -> np.ndarray:
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    return yy * yy + xx * xx  # 0 at the centre, 2 in the corners


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- renderers
def render_infrared(s: Scene, app: Appearance, rng: np.random.Generator) -> np.ndarray:
    """A white-hot thermal frame (uint8, H x W): smooth, low texture, camera artefacts."""
    h, w = s.label.shape
    lab = s.label
    t = app.temperature[lab] + s.shade
    t += app.texture[lab] * smooth_field(h, w, max(4, h // 10), rng)
    t += 0.035 * smooth_field(h, w, 2, rng)  # slow ambient gradients
    t = box_blur(t, max(1, round(min(h, w) / 200)))  # thermal optics are soft
    t -= rng.uniform(0.03, 0.1) * _vignette(h, w)
    t = t * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05)  # automatic gain control
    t += rng.normal(0, 0.005, (1, w)).astype(np.float32)  # column fixed-pattern noise
    t += rng.normal(0, 0.012, (h, w)).astype(np.float32)
    return _to_uint8(t)


def render_rgb(s: Scene, app: Appearance, rng: np.random.Generator) -> np.ndarray:
    """An RGB frame (uint8, H x W x 3) of scene ``s``."""
    h, w = s.label.shape
    lab = s.label
    light = 1.0 + 2.0 * s.shade + 0.08 * smooth_field(h, w, 2, rng)
    tex = 255 * app.texture[lab] * smooth_field(h, w, max(4, h // 8), rng)
    img = app.colour[lab] * light[..., None] + tex[..., None]
    img = box_blur(img, 1 if min(h, w) >= 200 else 0)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def render_depth(s: Scene, app: Appearance, rng: np.random.Generator) -> np.ndarray:
    """A depth map (uint8, H x W; bright = near) of scene ``s``, with sensor holes."""
    h, w = s.label.shape
    d = app.nearness[s.label] + 2.5 * s.shade + 0.02 * smooth_field(h, w, 3, rng)
    d = box_blur(d, 1 if min(h, w) >= 200 else 0)
    d += rng.normal(0, 0.006, (h, w)).astype(np.float32)
    out = _to_uint8(d)
    for _ in range(int(rng.integers(0, 3))):  # missing returns, as structured light has
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        out[y : y + max(2, h // 20), x : x + max(2, w // 15)] = 0
    return out


# ---------------------------------------------------------------------- writing
def _voc_palette() -> list[int]:
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = _voc_palette()


@dataclass
class SynthResult:
    """Where a synthetic dataset went and how many samples each split got."""

    dataset: str
    root: Path
    layout: str
    counts: dict[str, int] = field(default_factory=dict)


class _Writer:
    def __init__(self, info: DatasetInfo, lay: Layout, root: Path) -> None:
        self.info, self.lay, self.root = info, lay, root
        self.composer = SceneComposer(info.classes)
        self.app = Appearance.for_classes(info.classes)

    def _dirs(self, split: str) -> tuple[Path, Path]:
        sub = self.lay.splits[split] if self.lay.by_dir else ""
        img_dir = self.root / self.lay.img_dir / sub
        ann_dir = self.root / self.lay.ann_dir / sub
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        return img_dir, ann_dir

    def image(self, s: Scene, rng: np.random.Generator) -> Image.Image:
        mode, modality = self.lay.image_mode, self.info.modality
        if mode == "thermal_of_rgbt":
            rgb = render_rgb(s, self.app, rng)
            thermal = render_infrared(s, self.app, rng)
            return Image.fromarray(np.dstack([rgb, thermal]))
        if modality == "rgb":
            return Image.fromarray(render_rgb(s, self.app, rng))
        if modality == "depth":
            return Image.fromarray(render_depth(s, self.app, rng))
        return Image.fromarray(render_infrared(s, self.app, rng))

    def label(self, s: Scene) -> Image.Image:
        if self.info.reduce_zero_label:  # stored 0 = unlabelled, class k stored as k + 1
            stored = (s.label + 1).astype(np.uint8)
            stored[s.ignore] = 0
        else:
            stored = s.label.astype(np.uint8)
            stored[s.ignore] = self.info.ignore_index
        img = Image.fromarray(stored)
        if self.lay.name == "voc":  # VOC-style releases store palette PNGs
            img.putpalette(_PALETTE)  # turns the L image into P, keeping the indices
        return img

    def write(self, split: str, split_no: int, n: int, size: tuple[int, int], seed: int):
        img_dir, ann_dir = self._dirs(split)
        names = []
        for i in range(n):
            rng = np.random.default_rng([seed, split_no, i])
            scene = self.composer.compose(size[0], size[1], rng)
            name = f"{split}_{i:05d}"
            img = self.image(scene, rng)
            jpeg = self.lay.img_suffix.endswith(".jpg")
            opts = {"quality": 92} if jpeg else {"compress_level": 1}
            img.save(img_dir / f"{name}{self.lay.img_suffix}", **opts)
            self.label(scene).save(ann_dir / f"{name}{self.lay.ann_suffix}", compress_level=1)
            names.append(name)
        return names

    def split_file(self, split: str, names: list[str]) -> None:
        lay = self.lay
        if lay.split_line == "first_path_stem":
            lines = [
                f"{lay.img_dir}/{n}{lay.img_suffix} {lay.ann_dir}/{n}{lay.ann_suffix}"
                for n in names
            ]
        else:
            lines = names
        (self.root / lay.splits[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")


def synthesize(
    like: str,
    root: str | Path,
    train: int = 16,
    test: int = 8,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    layout: str | None = None,
) -> SynthResult:
    """Write a synthetic copy of dataset ``like`` under ``root`` (which must be empty).

    ``size`` is the image height (width = 4/3 height, as 640 x 480 thermal cameras) or an
    explicit (height, width). The training split gets ``train`` images, every other split
    ``test``; MFNet's ``val_test`` is the union of its val and test lists.
    """
    info = get_dataset_info(like)
    lay = info.layout(layout) if layout else info.layouts[0]
    hw = (size, round(size * 4 / 3)) if isinstance(size, int) else tuple(size)
    if min(hw) < 16 or max(hw) > MAX_SIDE:
        raise DatasetError(
            f"synthetic images must be 16 to {MAX_SIDE} pixels a side, not {hw} (height, width)"
        )
    if train < 1 or test < 1:
        raise DatasetError("synthetic splits need at least one image each")
    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"folder {root} is not empty; synthetic data goes in a fresh folder")
    root.mkdir(parents=True, exist_ok=True)
    writer = _Writer(info, lay, root)
    result = SynthResult(info.name, root, lay.name)
    written: dict[str, list[str]] = {}
    for no, split in enumerate(s for s in lay.splits if s != "val_test"):
        n = train if split == info.train_split else test
        written[split] = writer.write(split, no, n, hw, seed)
    if "val_test" in lay.splits:
        written["val_test"] = written.get("val", []) + written.get("test", [])
    for split, names in written.items():
        if not lay.by_dir:
            writer.split_file(split, names)
        result.counts[split] = len(names)
    return result
