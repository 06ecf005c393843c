"""The built-in dataset's world: a small 2-D rigid-body simulation of coloured discs and a driver, and
its rendering to frames and masks (see :mod:`data_prep.synthetic` for the dataset made from it).

Collisions are elastic impulses between discs (the driver is kinematic: infinitely heavy), discs slow
down under Coulomb friction and bounce off the walls, so a pushed disc can hit another (force
propagation). Everything is deterministic for a given random generator.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PALETTE = np.array(
    [
        [220, 60, 50],
        [60, 170, 80],
        [60, 90, 210],
        [230, 190, 40],
        [170, 70, 190],
        [40, 180, 190],
    ],
    dtype=np.uint8,
)
HAND_COLOUR = np.array([235, 185, 150], dtype=np.uint8)
SLIDER_COLOUR = np.array([240, 240, 240], dtype=np.uint8)


@dataclass
class Disc:
    """A rigid disc: position and velocity in pixels and pixels per second."""

    name: str
    pos: np.ndarray
    vel: np.ndarray
    radius: float
    colour: np.ndarray
    mass: float = field(init=False)

    def __post_init__(self) -> None:
        self.pos = np.asarray(self.pos, dtype=np.float64)
        self.vel = np.asarray(self.vel, dtype=np.float64)
        self.mass = self.radius**2  # uniform density


@dataclass
class DriverPath:
    """Straight scripted motion: from ``start`` along ``direction`` at ``speed`` px/s until ``stop_time``,
    then at rest. ``kind`` is ``"hand"`` (drawn with an arm from the entry edge) or ``"object"``."""

    start: np.ndarray
    direction: np.ndarray
    speed: float
    stop_time: float
    radius: float
    kind: str
    entry_point: np.ndarray

    def position(self, t: float) -> np.ndarray:
        return self.start + self.direction * self.speed * min(t, self.stop_time)

    def velocity(self, t: float) -> np.ndarray:
        return self.direction * self.speed if t < self.stop_time else np.zeros(2)


def collide(
    p1: np.ndarray,
    v1: np.ndarray,
    m1: float,
    p2: np.ndarray,
    v2: np.ndarray,
    m2: float,
    restitution: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Velocities after an impulse between two touching discs (``m1 = inf`` for a kinematic body).

    Only approaching pairs exchange momentum; with ``restitution=1`` kinetic energy is conserved and two
    equal masses in a head-on collision swap velocities.
    """
    d = p2 - p1
    dist = float(np.hypot(*d))
    if dist == 0.0:
        return v1, v2
    n = d / dist
    approach = float(np.dot(v1 - v2, n))
    if approach <= 0.0:
        return v1, v2
    inv1 = 0.0 if math.isinf(m1) else 1.0 / m1
    inv2 = 0.0 if math.isinf(m2) else 1.0 / m2
    j = (1.0 + restitution) * approach / (inv1 + inv2)
    return v1 - j * inv1 * n, v2 + j * inv2 * n


@dataclass
class World:
    """Simulation settings (pixels, seconds)."""

    height: int = 128
    width: int = 128
    friction: float = 80.0  # deceleration in px/s^2 (mu * g)
    restitution: float = 1.0  # between discs (elastic)
    wall_restitution: float = 0.8
    # between the driver and a disc: 1 flings a struck disc off at up to twice the driver's speed,
    # 0 pushes it along at the driver's speed (it rolls on when the driver stops or turns)
    driver_restitution: float = 1.0
    substeps: int = 8


# The built-in world's physics (`make world-data`, docs/world.md; the shipped weights were trained on it):
# the dataset's friction scale (80 px/s^2 at 128 px) and elastic strikes.
WORLD_FRICTION_PER_PX = 0.625  # px/s^2 per pixel of frame size: 40 at 64 px
WORLD_DRIVER_RESTITUTION = 1.0


def builtin_world(size: int = 64) -> World:
    """The built-in world's simulation settings at a ``size`` x ``size`` frame (the CPU world is 64)."""
    return World(
        height=size,
        width=size,
        friction=WORLD_FRICTION_PER_PX * size,
        driver_restitution=WORLD_DRIVER_RESTITUTION,
    )


def simulate(
    world: World, discs: list[Disc], driver: DriverPath, num_frames: int, fps: float
) -> dict[str, Any]:
    """Run the simulation; returns per-frame positions ``(T, K, 2)``, velocities, driver positions
    ``(T, 2)`` and collision events ``(frame, a, b)`` (``a``/``b``: disc index or ``"driver"``)."""
    discs = [Disc(d.name, d.pos.copy(), d.vel.copy(), d.radius, d.colour) for d in discs]
    driver = dataclasses.replace(driver)  # its stop time may change below; the caller's path stays as given
    dt = 1.0 / (fps * world.substeps)
    positions = np.zeros((num_frames, len(discs), 2))
    velocities = np.zeros_like(positions)
    driver_pos = np.zeros((num_frames, 2))
    events: list[tuple[int, Any, Any]] = []
    t = 0.0
    for frame in range(num_frames):
        positions[frame] = [d.pos for d in discs]
        velocities[frame] = [d.vel for d in discs]
        driver_pos[frame] = driver.position(t)
        for _ in range(world.substeps):
            t += dt
            for d in discs:  # friction and motion
                speed = float(np.hypot(*d.vel))
                if speed > 0:
                    d.vel *= max(0.0, speed - world.friction * dt) / speed
                d.pos = d.pos + d.vel * dt
            dp, dv = driver.position(t), driver.velocity(t)
            for i, d in enumerate(discs):  # driver pushes
                gap = float(np.hypot(*(d.pos - dp))) - (d.radius + driver.radius)
                if gap < 0:
                    _, new_v = collide(dp, dv, math.inf, d.pos, d.vel, d.mass, world.driver_restitution)
                    if not np.allclose(new_v, d.vel):
                        events.append((frame, "driver", i))
                    d.vel = new_v
                    d.pos = d.pos + (d.pos - dp) / max(1e-9, gap + d.radius + driver.radius) * (-gap)
            for i in range(len(discs)):  # disc-disc
                for j in range(i + 1, len(discs)):
                    a, b = discs[i], discs[j]
                    delta = b.pos - a.pos
                    dist = float(np.hypot(*delta))
                    overlap = a.radius + b.radius - dist
                    if overlap > 0 and dist > 0:
                        new_a, new_b = collide(a.pos, a.vel, a.mass, b.pos, b.vel, b.mass, world.restitution)
                        if not np.allclose(new_a, a.vel):
                            events.append((frame, i, j))
                        a.vel, b.vel = new_a, new_b
                        n = delta / dist  # split the overlap by inverse mass
                        total = a.mass + b.mass
                        a.pos = a.pos - n * overlap * b.mass / total
                        b.pos = b.pos + n * overlap * a.mass / total
            for d in discs:  # walls
                for axis, limit in ((0, world.width), (1, world.height)):
                    if d.pos[axis] < d.radius and d.vel[axis] < 0:
                        d.vel[axis] *= -world.wall_restitution
                    elif d.pos[axis] > limit - d.radius and d.vel[axis] > 0:
                        d.vel[axis] *= -world.wall_restitution
                    d.pos[axis] = min(max(d.pos[axis], d.radius), limit - d.radius)
            # A disc pinned between the driver and a wall cannot give way: the driver stops there
            # (a kinematic driver would otherwise pass through it).
            dp = driver.position(t)
            if t < driver.stop_time and any(
                float(np.hypot(*(d.pos - dp))) < d.radius + driver.radius - 1.0 for d in discs
            ):
                driver.stop_time = t
    # Events are recorded once per contact episode (first substep of each frame is enough).
    unique = sorted(set(events), key=lambda e: (e[0], str(e[1]), str(e[2])))
    return {
        "positions": positions,
        "velocities": velocities,
        "driver": driver_pos,
        "events": unique,
        "driver_stop_time": driver.stop_time,
    }


def render(
    world: World, discs: list[Disc], driver: DriverPath, sim: dict[str, Any], background: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames ``(T, H, W, 3)`` uint8, driver masks ``(T, H, W)`` and object masks ``(K, T, H, W)``."""
    num_frames = sim["positions"].shape[0]
    yy, xx = np.mgrid[0 : world.height, 0 : world.width] + 0.5
    frames = np.empty((num_frames, world.height, world.width, 3), dtype=np.uint8)
    control = np.zeros((num_frames, world.height, world.width), dtype=bool)
    objects = np.zeros((len(discs), num_frames, world.height, world.width), dtype=bool)
    for t in range(num_frames):
        img = background.copy()
        for k, d in enumerate(discs):
            x, y = sim["positions"][t, k]
            objects[k, t] = (xx - x) ** 2 + (yy - y) ** 2 <= d.radius**2
            img[objects[k, t]] = d.colour
        x, y = sim["driver"][t]
        hand = (xx - x) ** 2 + (yy - y) ** 2 <= driver.radius**2
        if driver.kind == "hand":  # an arm from the entry point on the border to the hand
            ex, ey = driver.entry_point
            seg = np.array([x - ex, y - ey])
            length2 = float(seg @ seg)
            if length2 > 0:
                u = np.clip(((xx - ex) * seg[0] + (yy - ey) * seg[1]) / length2, 0.0, 1.0)
                arm = (xx - ex - u * seg[0]) ** 2 + (yy - ey - u * seg[1]) ** 2 <= (0.55 * driver.radius) ** 2
                hand |= arm
        img[hand] = HAND_COLOUR if driver.kind == "hand" else SLIDER_COLOUR
        objects[:, t] &= ~hand  # visible parts only
        control[t] = hand
        frames[t] = img
    return frames, control, objects


def random_scene(rng: np.random.Generator, world: World, num_objects: int) -> tuple[list[Disc], np.ndarray]:
    """Discs at rest in the middle of the frame without overlaps, and a background image."""
    discs: list[Disc] = []
    colours = rng.permutation(len(PALETTE))
    for k in range(num_objects):
        for _ in range(200):
            r = float(rng.uniform(0.07, 0.11) * min(world.height, world.width))
            pos = rng.uniform(
                [0.3 * world.width, 0.3 * world.height], [0.75 * world.width, 0.75 * world.height]
            )
            if all(np.hypot(*(pos - d.pos)) > r + d.radius + 2 for d in discs):
                discs.append(Disc(f"disc{k}", pos, np.zeros(2), r, PALETTE[colours[k % len(PALETTE)]]))
                break
    top = rng.uniform(90, 140, size=3)
    bottom = top * rng.uniform(0.6, 0.9)
    ramp = np.linspace(0, 1, world.height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(world.width, axis=1).astype(np.uint8)
    return discs, background


def random_entry(rng: np.random.Generator, world: World, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """A point on a random border and the driver's start (its disc half inside the frame)."""
    side = int(rng.integers(4))
    along = float(rng.uniform(0.3, 0.7))
    w, h = world.width, world.height
    entry = [
        np.array([0.0, along * h]),
        np.array([w, along * h]),
        np.array([along * w, 0.0]),
        np.array([along * w, h]),
    ][side]
    inward = [np.array([1.0, 0]), np.array([-1.0, 0]), np.array([0, 1.0]), np.array([0, -1.0])][side]
    return entry, entry + inward * 0.5 * radius


def random_path(
    rng: np.random.Generator,
    world: World,
    discs: list[Disc],
    entry: np.ndarray,
    start: np.ndarray,
    radius: float,
    kind: str,
    duration: float,
) -> DriverPath:
    """Aim at a random disc (with a random offset) at a random speed; hands stop after a while."""
    target = (
        discs[int(rng.integers(len(discs)))].pos if discs else np.array([world.width / 2, world.height / 2])
    )
    aim = target + rng.normal(0, 0.4 * radius, size=2)
    direction = (aim - start) / max(1e-9, float(np.hypot(*(aim - start))))
    speed = float(rng.uniform(0.3, 0.5) * min(world.width, world.height))
    stop = float(rng.uniform(0.5, 0.8) * duration) if kind == "hand" else math.inf
    return DriverPath(start, direction, speed, stop, radius, kind, entry)


def make_video(
    rng: np.random.Generator,
    world: World,
    num_frames: int,
    fps: float,
    scene: tuple | None = None,
    entry: tuple | None = None,
) -> dict[str, Any]:
    """One simulated clip; ``scene``/``entry`` reuse a first frame (counterfactual variants)."""
    discs, background = scene or random_scene(rng, world, int(rng.integers(2, 4)))
    if entry is None:
        kind = str(rng.choice(["hand", "object"]))
        radius = float(rng.uniform(0.08, 0.11) * min(world.height, world.width))
        entry = (kind, radius, random_entry(rng, world, radius))
    kind, radius, (entry_point, start) = entry
    path = random_path(rng, world, discs, entry_point, start, radius, kind, num_frames / fps)
    sim = simulate(world, discs, path, num_frames, fps)
    frames, control, objects = render(world, discs, path, sim, background)
    return {
        "frames": frames,
        "control": control,
        "objects": objects,
        "sim": sim,
        "discs": discs,
        "path": path,
        "scene": (discs, background),
        "entry": (kind, radius, (entry_point, start)),
    }
