"""How far the global-shutter projection is off for Waymo's rolling-shutter cameras, measured.

    python -m drivegen.data.ingest.rolling_shutter                        # the sample rig at the store's size
    python -m drivegen.data.ingest.rolling_shutter --segment seg.tfrecord # that segment's rig and readout times
    python -m drivegen.data.ingest.rolling_shutter --image-size 256 448 --speed 15 --yaw-rate-deg 0 20 --readout-ms 10 20 30

Waymo cameras read their image out column by column (`CameraCalibration.rolling_shutter_direction`;
`CameraImage.camera_trigger_time`, `camera_readout_done_time` and `shutter` per image, the image
`pose` at the middle column). `conditions` projects every pixel at one pose (a global shutter), so
a column read `dt` away from the middle sees the world from where the car is at `dt`. For a static
point at depth z, with the ego at speed v and yaw rate w, a column `dt` off moves by about
f * (w * dt + v * dt * sin(angle to the axis) / z) pixels: rotation shifts every column alike,
translation matters near (side cameras, close objects).

This module measures it: back-project a grid of pixels at given depths (static points), re-project
each with the ego pose at its own column's time (fixed point: the column depends on where the
point lands), and report the pixel distance at the store's resolution. It is not modelled in the
conditions; datasets/README.md gives the figures.

Shape legend: N points.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from conditions import Camera
from conditions.geometry import invert_rigid, scale_intrinsics

__all__ = ["DIRECTIONS", "readout_seconds", "rolling_shutter_error_px"]

# dataset_pb2.CameraCalibration.RollingShutterReadOutDirection -> (axis, sign): the image axis read
# out over time (0 = columns u, 1 = rows v) and whether it is read in increasing order.
DIRECTIONS = {1: (1, +1), 2: (0, +1), 3: (1, -1), 4: (0, -1)}  # TOP_TO_BOTTOM, LEFT_TO_RIGHT, BOTTOM_TO_TOP, RIGHT_TO_LEFT


def _ego_motion(points_N3: np.ndarray, dt_N: np.ndarray, speed: float, yaw_rate: float) -> np.ndarray:
    """Static points given in the ego frame at t=0, in the ego frame at t=dt (ego moving forward at
    `speed` m/s while turning at `yaw_rate` rad/s: constant curvature)."""
    theta = yaw_rate * dt_N
    # Ego displacement along the arc (radius speed / yaw_rate), in the t=0 ego frame.
    if abs(yaw_rate) > 1e-9:
        r = speed / yaw_rate
        dx, dy = r * np.sin(theta), r * (1 - np.cos(theta))
    else:
        dx, dy = speed * dt_N, np.zeros_like(dt_N)
    p = points_N3 - np.stack([dx, dy, np.zeros_like(dx)], axis=1)
    c, s = np.cos(-theta), np.sin(-theta)
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1], p[:, 2]], axis=1)


def rolling_shutter_error_px(camera: Camera, image_hw: tuple[int, int], depths_m=(5.0, 10.0, 20.0, 40.0, 80.0),
                             speed_mps: float = 15.0, yaw_rate_rps: float = 0.0, readout_s: float = 0.02,
                             direction: int = 2, grid: int = 17) -> dict[float, np.ndarray]:
    """Per depth: the pixel error (N,) at `image_hw` of static points seen on a grid x grid pixel
    lattice at that depth, rolling shutter (readout over `readout_s`, `direction` as Waymo's enum)
    against the global-shutter projection at the middle column's pose."""
    H, W = image_hw
    K = scale_intrinsics(camera.intrinsics, camera.image_size, (H, W))
    Kinv = np.linalg.inv(K)
    ego_from_cam = camera.cam_to_ego
    cam_from_ego = invert_rigid(ego_from_cam)
    axis, sign = DIRECTIONS[direction]
    extent = (W, H)[axis]
    u, v = np.meshgrid(np.linspace(0, W - 1, grid), np.linspace(0, H - 1, grid))
    uv1 = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    out = {}
    for depth in depths_m:
        p_cam = (uv1 @ Kinv.T) * depth  # z = depth
        p_ego = p_cam @ ego_from_cam[:3, :3].T + ego_from_cam[:3, 3]
        uv = uv1[:, :2].copy()
        for _ in range(6):  # the readout time depends on where the point lands: fixed point
            frac = uv[:, axis] / extent if sign > 0 else 1 - uv[:, axis] / extent
            dt = (frac - 0.5) * readout_s
            q_ego = _ego_motion(p_ego, dt, speed_mps, yaw_rate_rps)
            q_cam = q_ego @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]
            proj = q_cam @ K.T
            uv = proj[:, :2] / proj[:, 2:3]
        out[float(depth)] = np.linalg.norm(uv - uv1[:, :2], axis=1)
    return out


def readout_seconds(segment: str) -> dict[str, float]:
    """Median readout time per camera of a Waymo segment: camera_readout_done_time - trigger time -
    shutter (the exposure of one column), over its images; cameras without timing are left out."""
    from waymo_open_dataset import dataset_pb2

    from drivegen.data.ingest.tfrecord import iter_records

    times: dict[str, list[float]] = {}
    for _, payload in iter_records(segment):
        frame = dataset_pb2.Frame.FromString(payload)
        for img in frame.images:
            if img.camera_readout_done_time > 0 and img.camera_trigger_time > 0:
                name = dataset_pb2.CameraName.Name.Name(img.name)
                times.setdefault(name, []).append(img.camera_readout_done_time - img.camera_trigger_time - img.shutter)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segment", help="a Waymo .tfrecord: its rig, directions and readout times")
    parser.add_argument("--image-size", nargs=2, type=int, default=(256, 448), metavar=("H", "W"),
                        help="the store's conditions.image_size (default 256 448, configs/preprocess.yaml)")
    parser.add_argument("--speed", type=float, default=15.0, help="ego speed, m/s")
    parser.add_argument("--yaw-rate-deg", nargs="+", type=float, default=(0.0, 20.0), help="ego yaw rates, deg/s")
    parser.add_argument("--readout-ms", nargs="+", type=float, default=(10.0, 20.0, 30.0),
                        help="readout times when the segment gives none, ms")
    args = parser.parse_args(argv)
    hw = tuple(args.image_size)
    if args.segment:
        from drivegen.data.ingest import LogRef, open_log

        reader = open_log(LogRef("waymo", args.segment, args.segment))
        cameras, measured = reader.scene.cameras, readout_seconds(args.segment)
    else:
        from drivegen.data.sample_data import sample_waymo_cameras

        cameras, measured = sample_waymo_cameras((144, 256)), {}
    print(f"rolling-shutter error at {hw[0]}x{hw[1]} (static points; speed {args.speed} m/s), pixels: max over the image")
    print("| camera | readout ms | yaw rate deg/s | 5 m | 10 m | 20 m | 40 m | 80 m |")
    print("|---|---|---|---|---|---|---|---|")
    for cam in cameras:
        readouts = [measured[cam.name]] if cam.name in measured else [r / 1e3 for r in args.readout_ms]
        for readout in readouts:
            for w in args.yaw_rate_deg:
                err = rolling_shutter_error_px(cam, hw, speed_mps=args.speed, yaw_rate_rps=np.radians(w),
                                               readout_s=readout)
                cells = " | ".join(f"{e.max():.1f}" for e in err.values())
                print(f"| {cam.name} | {readout * 1e3:.0f} | {w:.0f} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
