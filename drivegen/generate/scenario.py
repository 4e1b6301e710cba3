"""Scenarios: a clip of the store (its log's map, ego path and agents) plus edits, as a new scene.

A scenario file (YAML or JSON; ``drivegen/generate/scenarios/sample_edit.yaml`` is the example):

    name: cut_in                      # output folder name (default: the file's stem)
    source: {store: null, clip: null} # store: null = the checkpoint's data.store; clip: null = its first clip
    frames: 13                        # generated length, 1 + 4k (null: the generate config's length)
    seed: null                        # null: sampler.seed
    remove: [3, 17]                   # source track ids (box_track in the store)
    insert:
      - id: cut_in_car
        class: car                    # conditions.BOX_CLASSES
        size: [4.5, 1.9, 1.6]         # length, width, height in metres (null: the class's typical size)
        waypoints:                    # t in seconds from the first frame; x forward, y left (metres)
          - {t: 0.0, x: 12.0, y: 3.5}
          - {t: 1.0, x: 18.0, y: 0.0, yaw: 0.0}   # yaw optional (radians; default: direction of travel)
    move:   [{track: 5, offset: [2.0, -1.0]}]           # metres, scenario frame
    retime: [{track: 8, delay_s: 0.5, speed_scale: 1.0}] # the agent follows its own path, later / faster
    ego: {speed_scale: 0.5}           # the ego follows its logged path at half speed
    text: {}                          # weather / time_of_day: only for models with text conditioning

The scenario frame is the ego frame of the clip's first frame (x forward, y left, origin on the
road surface). Times are seconds after the clip's first frame; the generated frames keep the
log's timestamps. Agents that no edit names keep their logged motion exactly.

Validation (`ScenarioError` names the scenario, the agent and the field): unknown keys and
classes, non-finite or non-monotonic times, references to tracks the clip does not have, agents
(and the ego, when it is edited) overlapping in 3D at the same instant when at least one of
them is edited, and edited trajectories that leave the map (``off_map``: error, warn or ignore).

Shape legend: N agents, T frames, W waypoints.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from conditions import BOX_CLASSES, MAP_POLYGON_CLASSES, Agents, Frame, Scene
from conditions.geometry import rigid_transform, yaw_of
from drivegen.errors import ScenarioError

__all__ = ["EgoEdit", "EditedScene", "InsertEdit", "MoveEdit", "RetimeEdit", "Scenario", "SourceSpec",
           "ValidationConfig", "Waypoint", "apply_edits", "load_scenario", "parse_scenario"]

# Typical (length, width, height) per class, metres (nuScenes averages, rounded): the default size
# of an inserted agent.
TYPICAL_SIZE = {
    "car": (4.6, 1.9, 1.7), "truck": (6.9, 2.5, 2.9), "construction_vehicle": (6.4, 2.8, 3.2),
    "bus": (11.0, 2.9, 3.5), "trailer": (12.3, 2.9, 3.9), "barrier": (0.5, 2.5, 1.0),
    "motorcycle": (2.1, 0.8, 1.5), "bicycle": (1.7, 0.6, 1.3), "pedestrian": (0.7, 0.7, 1.8),
    "traffic_cone": (0.4, 0.4, 1.1),
}
TEXT_KEYS = ("weather", "time_of_day")


# ---------------------------------------------------------------------------------------------
# The scenario model
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Waypoint:
    t: float
    """Seconds after the clip's first frame."""
    x: float
    """Metres forward in the scenario frame."""
    y: float
    """Metres left in the scenario frame."""
    yaw: Optional[float] = None
    """Heading in radians in the scenario frame; None: the direction of travel."""


@dataclass(kw_only=True)
class InsertEdit:
    id: str
    """Name of the new agent (unique in the scenario)."""
    cls: str
    """Box class (conditions.BOX_CLASSES); ``class`` in the file."""
    size: tuple[float, float, float]
    """(length, width, height) in metres."""
    waypoints: list[Waypoint]
    """Strictly increasing times; the agent exists from the first to the last one."""


@dataclass(kw_only=True)
class MoveEdit:
    track: int
    offset: tuple[float, float] = (0.0, 0.0)
    """Metres (forward, left) in the scenario frame, added at every instant."""
    yaw: float = 0.0
    """Radians added to the heading."""


@dataclass(kw_only=True)
class RetimeEdit:
    track: int
    delay_s: float = 0.0
    """The agent is where it was ``delay_s`` earlier."""
    speed_scale: float = 1.0
    """Its path is run through this many times faster (> 0)."""


@dataclass(kw_only=True)
class EgoEdit:
    speed_scale: float = 1.0
    """The ego follows its logged path this many times as fast (> 0)."""


@dataclass(kw_only=True)
class SourceSpec:
    store: Optional[str] = None
    """Clip store; None: the checkpoint's data.store."""
    clip: Optional[str] = None
    """Clip id in the store; None: its first clip (sorted) of the checkpoint's datasets."""


@dataclass(kw_only=True)
class Scenario:
    name: str
    source: SourceSpec = field(default_factory=SourceSpec)
    frames: Optional[int] = None
    seed: Optional[int] = None
    remove: list[int] = field(default_factory=list)
    insert: list[InsertEdit] = field(default_factory=list)
    move: list[MoveEdit] = field(default_factory=list)
    retime: list[RetimeEdit] = field(default_factory=list)
    ego: EgoEdit = field(default_factory=EgoEdit)
    text: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """sha256 of the canonical JSON of the parsed scenario (what the manifest records)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=float).encode()).hexdigest()


@dataclass(kw_only=True)
class ValidationConfig:
    """How strictly `apply_edits` checks a scenario (``validation`` in configs/generate.yaml)."""

    off_map: str = "warn"
    """An edited agent whose centre leaves every map polygon: error, warn or ignore."""
    overlap_m2: float = 0.05
    """Footprint intersection (m^2) above which two boxes whose heights overlap collide."""
    ego_size: list[float] = field(default_factory=lambda: [4.08, 1.73, 1.56])
    """(length, width, height) of the ego vehicle, metres (nuScenes' Renault Zoe)."""
    ego_center_x: float = 1.3
    """Box centre ahead of the ego origin (nuScenes: the rear axle), metres."""

    def __post_init__(self) -> None:
        from drivegen.errors import GenerateConfigError

        if self.off_map not in ("error", "warn", "ignore"):
            raise GenerateConfigError(f"validation.off_map={self.off_map!r}: choose error, warn or ignore")
        if self.overlap_m2 < 0:
            raise GenerateConfigError(f"validation.overlap_m2={self.overlap_m2} must be >= 0")
        if len(self.ego_size) != 3 or not all(s > 0 for s in self.ego_size):
            raise GenerateConfigError(f"validation.ego_size={list(self.ego_size)} must be 3 positive lengths")


# ---------------------------------------------------------------------------------------------
# Parsing: file -> Scenario (field-level errors)
# ---------------------------------------------------------------------------------------------


def load_scenario(path: str | Path) -> Scenario:
    """A scenario from a YAML or JSON file; its name defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(str(path), None, "file", f"{str(path)!r} does not exist; pass a scenario YAML/JSON file "
                                                     "(drivegen/generate/scenarios/sample_edit.yaml is an example)")
    text = path.read_text()
    if path.suffix == ".json":
        raw = json.loads(text)
    else:
        import yaml

        raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ScenarioError(path.stem, None, "file", f"{str(path)!r} holds {type(raw).__name__}; expected a mapping")
    raw.setdefault("name", path.stem)
    return parse_scenario(raw)


def _keys(raw: dict, allowed: tuple[str, ...], scenario: str, where: str, agent=None) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ScenarioError(scenario, agent, f"{where}{unknown[0]}",
                            f"unknown key; {where or 'the scenario'} takes {list(allowed)}")


def _number(value: Any, scenario: str, agent, fld: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(scenario, agent, fld, f"{value!r} is not a number")
    v = float(value)
    if not np.isfinite(v):
        raise ScenarioError(scenario, agent, fld, f"{value!r} is not finite; pass a finite number")
    if positive and v <= 0:
        raise ScenarioError(scenario, agent, fld, f"{value!r} must be > 0")
    return v


def _track(value: Any, scenario: str, fld: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(scenario, str(value), fld, f"{value!r} is not a track id (an integer: box_track in the store)")
    return int(value)


def _list(raw: dict, key: str, scenario: str) -> list:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise ScenarioError(scenario, None, key, f"expected a list, got {type(value).__name__}")
    return value


def parse_scenario(raw: dict[str, Any]) -> Scenario:
    """A scenario from a mapping (a parsed file); raises ScenarioError naming agent and field."""
    name = str(raw.get("name") or "")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ScenarioError(name or "?", None, "name", f"{name!r}: give a non-empty folder-safe name")
    _keys(raw, ("name", "source", "frames", "seed", "remove", "insert", "move", "retime", "ego", "text"), name, "")
    src = raw.get("source") or {}
    _keys(src, ("store", "clip"), name, "source.")
    frames = raw.get("frames")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % 4):
        raise ScenarioError(name, None, "frames", f"{frames!r}; the generated length is 1 + 4k frames (5, 9, 13, ...)")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ScenarioError(name, None, "seed", f"{seed!r} is not an integer")

    remove = [_track(v, name, f"remove[{i}]") for i, v in enumerate(_list(raw, "remove", name))]
    inserts = []
    for i, item in enumerate(_list(raw, "insert", name)):
        where = f"insert[{i}]."
        if not isinstance(item, dict):
            raise ScenarioError(name, None, f"insert[{i}]", "expected a mapping with id, class, size, waypoints")
        agent = str(item.get("id") or f"insert[{i}]")
        _keys(item, ("id", "class", "size", "waypoints"), name, where, agent)
        if not item.get("id"):
            raise ScenarioError(name, agent, where + "id", "every inserted agent needs an id (a name)")
        cls = item.get("class")
        if cls not in BOX_CLASSES:
            raise ScenarioError(name, agent, where + "class", f"{cls!r} is not a box class; valid: {list(BOX_CLASSES)}")
        size = item.get("size")
        if size is None:
            size = TYPICAL_SIZE[cls]
        if not isinstance(size, (list, tuple)) or len(size) != 3:
            raise ScenarioError(name, agent, where + "size", f"{size!r}; expected [length, width, height] in metres")
        size = tuple(_number(s, name, agent, f"{where}size[{j}]", positive=True) for j, s in enumerate(size))
        raw_wps = item.get("waypoints")
        if not isinstance(raw_wps, list) or not raw_wps:
            raise ScenarioError(name, agent, where + "waypoints", "expected a non-empty list of {t, x, y[, yaw]}")
        wps = []
        for j, wp in enumerate(raw_wps):
            wfield = f"{where}waypoints[{j}]"
            if isinstance(wp, (list, tuple)) and len(wp) in (3, 4):
                wp = dict(zip(("t", "x", "y", "yaw"), wp))
            if not isinstance(wp, dict):
                raise ScenarioError(name, agent, wfield, f"{wp!r}; expected {{t, x, y[, yaw]}} or [t, x, y[, yaw]]")
            _keys(wp, ("t", "x", "y", "yaw"), name, wfield + ".", agent)
            for key in ("t", "x", "y"):
                if key not in wp:
                    raise ScenarioError(name, agent, f"{wfield}.{key}", "missing")
            t = _number(wp["t"], name, agent, f"{wfield}.t")
            if wps and t <= wps[-1].t:
                raise ScenarioError(name, agent, f"{wfield}.t", f"{t} is not after waypoints[{j - 1}].t = {wps[-1].t}; "
                                                                "times must increase strictly")
            yaw = None if wp.get("yaw") is None else _number(wp["yaw"], name, agent, f"{wfield}.yaw")
            wps.append(Waypoint(t=t, x=_number(wp["x"], name, agent, f"{wfield}.x"),
                                y=_number(wp["y"], name, agent, f"{wfield}.y"), yaw=yaw))
        inserts.append(InsertEdit(id=agent, cls=cls, size=size, waypoints=wps))
    ids = [e.id for e in inserts]
    for e in inserts:
        if ids.count(e.id) > 1:
            raise ScenarioError(name, e.id, "insert[].id", "two inserted agents share this id; ids must be unique")

    moves = []
    for i, item in enumerate(_list(raw, "move", name)):
        where = f"move[{i}]."
        if not isinstance(item, dict) or "track" not in item:
            raise ScenarioError(name, None, f"move[{i}]", "expected {track, offset: [forward, left], yaw}")
        track = _track(item["track"], name, where + "track")
        _keys(item, ("track", "offset", "yaw"), name, where, str(track))
        off = item.get("offset", [0.0, 0.0])
        if not isinstance(off, (list, tuple)) or len(off) != 2:
            raise ScenarioError(name, str(track), where + "offset", f"{off!r}; expected [forward, left] metres")
        moves.append(MoveEdit(track=track, offset=tuple(_number(v, name, str(track), f"{where}offset[{j}]")
                                                        for j, v in enumerate(off)),
                              yaw=_number(item.get("yaw", 0.0), name, str(track), where + "yaw")))
    retimes = []
    for i, item in enumerate(_list(raw, "retime", name)):
        where = f"retime[{i}]."
        if not isinstance(item, dict) or "track" not in item:
            raise ScenarioError(name, None, f"retime[{i}]", "expected {track, delay_s, speed_scale}")
        track = _track(item["track"], name, where + "track")
        _keys(item, ("track", "delay_s", "speed_scale"), name, where, str(track))
        retimes.append(RetimeEdit(track=track, delay_s=_number(item.get("delay_s", 0.0), name, str(track), where + "delay_s"),
                                  speed_scale=_number(item.get("speed_scale", 1.0), name, str(track),
                                                      where + "speed_scale", positive=True)))
    ego_raw = raw.get("ego") or {}
    _keys(ego_raw, ("speed_scale",), name, "ego.", "ego")
    ego = EgoEdit(speed_scale=_number(ego_raw.get("speed_scale", 1.0), name, "ego", "ego.speed_scale", positive=True))
    text = raw.get("text") or {}
    if not isinstance(text, dict):
        raise ScenarioError(name, None, "text", f"expected a mapping of {list(TEXT_KEYS)}")
    _keys(text, TEXT_KEYS, name, "text.")
    for key, value in text.items():
        if not isinstance(value, str):
            raise ScenarioError(name, None, f"text.{key}", f"{value!r} is not a string")

    # The same source agent may not be removed and edited, nor edited twice by the same kind of edit.
    edited = [("remove", t) for t in remove] + [("move", e.track) for e in moves] + [("retime", e.track) for e in retimes]
    for kind, track in edited:
        kinds = [k for k, t in edited if t == track]
        if "remove" in kinds and len(kinds) > 1:
            raise ScenarioError(name, str(track), kind, "this track is removed and also edited; drop one of the two")
        if kinds.count(kind) > 1:
            raise ScenarioError(name, str(track), kind, f"this track appears twice in {kind}; merge the entries")
    return Scenario(name=name, source=SourceSpec(store=src.get("store"), clip=src.get("clip")), frames=frames,
                    seed=seed, remove=remove, insert=inserts, move=moves, retime=retimes, ego=ego, text=dict(text))


# ---------------------------------------------------------------------------------------------
# Applying edits: source scene -> edited scene
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditedScene:
    scene: Scene
    """The generated clip's scene: frames 0..T-1, the log's cameras and map."""
    names: dict[int, str]
    """Track id -> the agent's name in messages and labels ('12' for a source track, the id of an inserted one)."""
    edited: frozenset[int]
    """Track ids that an edit moved, retimed or inserted."""
    warnings: tuple[str, ...]


@dataclass
class _Track:
    """A source track over the source frames: times (s) and states where it is present."""

    t: np.ndarray  # (T,)
    center: np.ndarray  # (T, 3)
    size: np.ndarray  # (T, 3)
    yaw: np.ndarray  # (T,)
    cls: str

    def at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(present, center, size, yaw) at times t, linear between the source frames."""
        present = (t >= self.t[0] - 1e-9) & (t <= self.t[-1] + 1e-9)
        tc = np.clip(t, self.t[0], self.t[-1])
        center = np.stack([np.interp(tc, self.t, self.center[:, i]) for i in range(3)], axis=-1)
        size = np.stack([np.interp(tc, self.t, self.size[:, i]) for i in range(3)], axis=-1)
        yaw = np.interp(tc, self.t, np.unwrap(self.yaw))
        return present, center, size, yaw


def _tracks(frames: tuple[Frame, ...], t0_us: int) -> dict[int, _Track]:
    rows: dict[int, list] = {}
    for f in frames:
        a = f.agents
        for i, track in enumerate(a.track_ids):
            rows.setdefault(int(track), []).append(((f.timestamp_us - t0_us) * 1e-6, a.center[i], a.size[i], a.yaw[i],
                                                    a.classes[i]))
    return {k: _Track(np.array([r[0] for r in v]), np.array([r[1] for r in v]), np.array([r[2] for r in v]),
                      np.array([r[3] for r in v]), v[0][4]) for k, v in rows.items()}


def _ego_at(frames: tuple[Frame, ...], t0_us: int, t: np.ndarray) -> np.ndarray:
    """Ego poses (T, 4, 4) at times t along the logged path: position linear, rotation slerp."""
    from scipy.spatial.transform import Rotation, Slerp

    times = np.array([(f.timestamp_us - t0_us) * 1e-6 for f in frames])
    poses = np.stack([f.ego_to_world for f in frames])
    rot = Slerp(times, Rotation.from_matrix(poses[:, :3, :3]))(t).as_matrix()
    pos = np.stack([np.interp(t, times, poses[:, i, 3]) for i in range(3)], axis=-1)
    return np.stack([rigid_transform(r, p) for r, p in zip(rot, pos)])


def _velocity(center_T3: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.gradient(center_T3[:, :2], t, axis=0) if len(t) > 1 else np.full((len(t), 2), np.nan)


def apply_edits(scenario: Scenario, source: Scene, start: int, num_frames: int,
                validation: ValidationConfig | None = None) -> EditedScene:
    """The scene of the generated clip: frames start..start+num_frames-1 of `source`, edited.

    `source` is the whole log (its later frames give the ego path and agents beyond the clip);
    checks follow `validation` (errors raise ScenarioError; warnings are returned and emitted).
    """
    v = validation or ValidationConfig()
    name = scenario.name
    if start + num_frames > len(source.frames):
        raise ScenarioError(name, None, "frames", f"{num_frames} frames from log frame {start} run past the log's "
                                                  f"{len(source.frames)} frames; generate at most "
                                                  f"{len(source.frames) - start} (1 + 4k) or pick an earlier clip")
    frames_in = source.frames[start:]
    t0 = frames_in[0].timestamp_us
    times_us = np.array([f.timestamp_us for f in frames_in[:num_frames]], dtype=np.int64)
    t = (times_us - t0) * 1e-6  # (T,) seconds
    origin = frames_in[0].ego_to_world
    origin_yaw = yaw_of(origin)
    R2 = origin[:2, :2]

    def to_world_xy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.stack([x, y], -1) @ R2.T + origin[:2, 3]

    # 1. Ego: the logged path at speed_scale.
    t_ego = t * scenario.ego.speed_scale
    t_last = (frames_in[-1].timestamp_us - t0) * 1e-6
    if t_ego[-1] > t_last + 1e-9:
        raise ScenarioError(name, "ego", "ego.speed_scale",
                            f"{scenario.ego.speed_scale} drives {t_ego[-1]:.2f} s of the logged path in {t[-1]:.2f} s, "
                            f"past the log's end ({t_last:.2f} s after the clip's start); lower it or the length")
    ego = _ego_at(frames_in, t0, t_ego)  # (T, 4, 4)

    # 2. Source tracks: every agent of the clip's frames (and after: a retimed agent may come later).
    tracks = _tracks(frames_in, t0)
    in_clip = {int(k) for f in frames_in[:num_frames] for k in f.agents.track_ids}
    for fld, ids in (("remove", scenario.remove), ("move", [e.track for e in scenario.move]),
                     ("retime", [e.track for e in scenario.retime])):
        for i, track in enumerate(ids):
            if track not in in_clip:
                raise ScenarioError(name, str(track), f"{fld}[{i}]", f"track {track} is not in the clip's "
                                    f"{num_frames} frames; its tracks: {sorted(in_clip)}")
    moves = {e.track: e for e in scenario.move}
    retimes = {e.track: e for e in scenario.retime}
    # The scenario field behind each edited agent, for messages.
    fields = {e.track: f"move[{i}]" for i, e in enumerate(scenario.move)}
    fields |= {e.track: f"retime[{i}]" for i, e in enumerate(scenario.retime)}

    # 3. Every agent's states over the generated frames: (present, center, size, yaw, velocity).
    states: dict[int, tuple] = {}
    classes: dict[int, str] = {}
    names: dict[int, str] = {}
    for track, tr in tracks.items():
        if track in scenario.remove or track not in in_clip and track not in retimes:
            continue
        ts = t
        if track in retimes:
            ts = (t - retimes[track].delay_s) * retimes[track].speed_scale
        present, center, size, yaw = tr.at(ts)
        if track in moves:
            m = moves[track]
            center = center.copy()
            center[:, :2] += R2 @ np.array(m.offset)
            yaw = yaw + m.yaw
        if track in moves or track in retimes:
            vel = _velocity(center, t)
        else:  # untouched: the log's own velocities at the log's frames
            vel = np.array([f.agents.velocity[list(f.agents.track_ids).index(track)]
                            if track in f.agents.track_ids and f.agents.velocity is not None else [np.nan, np.nan]
                            for f in frames_in[:num_frames]], dtype=np.float64)
        states[track], classes[track], names[track] = (present, center, size, yaw, vel), tr.cls, str(track)
    next_id = max(list(tracks) + [-1]) + 1
    for n, e in enumerate(scenario.insert):
        wt = np.array([w.t for w in e.waypoints])
        wx, wy = np.array([w.x for w in e.waypoints]), np.array([w.y for w in e.waypoints])
        present = (t >= wt[0] - 1e-9) & (t <= wt[-1] + 1e-9)
        xy = to_world_xy(np.interp(t, wt, wx), np.interp(t, wt, wy))
        # Centre height: half the box above the road surface under the scenario origin.
        z = (origin @ np.array([0.0, 0.0, source.ground_height_m, 1.0]))[2] + e.size[2] / 2
        center = np.concatenate([xy, np.full((len(t), 1), z)], axis=1)
        if all(w.yaw is not None for w in e.waypoints):
            yaw_s = np.interp(t, wt, np.unwrap([w.yaw for w in e.waypoints]))
        else:  # the direction of travel of the segment each instant lies on (0 for a single waypoint)
            heading = np.arctan2(np.diff(wy), np.diff(wx)) if len(wt) > 1 else np.zeros(1)
            yaw_s = heading[np.clip(np.searchsorted(wt, t, side="right") - 1, 0, len(heading) - 1)]
        size = np.tile(np.array(e.size), (len(t), 1))
        vel = _velocity(center, t) if len(wt) > 1 else np.zeros((len(t), 2))
        states[next_id] = (present, center, size, yaw_s + origin_yaw, vel)
        classes[next_id], names[next_id], fields[next_id] = e.cls, e.id, f"insert[{n}].waypoints"
        next_id += 1
    edited = frozenset(fields)

    # 4. Checks: never present, 3D overlap at the same instant, off the map.
    found: list[str] = []
    for k in sorted(edited):
        if not states[k][0].any():
            found.append(f"scenario {name!r}: agent {names[k]!r} is never present in the generated "
                         f"{t[-1]:.2f} s (check its waypoint times / delay)")
    fields[-1] = "ego.speed_scale"
    _check_overlaps(name, states, names, fields, edited, ego, t, v, scenario.ego.speed_scale != 1.0)
    found += _check_map(name, source, states, names, fields, edited, t, v)
    for message in found:
        warnings.warn(message, stacklevel=2)

    # 5. Frames.
    order = sorted(states)
    out = []
    for i in range(len(t)):
        rows = [k for k in order if states[k][0][i]]
        out.append(Frame(timestamp_us=int(times_us[i]), ego_to_world=ego[i], agents=Agents(
            center=np.array([states[k][1][i] for k in rows]).reshape(-1, 3),
            size=np.array([states[k][2][i] for k in rows]).reshape(-1, 3),
            yaw=np.array([np.arctan2(np.sin(states[k][3][i]), np.cos(states[k][3][i])) for k in rows]),
            classes=tuple(classes[k] for k in rows), track_ids=np.array(rows, dtype=np.int64),
            velocity=np.array([states[k][4][i] for k in rows]).reshape(-1, 2))))
    scene = Scene(cameras=source.cameras, frames=tuple(out), map_elements=source.map_elements,
                  source=source.source, ground_height_m=source.ground_height_m)
    return EditedScene(scene=scene, names=names, edited=edited, warnings=tuple(found))


def _footprint(center, size, yaw):
    import shapely

    c, s = np.cos(yaw), np.sin(yaw)
    l, w = size[0] / 2, size[1] / 2
    pts = [(center[0] + c * dx - s * dy, center[1] + s * dx + c * dy) for dx, dy in ((l, w), (-l, w), (-l, -w), (l, -w))]
    return shapely.Polygon(pts)


def _check_overlaps(name, states, names, fields, edited, ego_T44, t, v: ValidationConfig, ego_edited: bool) -> None:
    """Two boxes collide when their heights overlap and their footprints intersect by more than
    v.overlap_m2; checked for every pair with an edited member (the ego counts when edited)."""
    ego_key = -1
    boxes = dict(states)
    el, ew, eh = v.ego_size
    ego_center = np.stack([T[:3, :3] @ np.array([v.ego_center_x, 0.0, eh / 2]) + T[:3, 3] for T in ego_T44])
    boxes[ego_key] = (np.ones(len(t), bool), ego_center, np.tile([el, ew, eh], (len(t), 1)),
                      np.array([yaw_of(T) for T in ego_T44]), None)
    names = {**names, ego_key: "ego"}
    focus = set(edited) | ({ego_key} if ego_edited else set())
    for i in range(len(t)):
        present = [k for k in boxes if boxes[k][0][i]]
        for a in sorted(focus):
            if a not in present:
                continue
            pa = _footprint(boxes[a][1][i], boxes[a][2][i], boxes[a][3][i])
            za = (boxes[a][1][i][2] - boxes[a][2][i][2] / 2, boxes[a][1][i][2] + boxes[a][2][i][2] / 2)
            for b in present:
                if b == a or (b in focus and b < a):
                    continue
                zb = (boxes[b][1][i][2] - boxes[b][2][i][2] / 2, boxes[b][1][i][2] + boxes[b][2][i][2] / 2)
                if min(za[1], zb[1]) <= max(za[0], zb[0]):
                    continue
                area = pa.intersection(_footprint(boxes[b][1][i], boxes[b][2][i], boxes[b][3][i])).area
                if area > v.overlap_m2:
                    raise ScenarioError(name, names[a], fields[a],
                                        f"overlaps agent {names[b]!r} in 3D at t = {t[i]:.3f} s (frame {i}; "
                                        f"{area:.2f} m^2 of footprint); change the trajectory or timing")


def _check_map(name, source: Scene, states, names, fields, edited, t, v: ValidationConfig) -> list[str]:
    if v.off_map == "ignore" or not edited:
        return []
    import shapely

    polys = [shapely.Polygon(el.points, [h for h in el.holes]) for el in source.map_elements
             if el.cls in MAP_POLYGON_CLASSES]
    if not polys:
        return [f"scenario {name!r}: the log's map has no polygons; off-map trajectories not checked"]
    area = shapely.union_all([p.buffer(0) for p in polys])
    out = []
    for k in sorted(edited):
        present, center = states[k][0], states[k][1]
        for i in np.nonzero(present)[0]:
            if not area.covers(shapely.Point(center[i][:2])):
                fld = fields[k]
                msg = (f"centre {np.round(center[i][:2], 2).tolist()} leaves the map at t = {t[i]:.3f} s (frame {i}); "
                       "keep it on the map or set validation.off_map=warn/ignore")
                if v.off_map == "error":
                    raise ScenarioError(name, names[k], fld, msg)
                out.append(f"scenario {name!r}: agent {names[k]!r}, field {fld}: {msg}")
                break
    return out
