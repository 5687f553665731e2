"""Procedural street scenes: sample a scene's parameters, then render any frame of it at any size.

Geometry is a one-point perspective of a flat world seen from a camera at height 1 (world units)
looking down the street: a point at lateral position x, height z and distance d appears at
    X = vx + x * k,   Y = yh + (1 - z) * k,   k = (1 - yh) / d,
in "height units" (Y in [0, 1] top to bottom, X in [0, W/H]), where yh is the horizon row and vx
the vanishing point. Everything is drawn with the painter's algorithm (sky, ground, facades, then
objects far to near), and each shape paints its colour and its class with the same mask, so the
label map is exact. All drawing is numpy-vectorised over pixels; Python loops run only over the
few dozen shapes of a scene.

Video: the camera moves forward (`speed` world units per frame) and pans (`pan`), vehicles and
persons move with their own velocities; world-anchored textures (lane dashes, windows, tiles)
move with the world.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .classes import BUILDING, PERSON, POLE, ROAD, SIDEWALK, SKY, TERRAIN, VEGETATION, VEHICLE

_NEAREST = 0.35  # objects closer than this (world units) are behind the image plane: not drawn


@dataclass
class SceneObject:
    """A movable or static object: kind in {"vehicle", "person", "pole", "tree"}; D, x world position."""

    kind: str
    D: float  # distance along the street from the camera's start position
    x: float  # lateral position (negative: left of the road centre)
    vD: float = 0.0  # world units per frame
    vx: float = 0.0
    params: dict = field(default_factory=dict)


@dataclass
class Scene:
    """Everything needed to render any frame of one scene (sampled by `sample_scene`)."""

    yh: float  # horizon row (height units)
    vx: float  # vanishing point as a fraction of the width
    pan: float  # vanishing-point shift per frame (fraction of the width)
    speed: float  # camera forward motion per frame (world units)
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    cloudiness: float
    road_left: float  # road edges at x = -road_left and x = +road_right
    road_right: float
    sidewalk: tuple[float, float]  # widths (left, right)
    gap: tuple[float, float]  # terrain between sidewalk and facades (left, right)
    road_color: np.ndarray
    sidewalk_color: np.ndarray
    terrain_color: np.ndarray
    lane_lines: list[tuple[float, bool]]  # (x, dashed)
    dash_period: float
    tile: float
    buildings: list[list[tuple]]  # per side (left, right): (D0, D1, height, color, window spacing, floor height)
    skyline: list[tuple]  # (x0, x1, height, color) in fractions of the width / height units
    objects: list[SceneObject]


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _jitter_color(rng: np.random.Generator, base, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0.0, 1.0)


_FACADE_COLORS = [(0.72, 0.66, 0.56), (0.55, 0.32, 0.26), (0.62, 0.62, 0.64), (0.80, 0.76, 0.68),
                  (0.42, 0.44, 0.48), (0.70, 0.55, 0.40), (0.85, 0.83, 0.78)]
_VEHICLE_COLORS = [(0.75, 0.08, 0.08), (0.10, 0.20, 0.60), (0.90, 0.90, 0.92), (0.12, 0.12, 0.13),
                   (0.55, 0.57, 0.60), (0.85, 0.70, 0.10), (0.15, 0.45, 0.25), (0.95, 0.45, 0.10)]
_CLOTHES = [(0.15, 0.15, 0.35), (0.60, 0.10, 0.10), (0.10, 0.10, 0.10), (0.85, 0.85, 0.80),
            (0.20, 0.45, 0.20), (0.70, 0.55, 0.20), (0.45, 0.30, 0.55)]
_SKIN = [(0.95, 0.80, 0.65), (0.80, 0.60, 0.45), (0.55, 0.38, 0.25), (0.35, 0.24, 0.16)]
_SIGN_COLORS = [(0.85, 0.10, 0.10), (0.10, 0.30, 0.80), (0.95, 0.80, 0.10), (0.95, 0.95, 0.95)]


def sample_scene(rng: np.random.Generator, num_frames: int = 1) -> Scene:
    """Draw one scene's layout, colours and objects from `rng` (all randomness of the scene lives here).

    num_frames: how many frames will be rendered; objects are placed so they stay in front of the
    camera for the whole clip.
    """
    yh = _uniform(rng, 0.36, 0.52)
    dusk = rng.random() < 0.2
    sky_top = _jitter_color(rng, (0.55, 0.45, 0.60) if dusk else (0.25, 0.45, 0.85), 0.08)
    sky_horizon = _jitter_color(rng, (0.98, 0.70, 0.45) if dusk else (0.78, 0.87, 0.96), 0.05)
    road_left, road_right = _uniform(rng, 1.0, 2.2), _uniform(rng, 1.0, 2.2)
    sidewalk = (_uniform(rng, 0.4, 1.0), _uniform(rng, 0.4, 1.0))
    gap = [_uniform(rng, 0.0, 1.5) if rng.random() < 0.5 else 0.0 for _ in range(2)]
    gap[int(rng.integers(2))] = max(gap[0], gap[1], 0.4)  # at least one side shows terrain
    park_side = int(rng.integers(2)) if rng.random() < 0.25 else -1  # a side without buildings

    speed = _uniform(rng, 0.15, 0.45) if num_frames > 1 else 0.0
    pan = _uniform(rng, -0.01, 0.01) if num_frames > 1 else 0.0
    travel = speed * (num_frames - 1)

    # Lane lines: the centre line (dashed or solid) plus dashed separators of ~1.1-wide lanes.
    lane_lines = [(0.0, bool(rng.random() < 0.7))]
    lane_width = _uniform(rng, 1.0, 1.3)
    for side, width in ((-1, road_left), (1, road_right)):
        x = lane_width
        while x < width - 0.5:
            lane_lines.append((side * x, True))
            x += lane_width

    buildings = []
    for s in range(2):
        segments = []
        if s != park_side:
            D = travel + _uniform(rng, 0.2, 1.0)
            while D < 40.0:
                length = _uniform(rng, 1.0, 6.0)
                if rng.random() < 0.15:  # an alley: a gap between buildings
                    D += _uniform(rng, 0.5, 2.0)
                segments.append((D, D + length, _uniform(rng, 1.6, 7.0),
                                 _jitter_color(rng, _FACADE_COLORS[int(rng.integers(len(_FACADE_COLORS)))]),
                                 _uniform(rng, 0.5, 1.0), _uniform(rng, 0.7, 1.0)))
                D += length
        buildings.append(segments)

    skyline = []
    if rng.random() < 0.7:
        x = 0.0
        while x < 1.0:
            w = _uniform(rng, 0.03, 0.12)
            skyline.append((x, x + w, _uniform(rng, 0.01, 0.09),
                            np.clip(sky_horizon * 0.75 + _uniform(rng, -0.08, 0.05), 0, 1).astype(np.float32)))
            x += w + (_uniform(rng, 0.0, 0.08) if rng.random() < 0.3 else 0.0)

    objects = _sample_objects(rng, road_left, road_right, sidewalk, gap, park_side, travel)
    return Scene(
        yh=yh, vx=_uniform(rng, 0.38, 0.62), pan=pan, speed=speed, sky_top=sky_top, sky_horizon=sky_horizon,
        cloudiness=_uniform(rng, 0.0, 0.8), road_left=road_left, road_right=road_right, sidewalk=sidewalk,
        gap=(gap[0], gap[1]), road_color=_jitter_color(rng, (0.33, 0.33, 0.35), 0.05),
        sidewalk_color=_jitter_color(rng, (0.66, 0.63, 0.60), 0.06),
        terrain_color=_jitter_color(rng, (0.40, 0.52, 0.22) if rng.random() < 0.7 else (0.55, 0.48, 0.32), 0.06),
        lane_lines=lane_lines, dash_period=_uniform(rng, 1.5, 3.0), tile=_uniform(rng, 0.25, 0.5),
        buildings=buildings, skyline=skyline, objects=objects,
    )


def _sample_objects(rng, road_left, road_right, sidewalk, gap, park_side, travel) -> list[SceneObject]:
    objects = []
    edges = (road_left, road_right)

    def sidewalk_x(side: int, lo: float, hi: float) -> float:
        return (-1, 1)[side] * (edges[side] + sidewalk[side] * _uniform(rng, lo, hi))

    # Vehicles: one is always near enough to be seen; left-lane ones are oncoming.
    for i in range(int(rng.integers(1, 5))):
        side = int(rng.integers(2))
        parked = rng.random() < 0.25
        x = (-1, 1)[side] * (edges[side] - 0.65 if parked else _uniform(rng, 0.55, max(edges[side] - 0.6, 0.6)))
        truck = rng.random() < 0.15
        own = 0.0 if parked else (_uniform(rng, 0.1, 0.5) * (1 if side == 1 else -1))
        D = travel * 0.5 + (_uniform(rng, 2.0, 6.0) if i == 0 else _uniform(rng, 2.5, 25.0))
        objects.append(SceneObject("vehicle", D, x, vD=own, params=dict(
            width=_uniform(rng, 1.5, 1.8) if truck else _uniform(rng, 0.95, 1.15),
            height=_uniform(rng, 1.8, 2.6) if truck else _uniform(rng, 0.85, 1.15),
            color=_jitter_color(rng, _VEHICLE_COLORS[int(rng.integers(len(_VEHICLE_COLORS)))], 0.04),
            truck=truck)))
    # Persons on the sidewalks; the first one near.
    for i in range(int(rng.integers(1, 5))):
        side = int(rng.integers(2))
        D = travel + (_uniform(rng, 1.5, 4.0) if i == 0 else _uniform(rng, 1.5, 15.0))
        objects.append(SceneObject("person", D, sidewalk_x(side, 0.2, 0.8), vD=_uniform(rng, -0.08, 0.08),
                                   vx=_uniform(rng, -0.02, 0.02), params=dict(
            height=_uniform(rng, 0.9, 1.2), shirt=_jitter_color(rng, _CLOTHES[int(rng.integers(len(_CLOTHES)))]),
            trousers=_jitter_color(rng, _CLOTHES[int(rng.integers(len(_CLOTHES)))]),
            skin=np.asarray(_SKIN[int(rng.integers(len(_SKIN)))], np.float32))))
    # Poles with signs or traffic lights near the curb.
    for i in range(int(rng.integers(1, 4))):
        side = int(rng.integers(2))
        D = travel + (_uniform(rng, 1.5, 5.0) if i == 0 else _uniform(rng, 1.5, 20.0))
        objects.append(SceneObject("pole", D, sidewalk_x(side, 0.08, 0.2), params=dict(
            height=_uniform(rng, 2.2, 3.5), light=bool(rng.random() < 0.35),
            color=np.asarray(_SIGN_COLORS[int(rng.integers(len(_SIGN_COLORS)))], np.float32),
            round=bool(rng.random() < 0.5))))
    # Trees: on the sidewalks' outer edge, and many more on a park side or in a wide verge.
    for i in range(int(rng.integers(1, 5))):
        side = int(rng.integers(2))
        D = travel + (_uniform(rng, 2.0, 6.0) if i == 0 else _uniform(rng, 1.5, 25.0))
        objects.append(_tree(rng, D, sidewalk_x(side, 0.8, 0.95)))
    for side in range(2):
        if side == park_side or gap[side] > 0.8:
            for _ in range(int(rng.integers(3, 9))):
                x = (-1, 1)[side] * (edges[side] + sidewalk[side] + _uniform(rng, 0.3, 4.0))
                objects.append(_tree(rng, travel + _uniform(rng, 1.5, 30.0), x))
    return objects


def _tree(rng, D: float, x: float) -> SceneObject:
    return SceneObject("tree", D, x, params=dict(
        trunk=_uniform(rng, 0.8, 1.6), radius=_uniform(rng, 0.5, 1.1), lobes=int(rng.integers(3, 8)),
        phase=_uniform(rng, 0, 2 * np.pi), color=_jitter_color(rng, (0.20, 0.42, 0.15), 0.07)))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
class Canvas:
    """An RGB image [H, W, 3] float32 in [0, 1] and its label map [H, W] uint8, painted together."""

    def __init__(self, height: int, width: int, grain: np.ndarray, blotch: np.ndarray):
        self.H, self.W = height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.full((height, width), SKY, np.uint8)
        self.Y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]  # [H, 1] height units
        self.X = ((np.arange(width, dtype=np.float32) + 0.5) / height)[None, :]  # [1, W]
        self.grain = grain  # [H, W] fine noise
        self.blotch = blotch  # [H, W] smooth noise
        self.pixel = 1.0 / height

    def box(self, y0: float, y1: float, x0: float, x1: float):
        """Row and column slices of the pixels whose centres may lie in [y0, y1] x [x0, x1] (None if empty)."""
        # math.floor/ceil: the same integers as int(np.floor/np.ceil(...)) for finite floats,
        # without numpy's per-call overhead (non-finite coordinates still raise).
        r0, r1 = max(math.floor(y0 * self.H), 0), min(math.ceil(y1 * self.H) + 1, self.H)
        c0, c1 = max(math.floor(x0 * self.H), 0), min(math.ceil(x1 * self.H) + 1, self.W)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def paint(self, rows: slice, cols: slice, mask: np.ndarray, color, cls: int, texture: float = 0.0,
              blotch: float = 0.0) -> None:
        """Paint `color` ([3] or [h, w, 3]) and class `cls` where `mask` ([h, w] bool) is set in the window."""
        color = np.asarray(color, np.float32)
        if texture or blotch:
            shade = texture * self.grain[rows, cols] + blotch * self.blotch[rows, cols]
            color = color + shade[..., None]
        if color.ndim == 1:
            self.image[rows, cols][mask] = color
        else:
            self.image[rows, cols][mask] = np.broadcast_to(color, mask.shape + (3,))[mask]
        self.label[rows, cols][mask] = cls

    def rect(self, y0, y1, x0, x1, color, cls, texture=0.02, min_width=True) -> None:
        """Axis-aligned rectangle; at least one pixel wide so thin poles never vanish at low resolution."""
        if min_width and x1 - x0 < self.pixel:
            mid = 0.5 * (x0 + x1)
            x0, x1 = mid - 0.5 * self.pixel, mid + 0.5 * self.pixel
        win = self.box(y0, y1, x0, x1)
        if win is None:
            return
        rows, cols = win
        # The mask (Y >= y0) & (Y < y1) & (X >= x0) & (X < x1) is a run of rows times a run of
        # columns (Y and X increase): paint that sub-rectangle through slices. The same pixels get
        # the same values as through the boolean mask (the same comparisons and arithmetic), at a
        # third of the numpy calls: rectangles are most of a scene's paint calls, and each call's
        # overhead is what painting costs (a machine's first epoch paints in the main process).
        ry, cx = self.Y[rows, 0], self.X[0, cols]
        r = np.flatnonzero((ry >= y0) & (ry < y1))
        c = np.flatnonzero((cx >= x0) & (cx < x1))
        if not r.size or not c.size:
            return
        rs = slice(rows.start + int(r[0]), rows.start + int(r[-1]) + 1)
        cs = slice(cols.start + int(c[0]), cols.start + int(c[-1]) + 1)
        color = np.asarray(color, np.float32)
        if texture:
            color = color + (texture * self.grain[rs, cs] + 0.0 * self.blotch[rs, cs])[..., None]
        self.image[rs, cs] = color
        self.label[rs, cs] = cls

    def ellipse(self, cy, cx, ry, rx, color, cls, texture=0.03, lobes=0, phase=0.0, blotch=0.0) -> None:
        """Filled ellipse; `lobes` > 0 wobbles the outline (tree crowns)."""
        ry, rx = max(ry, 0.5 * self.pixel), max(rx, 0.5 * self.pixel)
        win = self.box(cy - 1.2 * ry, cy + 1.2 * ry, cx - 1.2 * rx, cx + 1.2 * rx)
        if win is None:
            return
        rows, cols = win
        dy, dx = (self.Y[rows] - cy) / ry, (self.X[:, cols] - cx) / rx
        radius = np.ones_like(dy * dx)
        if lobes:
            radius = 1.0 + 0.15 * np.sin(lobes * np.arctan2(dy, dx) + phase)
        self.paint(rows, cols, dy * dy + dx * dx < radius * radius, color, cls, texture, blotch)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """[height, width] float32 value noise: a (cells+1)^2 Gaussian grid, bilinearly interpolated."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    ry = np.linspace(0, cells, height, dtype=np.float32)
    rx = np.linspace(0, cells, width, dtype=np.float32)
    iy, ix = np.minimum(ry.astype(int), cells - 1), np.minimum(rx.astype(int), cells - 1)
    fy, fx = (ry - iy)[:, None], (rx - ix)[None, :]
    rows = grid[iy] * (1 - fy) + grid[iy + 1] * fy  # [height, cells+1]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def render(scene: Scene, canvas: Canvas, frame: int = 0) -> None:
    """Paint frame `frame` of `scene` onto `canvas` (image and labels)."""
    cam = scene.speed * frame
    vx = (scene.vx + scene.pan * frame) * canvas.W / canvas.H
    _draw_sky(scene, canvas)
    _draw_skyline(scene, canvas, vx)
    _draw_ground(scene, canvas, vx, cam)
    _draw_buildings(scene, canvas, vx, cam)
    placed = []
    for obj in scene.objects:
        d = obj.D + obj.vD * frame - cam
        if d > _NEAREST:
            placed.append((d, obj.x + obj.vx * frame, obj))
    for d, x, obj in sorted(placed, key=lambda item: -item[0]):  # far to near
        k = (1.0 - scene.yh) / d
        _DRAW[obj.kind](canvas, scene.yh, vx + x * k, k, obj.params)


def _draw_sky(scene: Scene, c: Canvas) -> None:
    t = np.clip(c.Y / scene.yh, 0, 1)[..., None]  # [H, 1, 1]
    sky = scene.sky_top * (1 - t) + scene.sky_horizon * t
    cloud = np.clip((c.blotch - 1.0 + scene.cloudiness) * 1.5, 0, 0.8)[..., None]
    c.image[:] = sky * (1 - cloud) + np.float32(0.95) * cloud
    c.label[:] = SKY


def _draw_skyline(scene: Scene, c: Canvas, vx: float) -> None:
    aspect = c.W / c.H
    shift = vx - scene.vx * aspect  # the skyline pans with the camera
    for x0, x1, h, color in scene.skyline:
        c.rect(scene.yh - h, scene.yh + 0.01, x0 * aspect + shift, x1 * aspect + shift, color, BUILDING, 0.01)


def _draw_ground(scene: Scene, c: Canvas, vx: float, cam: float) -> None:
    r0 = int(np.searchsorted(c.Y[:, 0], scene.yh, side="right"))
    if r0 >= c.H:
        return
    rows, cols = slice(r0, c.H), slice(0, c.W)
    k = c.Y[rows] - scene.yh  # [h, 1] > 0: height units per world unit on this row
    x = (c.X - vx) / k  # [h, W] world lateral position of each ground pixel
    D = (1.0 - scene.yh) / k + cam  # [h, 1] world distance of each row
    left, right = scene.road_left, scene.road_right
    c.paint(rows, cols, np.ones(x.shape, bool), scene.terrain_color, TERRAIN, 0.04, 0.05)

    sidewalk = ((x < -left) & (x > -left - scene.sidewalk[0])) | ((x > right) & (x < right + scene.sidewalk[1]))
    grout = (np.mod(D / scene.tile, 1.0) < 0.1) | (np.mod(x / scene.tile, 1.0) < 0.1)
    curb = (np.abs(x + left) < 0.08) | (np.abs(x - right) < 0.08)
    color = scene.sidewalk_color - 0.12 * grout[..., None] + 0.1 * curb[..., None]
    c.paint(rows, cols, sidewalk, color, SIDEWALK, 0.02)

    road = (x >= -left) & (x <= right)
    marking = np.zeros(x.shape, bool)
    dash = np.mod(D / scene.dash_period, 1.0) < 0.45  # [h, 1]: world-anchored dashes
    for pos, dashed in scene.lane_lines:
        line = np.abs(x - pos) < 0.06
        marking |= line & dash if dashed else line
    marking |= (np.abs(x + left - 0.15) < 0.04) | (np.abs(x - right + 0.15) < 0.04)  # solid edge lines
    color = scene.road_color + (np.float32(0.92) - scene.road_color) * marking[..., None]
    c.paint(rows, cols, road, color, ROAD, 0.03, 0.03)


def _draw_buildings(scene: Scene, c: Canvas, vx: float, cam: float) -> None:
    yh = scene.yh
    for side, segments in enumerate(scene.buildings):
        if not segments:
            continue
        sign = (-1.0, 1.0)[side]
        facade = (scene.road_left, scene.road_right)[side] + scene.sidewalk[side] + scene.gap[side]
        offset = sign * (c.X - vx)  # [1, W] > 0 on this side
        with np.errstate(divide="ignore"):
            d = np.where(offset > 0, facade * (1 - yh) / np.maximum(offset, 1e-9), np.inf)  # [1, W]
        D = d + cam
        k = np.where(np.isfinite(d), offset / facade, 0.0)  # [1, W]
        shade = 0.92 if side == 0 else 1.0  # the two facades face the light differently
        for D0, D1, height, color, window, floor in sorted(segments, key=lambda s: -s[0]):
            if D1 - cam <= _NEAREST:
                continue
            hit = np.flatnonzero((D[0] >= D0) & (D[0] < D1) & (d[0] > _NEAREST))
            if hit.size:
                # The segment's columns are contiguous: work on that window only.
                cols = slice(int(hit[0]), int(hit[-1]) + 1)
                kc, Dc = k[:, cols], D[:, cols]
                mask = (c.Y >= yh - (height - 1) * kc) & (c.Y < yh + kc)  # [H, w]
                z = 1.0 - (c.Y - yh) / np.maximum(kc, 1e-9)  # height on the facade
                across, up = np.mod(Dc / window, 1.0), np.mod(z / floor, 1.0)
                windows = (across > 0.25) & (across < 0.7) & (up > 0.35) & (up < 0.8) & (z > 1.0) & (z < height - 0.3)
                glass = np.float32(0.18) + 0.08 * c.blotch[:, cols, None]
                pixel = np.where(windows[..., None], glass, color * shade)
                c.paint(slice(None), cols, mask, pixel, BUILDING, 0.02)
            d0 = D0 - cam
            if d0 > _NEAREST:  # the end wall facing the camera
                k0 = (1 - yh) / d0
                xa, xb = vx + sign * facade * k0, vx + sign * (facade + 4.0) * k0
                c.rect(yh - (height - 1) * k0, yh + k0, min(xa, xb), max(xa, xb), color * shade * 0.8, BUILDING, 0.02)


def _draw_vehicle(c: Canvas, yh: float, X: float, k: float, p: dict) -> None:
    ground = yh + k
    w, h = p["width"] * k, p["height"] * k
    body = p["color"]
    c.rect(ground - 0.22 * h, ground, X - 0.45 * w, X - 0.28 * w, (0.05, 0.05, 0.05), VEHICLE, 0.01)  # wheels
    c.rect(ground - 0.22 * h, ground, X + 0.28 * w, X + 0.45 * w, (0.05, 0.05, 0.05), VEHICLE, 0.01)
    top = 1.0 if p["truck"] else 0.55
    c.rect(ground - top * h, ground - 0.12 * h, X - 0.5 * w, X + 0.5 * w, body, VEHICLE, 0.02)
    if not p["truck"]:  # cabin with the rear window
        c.rect(ground - h, ground - 0.55 * h, X - 0.4 * w, X + 0.4 * w, body * 0.9, VEHICLE, 0.02)
        c.rect(ground - 0.93 * h, ground - 0.6 * h, X - 0.33 * w, X + 0.33 * w, (0.12, 0.14, 0.18), VEHICLE, 0.03)
    lights = ground - 0.45 * h, ground - 0.35 * h
    c.rect(*lights, X - 0.48 * w, X - 0.36 * w, (0.9, 0.1, 0.05), VEHICLE, 0.0, min_width=False)
    c.rect(*lights, X + 0.36 * w, X + 0.48 * w, (0.9, 0.1, 0.05), VEHICLE, 0.0, min_width=False)
    c.rect(ground - 0.3 * h, ground - 0.2 * h, X - 0.1 * w, X + 0.1 * w, (0.9, 0.9, 0.85), VEHICLE, 0.0,
           min_width=False)  # number plate


def _draw_person(c: Canvas, yh: float, X: float, k: float, p: dict) -> None:
    ground, h = yh + k, p["height"] * k
    c.rect(ground - 0.48 * h, ground, X - 0.12 * h, X - 0.01 * h, p["trousers"], PERSON)
    c.rect(ground - 0.48 * h, ground, X + 0.01 * h, X + 0.12 * h, p["trousers"], PERSON)
    c.rect(ground - 0.82 * h, ground - 0.46 * h, X - 0.15 * h, X + 0.15 * h, p["shirt"], PERSON)
    c.ellipse(ground - 0.9 * h, X, 0.09 * h, 0.075 * h, p["skin"], PERSON, 0.02)


def _draw_pole(c: Canvas, yh: float, X: float, k: float, p: dict) -> None:
    ground, h = yh + k, p["height"] * k
    c.rect(ground - h, ground, X - 0.035 * k, X + 0.035 * k, (0.45, 0.45, 0.47), POLE, 0.02)
    if p["light"]:
        c.rect(ground - h, ground - h + 0.6 * k, X - 0.12 * k, X + 0.12 * k, (0.1, 0.1, 0.1), POLE, 0.01)
        for i, color in enumerate(((0.9, 0.1, 0.1), (0.9, 0.7, 0.1), (0.1, 0.8, 0.3))):
            c.ellipse(ground - h + (0.1 + 0.2 * i) * k, X, 0.07 * k, 0.07 * k, color, POLE, 0.0)
    elif p["round"]:
        c.ellipse(ground - h + 0.2 * k, X, 0.22 * k, 0.22 * k, p["color"], POLE, 0.02)
    else:
        c.rect(ground - h, ground - h + 0.4 * k, X - 0.22 * k, X + 0.22 * k, p["color"], POLE, 0.02)


def _draw_tree(c: Canvas, yh: float, X: float, k: float, p: dict) -> None:
    ground, r = yh + k, p["radius"] * k
    c.rect(ground - p["trunk"] * k - 0.3 * r, ground, X - 0.06 * k, X + 0.06 * k, (0.35, 0.25, 0.15), VEGETATION)
    c.ellipse(ground - p["trunk"] * k - 0.6 * r, X, 0.95 * r, r, p["color"], VEGETATION, 0.06, p["lobes"],
              p["phase"], blotch=0.05)


_DRAW = {"vehicle": _draw_vehicle, "person": _draw_person, "pole": _draw_pole, "tree": _draw_tree}
