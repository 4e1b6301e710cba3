"""One class taxonomy for nuScenes and Waymo: box classes, map classes, colours, source tables.

Box classes are the ten nuScenes detection classes, in the devkit's order; their index is the
`class id` used in box tokens. Map classes are split by geometry: polygon classes are filled,
polyline classes are stroked. Layout rasters put map classes first, then box classes (see
`conditions.layout.LAYOUT_CHANNELS`).

Source tables map a dataset's own labels onto the taxonomy:
- a label found in a table with a class maps to it;
- a label found in a table with `None` is known but deliberately not drawn (nuScenes 'animal',
  Waymo TYPE_SIGN); it is counted in `ClassMapping.unmapped`;
- a label in no table is counted in `ClassMapping.unknown` (or raises with `strict=True`).
Nothing is dropped silently: ingestion keeps the report in `SceneSource.unmapped_classes`.

nuScenes deviation, on purpose: all `human.pedestrian.*` map to pedestrian (the devkit's detection
mapping leaves out personal_mobility, stroller and wheelchair). A generator must draw every person
it sees; an undrawn person in a training video teaches the model to hallucinate people.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from conditions.errors import UnknownClassError

__all__ = [
    "BOX_CLASSES",
    "MAP_POLYGON_CLASSES",
    "MAP_LINE_CLASSES",
    "MAP_CLASSES",
    "BOX_CLASS_ID",
    "MAP_CLASS_ID",
    "BOX_COLOURS",
    "MAP_COLOURS",
    "NUSCENES_CATEGORY_TO_CLASS",
    "NUSCENES_MAP_LAYER_TO_CLASS",
    "WAYMO_LABEL_TYPE_TO_CLASS",
    "WAYMO_LABEL_TYPE_NAMES",
    "WAYMO_ROAD_LINE_TYPE_TO_CLASS",
    "WAYMO_MAP_FEATURE_TO_CLASS",
    "ClassMapping",
    "map_nuscenes_categories",
    "map_waymo_label_types",
    "box_class_ids",
]

# ---------------------------------------------------------------------------------------------
# Classes
# ---------------------------------------------------------------------------------------------

# The nuScenes detection classes in the devkit's order (nuscenes/eval/detection/config).
BOX_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
# Filled areas, in drawing order of the control image (later ones paint over earlier ones).
MAP_POLYGON_CLASSES: tuple[str, ...] = ("drivable_area", "carpark_area", "walkway", "ped_crossing")
# Stroked lines, drawn over the areas.
MAP_LINE_CLASSES: tuple[str, ...] = ("lane_divider", "road_divider", "road_edge", "stop_line")
MAP_CLASSES: tuple[str, ...] = MAP_POLYGON_CLASSES + MAP_LINE_CLASSES

BOX_CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(BOX_CLASSES)}
MAP_CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(MAP_CLASSES)}

# ---------------------------------------------------------------------------------------------
# Colours (RGB, uint8) for the control image. Chosen to be told apart at a glance on a dark
# background; map colours are muted so boxes stand out on top of them.
# ---------------------------------------------------------------------------------------------

MAP_COLOURS: dict[str, tuple[int, int, int]] = {
    "drivable_area": (72, 72, 72),
    "carpark_area": (105, 85, 50),
    "walkway": (95, 75, 120),
    "ped_crossing": (165, 165, 165),
    "lane_divider": (255, 255, 255),
    "road_divider": (255, 205, 0),
    "road_edge": (0, 230, 230),
    "stop_line": (255, 30, 30),
}
BOX_COLOURS: dict[str, tuple[int, int, int]] = {
    "car": (0, 100, 255),
    "truck": (255, 140, 0),
    "construction_vehicle": (230, 200, 0),
    "bus": (150, 40, 220),
    "trailer": (170, 90, 40),
    "barrier": (0, 160, 150),
    "motorcycle": (255, 95, 70),
    "bicycle": (60, 210, 60),
    "pedestrian": (255, 0, 255),
    "traffic_cone": (255, 150, 190),
}

# ---------------------------------------------------------------------------------------------
# Source tables
# ---------------------------------------------------------------------------------------------

_PEDESTRIAN_SUBCLASSES = (
    "adult",
    "child",
    "construction_worker",
    "police_officer",
    "personal_mobility",
    "stroller",
    "wheelchair",
)
# Every category of the nuScenes v1.0 taxonomy (category.json), so that a name missing here is
# a real surprise (e.g. a nuImages-only category) and is reported as unknown.
NUSCENES_CATEGORY_TO_CLASS: dict[str, str | None] = {
    "vehicle.car": "car",
    "vehicle.truck": "truck",
    "vehicle.construction": "construction_vehicle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.trailer": "trailer",
    "movable_object.barrier": "barrier",
    "vehicle.motorcycle": "motorcycle",
    "vehicle.bicycle": "bicycle",
    **{f"human.pedestrian.{sub}": "pedestrian" for sub in _PEDESTRIAN_SUBCLASSES},
    "movable_object.trafficcone": "traffic_cone",
    # Known, not one of the ten classes (the devkit's detection mapping drops them as well).
    "vehicle.emergency.ambulance": None,
    "vehicle.emergency.police": None,
    "animal": None,
    "movable_object.debris": None,
    "movable_object.pushable_pullable": None,
    "static_object.bicycle_rack": None,
}
# nuScenes map expansion layers (NuScenesMap). road_edge has no layer: ingestion derives it from
# the drivable area boundary. stop_line is a polygon layer there; ingestion passes its long axis
# as a line. Structural layers (lanes, road segments, blocks) carry no paint and are not drawn.
NUSCENES_MAP_LAYER_TO_CLASS: dict[str, str | None] = {
    "drivable_area": "drivable_area",
    "ped_crossing": "ped_crossing",
    "walkway": "walkway",
    "carpark_area": "carpark_area",
    "lane_divider": "lane_divider",
    "road_divider": "road_divider",
    "stop_line": "stop_line",
    "road_segment": None,
    "road_block": None,
    "lane": None,
    "lane_connector": None,
    "traffic_light": None,
}
# Waymo Open Dataset label.proto Label.Type.
WAYMO_LABEL_TYPE_NAMES: dict[int, str] = {
    0: "TYPE_UNKNOWN",
    1: "TYPE_VEHICLE",
    2: "TYPE_PEDESTRIAN",
    3: "TYPE_SIGN",
    4: "TYPE_CYCLIST",
}
WAYMO_LABEL_TYPE_TO_CLASS: dict[int, str | None] = {
    0: None,  # TYPE_UNKNOWN
    1: "car",  # TYPE_VEHICLE: Waymo does not split cars, trucks and buses
    2: "pedestrian",  # TYPE_PEDESTRIAN
    3: None,  # TYPE_SIGN: no box class for signs
    4: "bicycle",  # TYPE_CYCLIST: the rider and the bicycle share one box
}
# Waymo map_pb2.RoadLine.RoadLineType: white lines separate lanes of one direction (lane
# divider), yellow lines separate the two directions (road divider).
WAYMO_ROAD_LINE_TYPE_TO_CLASS: dict[int, str | None] = {
    0: None,  # TYPE_UNKNOWN
    1: "lane_divider",  # TYPE_BROKEN_SINGLE_WHITE
    2: "lane_divider",  # TYPE_SOLID_SINGLE_WHITE
    3: "lane_divider",  # TYPE_SOLID_DOUBLE_WHITE
    4: "road_divider",  # TYPE_BROKEN_SINGLE_YELLOW
    5: "road_divider",  # TYPE_BROKEN_DOUBLE_YELLOW
    6: "road_divider",  # TYPE_SOLID_SINGLE_YELLOW
    7: "road_divider",  # TYPE_SOLID_DOUBLE_YELLOW
    8: "road_divider",  # TYPE_PASSING_DOUBLE_YELLOW
}
# Waymo map_pb2.MapFeature oneof names (road_line goes through its own table above).
WAYMO_MAP_FEATURE_TO_CLASS: dict[str, str | None] = {
    "road_edge": "road_edge",
    "crosswalk": "ped_crossing",
    "driveway": "drivable_area",
    "lane": None,  # lane centre lines: no paint on the road
    "stop_sign": None,
    "speed_bump": None,
}


@dataclass(frozen=True, slots=True)
class ClassMapping:
    """Result of mapping source labels onto the taxonomy.

    `classes[i]` is the box class of input i, or None when it has none. `keep` is the boolean
    mask of inputs with a class (use it to select boxes). `unmapped` counts known source labels
    without a class; `unknown` counts labels that no table knows. Both go into the scene's
    `SceneSource.unmapped_classes` so nothing disappears unreported.
    """

    classes: tuple[str | None, ...]
    keep: np.ndarray
    unmapped: dict[str, int]
    unknown: dict[str, int]

    @property
    def report(self) -> dict[str, int]:
        """Every label that was not mapped (known and unknown), with its count."""
        return {**self.unmapped, **self.unknown}


def _map_labels(
    labels: Iterable[object],
    table: dict,
    display: dict | None,
    source: str,
    strict: bool,
) -> ClassMapping:
    classes: list[str | None] = []
    unmapped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for label in labels:
        name = display.get(label, str(label)) if display is not None else str(label)
        if label in table:
            target = table[label]
            if target is None:
                unmapped[name] += 1
            classes.append(target)
        else:
            unknown[name] += 1
            classes.append(None)
    if strict and unknown:
        raise UnknownClassError(
            f"{source} labels {sorted(unknown)} are in no {source} table of conditions.taxonomy "
            f"(counts {dict(unknown)}); add them to the table with a class or None, "
            f"or call with strict=False to have them reported in ClassMapping.unknown"
        )
    keep = np.array([c is not None for c in classes], dtype=bool)
    return ClassMapping(tuple(classes), keep, dict(unmapped), dict(unknown))


def map_nuscenes_categories(categories: Iterable[str], *, strict: bool = False) -> ClassMapping:
    """Map nuScenes category names ('vehicle.car', ...) onto `BOX_CLASSES`."""
    return _map_labels(categories, NUSCENES_CATEGORY_TO_CLASS, None, "nuScenes", strict)


def map_waymo_label_types(label_types: Iterable[int | str], *, strict: bool = False) -> ClassMapping:
    """Map Waymo Label.Type values (ints, or names like 'TYPE_VEHICLE') onto `BOX_CLASSES`."""
    by_name = {name: value for value, name in WAYMO_LABEL_TYPE_NAMES.items()}
    as_ints = [by_name.get(t, t) if isinstance(t, str) else int(t) for t in label_types]
    return _map_labels(as_ints, WAYMO_LABEL_TYPE_TO_CLASS, WAYMO_LABEL_TYPE_NAMES, "Waymo", strict)


def box_class_ids(names: Iterable[str], field: str = "classes") -> np.ndarray:
    """Class ids (int64) of box class names; raises UnknownClassError listing every bad name."""
    names = list(names)
    bad = sorted({(i, n) for i, n in enumerate(names) if n not in BOX_CLASS_ID}, key=lambda x: x[0])
    if bad:
        shown = ", ".join(f"[{i}]={n!r}" for i, n in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise UnknownClassError(
            f"{field} has names outside the box taxonomy: {shown}{more}. Valid names: "
            f"{list(BOX_CLASSES)}. Map source labels first with "
            f"conditions.taxonomy.map_nuscenes_categories / map_waymo_label_types."
        )
    return np.array([BOX_CLASS_ID[n] for n in names], dtype=np.int64)
