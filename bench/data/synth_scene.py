"""Plausible scene layouts for synthetic data: a label map plus a per-pixel shading map.

Class names give roles (sky on top, ground below, buildings and trees on the horizon,
people and vehicles on the ground in perspective); unknown classes become blobs and boxes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

ROLES: dict[str, tuple[str, ...]] = {
    "sky": ("sky",),
    "fill": ("background", "unlabelled", "_background_"),
    "ground": (
        "road", "sidewalk", "path", "runway", "dirt_track", "earth", "land", "field", "sand",
        "grass", "floor", "floor_mat", "rug",
    ),
    "strip": ("curve", "bump", "car_stop", "guardrail", "fence", "railing", "bannister", "step"),
    "building": (
        "building", "house", "skyscraper", "wall", "tower", "hovel", "booth", "door",
        "window", "windowpane",
    ),
    "tree": ("tree", "plant", "palm", "flower"),
    "water": ("water", "river", "sea", "lake", "swimming_pool", "waterfall"),
    "person": ("person", "rider", "animal"),
    "vehicle": (
        "car", "truck", "bus", "van", "bike", "bicycle", "minibike", "boat", "ship",
        "airplane",
    ),
    "pole": ("pole", "streetlight", "lamp", "column", "traffic_light", "signboard"),
    "small": (
        "color_cone", "traffic_cone", "trash_can", "ashcan", "bottle", "vase", "pot",
        "basket", "barrel", "bag",
    ),
    "ceiling": ("ceiling",),
}  # fmt: skip
_ROLE_OF = {name: role for role, names in ROLES.items() for name in names}
OBJECT_ROLES = ("person", "vehicle", "pole", "small", "thing")


def role_of(name: str) -> str:
    """The scene role of a class name; 'thing' when no keyword matches."""
    return _ROLE_OF.get(name.lower(), "thing")


def name_hash(name: str) -> float:
    """A stable number in [0, 1) per class name (CRC32, not Python's salted hash)."""
    return zlib.crc32(name.encode()) / 2**32


@dataclass
class Scene:
    """Class id per pixel (-1 = nothing painted), shading offsets, and an ignore mask."""

    label: np.ndarray
    shade: np.ndarray
    ignore: np.ndarray


class SceneComposer:
    """Draws scenes for one class list; roles are worked out once."""

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes
        self.by_role: dict[str, list[int]] = {}
        for i, name in enumerate(classes):
            self.by_role.setdefault(role_of(name), []).append(i)
        self.indoor = "sky" not in self.by_role and "ceiling" in self.by_role
        self.objects = [i for r in OBJECT_ROLES for i in self.by_role.get(r, [])]
        self.objects += self.by_role.get("tree", []) if self.indoor else []

    def _pick(self, role: str, rng: np.random.Generator) -> int | None:
        ids = self.by_role.get(role)
        return int(rng.choice(ids)) if ids else None

    # ------------------------------------------------------------------ painting
    def _paint(self, s: Scene, cls: int, mask: np.ndarray, sl: tuple, shade: float | np.ndarray):
        sub_l, sub_s = s.label[sl], s.shade[sl]
        sub_l[mask] = cls
        sub_s[mask] = shade if np.isscalar(shade) else shade[mask]

    def _rect(self, s: Scene, cls: int, y0: float, y1: float, x0: float, x1: float, shade=0.0):
        h, w = s.label.shape
        sl = (slice(max(int(y0), 0), min(int(y1), h)), slice(max(int(x0), 0), min(int(x1), w)))
        sub = s.label[sl]
        if sub.size:
            self._paint(s, cls, np.ones(sub.shape, bool), sl, shade)

    def _ellipse(self, s, cls, cy, cx, ry, rx, shade=0.0, rng=None, wobble=0.0):
        h, w = s.label.shape
        y0, y1 = max(int(cy - ry) - 1, 0), min(int(cy + ry) + 2, h)
        x0, x1 = max(int(cx - rx) - 1, 0), min(int(cx + rx) + 2, w)
        if y0 >= y1 or x0 >= x1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = (yy - cy) / max(ry, 0.5), (xx - cx) / max(rx, 0.5)
        r = dy * dy + dx * dx
        if wobble and rng is not None:  # ragged outline (tree crowns, blobs)
            ang = np.arctan2(dy, dx)
            k, ph = rng.integers(3, 7), rng.uniform(0, 2 * np.pi)
            r = r / (1 + wobble * np.sin(k * ang + ph)) ** 2
        self._paint(s, cls, r <= 1, (slice(y0, y1), slice(x0, x1)), shade)

    # ------------------------------------------------------------------ scene parts
    def _outdoor(self, s: Scene, horizon: int, rng: np.random.Generator) -> None:
        h, w = s.label.shape
        sky = self._pick("sky", rng)
        ramp = np.linspace(-0.06, 0.04, horizon, dtype=np.float32)[:, None]
        if sky is not None:
            self._rect(s, sky, 0, horizon, 0, w, np.broadcast_to(ramp, (horizon, w)))
        else:  # no sky class: the sky is background, but it still looks cold
            s.shade[:horizon] += ramp - 0.25
        ground = self._pick("ground", rng)
        ramp = np.linspace(-0.03, 0.05, h - horizon, dtype=np.float32)[:, None]
        if ground is not None:
            self._rect(s, ground, horizon, h, 0, w, np.broadcast_to(ramp, (h - horizon, w)))
            side = self._pick("ground", rng)
            if side is not None and side != ground and rng.random() < 0.6:
                x0 = rng.uniform(0.55, 0.8) * w
                self._rect(s, side, horizon + 0.1 * (h - horizon), h, x0, w, 0.02)
        else:  # background road surface: warmer than the background sky, warming nearby
            s.shade[horizon:] += ramp + 0.05
        for cls in self.by_role.get("water", [])[:1]:
            if rng.random() < 0.3:
                y0 = horizon + rng.uniform(0.0, 0.3) * (h - horizon)
                self._rect(s, cls, y0, y0 + rng.uniform(0.1, 0.25) * h, 0, w, -0.02)
        fill = self._pick("fill", rng)
        for _ in range(int(rng.integers(0, 4))):
            # Without a building class, buildings are background that still shows its shape.
            cls = self._pick("building", rng)
            cls, lift = (fill, 0.1) if cls is None else (cls, 0.0)
            if cls is None:
                break
            bw, bh = rng.uniform(0.12, 0.35) * w, rng.uniform(0.15, 0.45) * h
            x0 = rng.uniform(-0.1, 0.95) * w
            base = horizon + rng.uniform(0.0, 0.08) * h
            self._rect(s, cls, base - bh, base, x0, x0 + bw, lift)
            self._windows(s, base - bh, base, x0, x0 + bw, rng)
        for _ in range(int(rng.integers(0, 4))):
            cls = self._pick("tree", rng)
            cls, lift = (fill, -0.1) if cls is None else (cls, 0.0)
            if cls is None:
                break
            cx, size = rng.uniform(0, w), rng.uniform(0.08, 0.2) * h
            base = horizon + rng.uniform(0.0, 0.1) * h
            self._rect(s, cls, base - size, base, cx - size * 0.08, cx + size * 0.08, lift + 0.03)
            self._ellipse(s, cls, base - 1.6 * size, cx, size, size * 0.8, lift - 0.02, rng, 0.15)
        for cls in self.by_role.get("strip", []):
            if rng.random() < 0.5:
                y0 = horizon + rng.uniform(0.15, 0.9) * (h - horizon)
                x0, x1 = sorted(rng.uniform(0, w, 2))
                self._rect(s, cls, y0, y0 + max(2.0, 0.03 * h), x0 - 0.2 * w, x1, 0.04)

    def _windows(self, s: Scene, y0, y1, x0, x1, rng: np.random.Generator) -> None:
        # Lit windows are warm and bright; they belong to the building, so only shade changes.
        h, w = s.shade.shape
        step = max(4, int(0.04 * h))
        for yy in range(int(y0) + step // 2, int(y1) - step, step):
            for xx in range(int(x0) + step // 2, int(x1) - step, step):
                if 0 <= yy < h - 2 and 0 <= xx < w - 2 and rng.random() < 0.5:
                    s.shade[yy : yy + step // 2, xx : xx + step // 2] += 0.08

    def _indoor(self, s: Scene, horizon: int, rng: np.random.Generator) -> None:
        h, w = s.label.shape
        wall = self._pick("building", rng)
        if wall is not None:
            self._rect(s, wall, 0, horizon, 0, w, 0.0)
        ceiling = self._pick("ceiling", rng)
        if ceiling is not None and rng.random() < 0.7:
            self._rect(s, ceiling, 0, rng.uniform(0.08, 0.2) * h, 0, w, 0.05)
        floor = self._pick("ground", rng)
        if floor is not None:
            ramp = np.linspace(-0.04, 0.06, h - horizon, dtype=np.float32)[:, None]
            self._rect(s, floor, horizon, h, 0, w, np.broadcast_to(ramp, (h - horizon, w)))

    def _object(self, s: Scene, cls: int, horizon: int, rng: np.random.Generator) -> None:
        h, w = s.label.shape
        role = role_of(self.classes[cls])
        feet = rng.uniform(horizon + 0.05 * (h - horizon), h * 1.02)
        near = 0.35 + 0.65 * (feet - horizon) / max(h - horizon, 1)  # perspective scale
        cx = rng.uniform(0.05, 0.95) * w
        if role == "person":
            ph = near * rng.uniform(0.25, 0.45) * h
            self._ellipse(s, cls, feet - 0.42 * ph, cx, 0.4 * ph, 0.13 * ph, 0.0)
            self._ellipse(s, cls, feet - 0.9 * ph, cx, 0.09 * ph, 0.08 * ph, 0.06)
        elif role == "vehicle":
            vw = near * rng.uniform(0.2, 0.38) * w
            vh = vw * rng.uniform(0.35, 0.55)
            self._rect(s, cls, feet - 0.7 * vh, feet - 0.12 * vh, cx - vw / 2, cx + vw / 2, 0.0)
            self._rect(s, cls, feet - vh, feet - 0.65 * vh, cx - vw / 3, cx + vw / 4, -0.04)
            for wx in (cx - vw / 3, cx + vw / 3):  # wheels and brakes run hot
                self._ellipse(s, cls, feet - 0.12 * vh, wx, 0.14 * vh, 0.1 * vw, 0.1)
            self._rect(s, cls, feet - 0.6 * vh, feet - 0.3 * vh, cx + vw / 4, cx + vw / 2, 0.15)
        elif role == "pole":
            ph = near * rng.uniform(0.45, 0.8) * h
            pw = max(1.5, 0.012 * w * near)
            self._rect(s, cls, feet - ph, feet, cx - pw, cx + pw, 0.0)
            if self.classes[cls] in ("lamp", "streetlight", "traffic_light"):
                self._ellipse(s, cls, feet - ph, cx, 2.5 * pw, 3 * pw, 0.25)
        elif role == "small":
            sh = near * rng.uniform(0.05, 0.1) * h
            self._triangle(s, cls, feet, cx, sh)
        else:
            ry = near * rng.uniform(0.05, 0.18) * h
            rx = ry * rng.uniform(0.6, 2.0)
            cy = feet - ry
            if rng.random() < 0.5:
                self._rect(s, cls, cy - ry, cy + ry, cx - rx, cx + rx, 0.0)
            else:
                self._ellipse(s, cls, cy, cx, ry, rx, 0.0, rng, 0.2)

    def _triangle(self, s: Scene, cls: int, base: float, cx: float, size: float) -> None:
        h, w = s.label.shape
        y0, y1 = max(int(base - size), 0), min(int(base) + 1, h)
        x0, x1 = max(int(cx - size / 2) - 1, 0), min(int(cx + size / 2) + 2, w)
        if y0 >= y1 or x0 >= x1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        half = (yy - (base - size)) / max(size, 1.0) * size / 2.6
        self._paint(s, cls, np.abs(xx - cx) <= half, (slice(y0, y1), slice(x0, x1)), 0.05)

    # ------------------------------------------------------------------ entry point
    def compose(self, h: int, w: int, rng: np.random.Generator, max_objects: int = 5) -> Scene:
        """A new scene of ``h x w`` pixels."""
        fill = self._pick("fill", rng)
        if fill is None:
            fill = self._pick("building", rng) if self.indoor else None
        s = Scene(
            np.full((h, w), -1 if fill is None else fill, np.int16),
            np.zeros((h, w), np.float32),
            np.zeros((h, w), bool),
        )
        horizon = int(rng.uniform(0.3, 0.55) * h)
        (self._indoor if self.indoor else self._outdoor)(s, horizon, rng)
        if self.objects:
            k = int(rng.integers(1, max_objects + 1))
            chosen = rng.choice(self.objects, size=min(k, len(self.objects)), replace=False)
            placed = [(int(c), rng.uniform()) for c in chosen for _ in range(rng.integers(1, 3))]
            # Far objects first so near ones occlude them.
            for cls, _ in sorted(placed, key=lambda t: t[1]):
                self._object(s, cls, horizon, rng)
        if rng.random() < 0.3:  # an unlabelled patch, as annotators leave them
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.03, 0.08) * h
            y0, x0 = int(max(cy - r, 0)), int(max(cx - r, 0))
            s.ignore[y0 : int(cy + r), x0 : int(cx + r)] = True
        if (s.label < 0).any():  # nothing painted there: use the most common painted class
            vals = s.label[s.label >= 0]
            s.label[s.label < 0] = np.bincount(vals).argmax() if vals.size else 0
        return s
