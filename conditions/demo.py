"""A synthetic demo scene built in code: a nuScenes-like 6-camera rig in a small city grid.

Used by the preview command, the benchmark and the tests. Nothing here reads files.

The city (right-hand traffic) is a grid of 14 m wide four-lane roads: roads along city x at
city y = -100, 0, 100 and along city y at city x = -150, -50, 50, 150, within +-250 m. It has
drivable area (one polygon with the blocks as holes), lane dividers, double-yellow road dividers,
road edges, 3 m walkways around every block, crossings and stop lines at every intersection and
two car parks. The ego drives along city +x in the right lane of the y = 0 road. The whole city
is placed in the world by a rigid 2D transform (`CITY_TO_WORLD`), so world coordinates are not
trivially aligned with the ego and tests exercise every transform.

The rig uses the calibration of nuScenes' Boston vehicle (v1.0-mini, scene-0061), 1600 x 900.
"""

from __future__ import annotations

import numpy as np
import shapely

from conditions.geometry import quaternion_to_matrix, rigid_transform
from conditions.scene import Agents, Camera, Frame, MapElement, Scene, SceneSource

__all__ = [
    "NUSCENES_CAMERA_ORDER",
    "NUSCENES_CALIBRATION",
    "nuscenes_rig",
    "make_demo_scene",
    "CITY_TO_WORLD",
    "pinhole_camera",
    "simple_scene",
]

NUSCENES_CAMERA_ORDER = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
# name: (translation xyz in ego, rotation quaternion wxyz camera->ego, (fx, cx, cy)); fx == fy.
NUSCENES_CALIBRATION = {
    "CAM_FRONT": (
        [1.70079118954, 0.0159456324149, 1.51095763913],
        [0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755],
        (1266.417203046554, 816.2670197447984, 491.50706579294757),
    ),
    "CAM_FRONT_RIGHT": (
        [1.5508477543, -0.493404796419, 1.49574800619],
        [0.2060347966337182, -0.2026940577919598, 0.6824507824531167, -0.6713610884174485],
        (1260.8474446004698, 807.968244525554, 495.3344268742088),
    ),
    "CAM_BACK_RIGHT": (
        [1.0148780988, -0.480568219723, 1.56239545128],
        [0.12280980120078765, -0.132400842670559, -0.7004305821388234, 0.690496031265798],
        (1259.5137405846733, 807.2529053838625, 501.19579884916527),
    ),
    "CAM_BACK": (
        [0.0283260309358, 0.00345136761476, 1.57910346144],
        [0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578],
        (809.2209905677063, 829.2196003259838, 481.77842384512485),
    ),
    "CAM_BACK_LEFT": (
        [1.03569100218, 0.484795032713, 1.59097014818],
        [0.6924185592174665, -0.7031619420114925, -0.11648342771943819, 0.11203317912370753],
        (1256.7414812095406, 792.1125740759628, 492.7757465151356),
    ),
    "CAM_FRONT_LEFT": (
        [1.52387798135, 0.494631336551, 1.50932822144],
        [0.6757265034669446, -0.6736266522251881, 0.21214015046209478, -0.21122827103904068],
        (1272.5979470598488, 826.6154927353808, 479.75165386361925),
    ),
}

# City frame -> world frame (2D rotation + translation), applied to map and agents alike.
_CITY_YAW = 0.6
CITY_TO_WORLD = np.array(
    [[np.cos(_CITY_YAW), -np.sin(_CITY_YAW), 611.5], [np.sin(_CITY_YAW), np.cos(_CITY_YAW), 1732.25], [0, 0, 1.0]]
)

_LANE = 3.5
_HALF_ROAD = 2 * _LANE
_ROADS_Y = (-100.0, 0.0, 100.0)  # roads along x
_ROADS_X = (-150.0, -50.0, 50.0, 150.0)  # roads along y
_EXTENT = 250.0
_WALKWAY = 3.0
_CROSSING = 4.0
# name: (length, width, height) in metres, typical nuScenes sizes.
_SIZES = {
    "car": (4.6, 1.9, 1.6),
    "truck": (7.5, 2.5, 3.0),
    "construction_vehicle": (6.5, 2.8, 3.2),
    "bus": (11.5, 2.9, 3.4),
    "trailer": (10.0, 2.6, 3.6),
    "barrier": (0.5, 2.0, 1.0),
    "motorcycle": (2.1, 0.8, 1.5),
    "bicycle": (1.8, 0.6, 1.4),
    "pedestrian": (0.7, 0.7, 1.75),
    "traffic_cone": (0.4, 0.4, 0.9),
}


def nuscenes_rig() -> tuple[Camera, ...]:
    """The six cameras of a nuScenes vehicle, in NUSCENES_CAMERA_ORDER."""
    cameras = []
    for name in NUSCENES_CAMERA_ORDER:
        t, q, (f, cx, cy) = NUSCENES_CALIBRATION[name]
        K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        cameras.append(
            Camera(
                name=name, intrinsics=K, cam_to_ego=rigid_transform(quaternion_to_matrix(q), t), image_size=(900, 1600)
            )
        )
    return tuple(cameras)


def pinhole_camera(
    name: str = "CAM",
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    position: tuple[float, float, float] = (1.5, 0.0, 1.5),
    image_size: tuple[int, int] = (900, 1600),
    focal_px: float = 1266.0,
    distortion: np.ndarray | None = None,
) -> Camera:
    """A camera on the ego at `position`, looking along ego yaw `yaw_deg`, pitched down by
    `pitch_deg`, principal point at the image centre (for tests and sketches)."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    forward = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    H, W = image_size
    K = np.array([[focal_px, 0.0, (W - 1) / 2], [0.0, focal_px, (H - 1) / 2], [0.0, 0.0, 1.0]])
    cam_to_ego = rigid_transform(np.column_stack([right, down, forward]), position)
    return Camera(name=name, intrinsics=K, cam_to_ego=cam_to_ego, image_size=image_size, distortion=distortion)


def simple_scene(
    cameras: tuple[Camera, ...],
    center: np.ndarray,
    size: np.ndarray,
    yaw: np.ndarray,
    classes: tuple[str, ...],
    ego_to_world: np.ndarray | None = None,
    map_elements: tuple[MapElement, ...] = (),
) -> Scene:
    """One frame with the given boxes (world frame), track ids 0..N-1."""
    center = np.asarray(center, np.float64).reshape(-1, 3)
    agents = Agents(
        center=center,
        size=np.asarray(size, np.float64).reshape(-1, 3),
        yaw=np.asarray(yaw, np.float64).reshape(-1),
        classes=tuple(classes),
        track_ids=np.arange(len(center)),
    )
    frame = Frame(timestamp_us=0, ego_to_world=np.eye(4) if ego_to_world is None else ego_to_world, agents=agents)
    return Scene(
        cameras=tuple(cameras),
        frames=(frame,),
        map_elements=tuple(map_elements),
        source=SceneSource(dataset="synthetic", scene_id="simple"),
    )


# ---------------------------------------------------------------------------------------------
# Map (city frame)
# ---------------------------------------------------------------------------------------------


def _to_world(xy: np.ndarray) -> np.ndarray:
    return np.asarray(xy, np.float64) @ CITY_TO_WORLD[:2, :2].T + CITY_TO_WORLD[:2, 2]


def _segments_between_crossings(crossings: tuple[float, ...], clearance: float) -> list[tuple[float, float]]:
    """Stretches of a road in [-EXTENT, EXTENT] between the intersections with crossing roads."""
    stops = [-_EXTENT] + [v for c in crossings for v in (c - clearance, c + clearance)] + [_EXTENT]
    return [(stops[i], stops[i + 1]) for i in range(0, len(stops), 2)]


def _city_map() -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """(class, points, holes) in the city frame."""
    out: list[tuple[str, np.ndarray, list[np.ndarray]]] = []
    strips = [shapely.box(-_EXTENT, y - _HALF_ROAD, _EXTENT, y + _HALF_ROAD) for y in _ROADS_Y]
    strips += [shapely.box(x - _HALF_ROAD, -_EXTENT, x + _HALF_ROAD, _EXTENT) for x in _ROADS_X]
    drivable = shapely.union_all(strips)
    for poly in shapely.get_parts(drivable):
        out.append(("drivable_area", np.asarray(poly.exterior.coords), [np.asarray(r.coords) for r in poly.interiors]))
        for ring in [poly.exterior, *poly.interiors]:
            out.append(("road_edge", np.asarray(ring.coords), []))
    # Walkways: a 3 m ring inside each block; two blocks hold a car park.
    xs = (-_EXTENT,) + _ROADS_X + (_EXTENT,)
    ys = (-_EXTENT,) + _ROADS_Y + (_EXTENT,)
    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            x0, x1 = xs[i] + (_HALF_ROAD if i > 0 else 0), xs[i + 1] - (_HALF_ROAD if i < len(xs) - 2 else 0)
            y0, y1 = ys[j] + (_HALF_ROAD if j > 0 else 0), ys[j + 1] - (_HALF_ROAD if j < len(ys) - 2 else 0)
            block = shapely.box(x0, y0, x1, y1)
            inner = shapely.box(x0 + _WALKWAY, y0 + _WALKWAY, x1 - _WALKWAY, y1 - _WALKWAY)
            out.append(("walkway", np.asarray(block.exterior.coords), [np.asarray(inner.exterior.coords)]))
            if (i, j) in ((2, 2), (1, 1)):
                lot = shapely.box(x0 + _WALKWAY + 2, y0 + _WALKWAY + 2, x0 + _WALKWAY + 42, y0 + _WALKWAY + 30)
                out.append(("carpark_area", np.asarray(lot.exterior.coords), []))
    # Painted lines along each road, interrupted at intersections.
    clear = _HALF_ROAD + _CROSSING + 1.0
    for axis, roads, crossings in ((0, _ROADS_Y, _ROADS_X), (1, _ROADS_X, _ROADS_Y)):
        for c in roads:
            for a, b in _segments_between_crossings(crossings, clear):
                for offset, cls in (
                    (-_LANE, "lane_divider"),
                    (_LANE, "lane_divider"),
                    (-0.15, "road_divider"),
                    (0.15, "road_divider"),
                ):
                    line = np.array([[a, c + offset], [b, c + offset]])
                    out.append((cls, line if axis == 0 else line[:, ::-1], []))
    # Crossings and stop lines at every intersection approach (right-hand traffic: a stop line
    # spans the two lanes that enter the intersection).
    for x in _ROADS_X:
        for y in _ROADS_Y:
            for sign in (-1.0, 1.0):
                # Approaches along x (road y = const), on the side x + sign * ...
                x_near = x + sign * (_HALF_ROAD + 0.5)
                x_far = x_near + sign * _CROSSING
                out.append(
                    (
                        "ped_crossing",
                        np.array(
                            [
                                [x_near, y - _HALF_ROAD],
                                [x_far, y - _HALF_ROAD],
                                [x_far, y + _HALF_ROAD],
                                [x_near, y + _HALF_ROAD],
                            ]
                        ),
                        [],
                    )
                )
                stop_x = x_far + sign * 0.5
                lanes = (y - _HALF_ROAD, y) if sign < 0 else (y, y + _HALF_ROAD)
                out.append(("stop_line", np.array([[stop_x, lanes[0]], [stop_x, lanes[1]]]), []))
                # Approaches along y (road x = const).
                y_near = y + sign * (_HALF_ROAD + 0.5)
                y_far = y_near + sign * _CROSSING
                out.append(
                    (
                        "ped_crossing",
                        np.array(
                            [
                                [x - _HALF_ROAD, y_near],
                                [x - _HALF_ROAD, y_far],
                                [x + _HALF_ROAD, y_far],
                                [x + _HALF_ROAD, y_near],
                            ]
                        ),
                        [],
                    )
                )
                stop_y = y_far + sign * 0.5
                lanes = (x, x + _HALF_ROAD) if sign < 0 else (x - _HALF_ROAD, x)
                out.append(("stop_line", np.array([[lanes[0], stop_y], [lanes[1], stop_y]]), []))
    return out


# ---------------------------------------------------------------------------------------------
# Agents (city frame)
# ---------------------------------------------------------------------------------------------


def _agent_pool(rng: np.random.Generator) -> list[tuple[str, float, float, float, float]]:
    """Candidate agents (class, x, y, yaw, speed) in the city frame, most relevant first."""
    pool: list[tuple[str, float, float, float, float]] = []
    east, west = 0.0, np.pi
    # A few fixed agents so that every camera of the rig sees someone (rear-left, rear-right).
    pool += [("pedestrian", -1.0, 8.5, -np.pi / 2, 0.0), ("pedestrian", 1.5, 9.2, west, 0.0)]
    pool += [("pedestrian", -1.0, -8.8, np.pi / 2, 0.0), ("bicycle", -25.0, -6.5, east, 4.0)]
    # Traffic on the ego's road (lanes y = -5.25, -1.75 eastbound; 1.75, 5.25 westbound).
    lanes = ((-1.75, east), (-5.25, east), (1.75, west), (5.25, west))
    for x in np.arange(-60, 95, 11.0):
        for y, yaw in lanes:
            if abs(x) < 8 and y == -1.75:
                continue  # the ego itself
            if rng.random() < 0.45:
                # Big vehicles only away from the ego, so that they do not fill a whole camera.
                big = ["truck", "bus"] if abs(x) > 20 else []
                cls = rng.choice(["car"] * 8 + big + ["motorcycle"])
                pool.append(
                    (str(cls), x + rng.uniform(-1.5, 1.5), y + rng.uniform(-0.2, 0.2), yaw + rng.normal(0, 0.03), 6.0)
                )
    # Queues on the cross street at x = 50 (southbound x = 48.25/44.75, northbound 51.75/55.25).
    for y in (-14.0, -21.0, -28.0, 14.0, 21.0, 28.0):
        x = 51.75 if y < 0 else 48.25
        pool.append(("car", x, y, np.pi / 2 if y < 0 else -np.pi / 2, 0.0))
    pool.append(("truck", 55.25, -17.0, np.pi / 2, 0.0))
    pool.append(("trailer", 55.25, -26.5, np.pi / 2, 0.0))
    # Pedestrians on the walkways and a crossing, cyclists at the kerb.
    for x in np.arange(-30, 70, 6.0):
        for y in (-8.5, 8.5):
            if rng.random() < 0.3:
                pool.append(
                    ("pedestrian", x + rng.uniform(-2, 2), y + rng.uniform(-1, 1), rng.choice([east, west]), 1.3)
                )
    for y in (-6.0, -3.0, 2.0, 5.5):
        pool.append(("pedestrian", 42.5 + rng.uniform(-1, 1), y, np.pi / 2, 1.3))
    pool.append(("bicycle", 22.0, -6.6, east, 4.0))
    pool.append(("bicycle", -12.0, 6.6, west, 4.0))
    # Road works on the far westbound lane: cones, barriers and a digger.
    for x in np.arange(24.0, 40.0, 2.5):
        pool.append(("traffic_cone", x, 3.6, 0.0, 0.0))
    pool.append(("barrier", 23.0, 5.25, 0.0, 0.0))
    pool.append(("barrier", 40.0, 5.25, 0.0, 0.0))
    pool.append(("construction_vehicle", 32.0, 5.6, west, 0.0))
    # Parked cars in the car park of block (2, 2) and a motorcycle by the road.
    for k in range(8):
        pool.append(("car", -40.0 + 5.0 + 3.0 * k, 7.0 + 6.0 + 5.0, np.pi / 2, 0.0))
    pool.append(("motorcycle", -20.0, -6.2, east, 0.0))
    # Order: everything within ~70 m first (what cameras see), then the rest.
    near = [a for a in pool if np.hypot(a[1], a[2]) < 70.0]
    far = [a for a in pool if np.hypot(a[1], a[2]) >= 70.0]
    return near + far


def make_demo_scene(num_agents: int = 60, num_frames: int = 3, dt_s: float = 0.5, seed: int = 0) -> Scene:
    """The demo city with the nuScenes rig, `num_agents` agents and `num_frames` frames."""
    rng = np.random.default_rng(seed)
    pool = _agent_pool(rng)
    while len(pool) < num_agents:  # more agents than the pool: parked cars further along
        k = len(pool)
        pool.append(("car", 100.0 + 6.0 * k, -9.0 - 3.0 * (k % 2), 0.0, 0.0))
    pool = pool[:num_agents]
    classes = tuple(a[0] for a in pool)
    xy0 = np.array([[a[1], a[2]] for a in pool]).reshape(-1, 2)
    yaw = np.array([a[3] for a in pool], dtype=np.float64)
    speed = np.array([a[4] for a in pool], dtype=np.float64)
    size = np.array([_SIZES[c] for c in classes], dtype=np.float64).reshape(-1, 3)
    heading = np.stack([np.cos(yaw), np.sin(yaw)], axis=1).reshape(-1, 2)
    frames = []
    for t in range(num_frames):
        xy = xy0 + heading * (speed * dt_s * t)[:, None]
        center = np.column_stack([_to_world(xy), size[:, 2] / 2]).reshape(-1, 3)
        velocity = (heading * speed[:, None]) @ CITY_TO_WORLD[:2, :2].T
        agents = Agents(
            center=center,
            size=size,
            yaw=yaw + _CITY_YAW,
            classes=classes,
            track_ids=np.arange(num_agents),
            velocity=velocity.reshape(-1, 2),
        )
        ego_xy = _to_world(np.array([6.0 * dt_s * t, -1.75]))
        pose = rigid_transform(
            np.array(
                [[np.cos(_CITY_YAW), -np.sin(_CITY_YAW), 0], [np.sin(_CITY_YAW), np.cos(_CITY_YAW), 0], [0, 0, 1]]
            ),
            [ego_xy[0], ego_xy[1], 0.0],
        )
        frames.append(Frame(timestamp_us=1_533_151_603_512_404 + int(t * dt_s * 1e6), ego_to_world=pose, agents=agents))
    elements = tuple(
        MapElement(cls=cls, points=_to_world(pts), holes=tuple(_to_world(h) for h in holes))
        for cls, pts, holes in _city_map()
    )
    return Scene(
        cameras=nuscenes_rig(),
        frames=tuple(frames),
        map_elements=elements,
        source=SceneSource(dataset="synthetic", scene_id=f"demo-city-seed{seed}"),
    )
