"""One taxonomy for nuScenes and Waymo: source labels map to the ten detection classes, and
labels without a class are reported (counted), never silently dropped."""

import numpy as np
import pytest
from nuscenes.eval.detection.utils import category_to_detection_name

from conditions import BOX_CLASSES, MAP_CLASSES, UnknownClassError, map_nuscenes_categories, map_waymo_label_types
from conditions.taxonomy import (
    BOX_COLOURS,
    MAP_COLOURS,
    NUSCENES_CATEGORY_TO_CLASS,
    NUSCENES_MAP_LAYER_TO_CLASS,
    WAYMO_MAP_FEATURE_TO_CLASS,
    WAYMO_ROAD_LINE_TYPE_TO_CLASS,
)


class TestClasses:
    """The box classes are the devkit's ten detection classes; every class has a colour."""

    def test_box_classes_are_the_nuscenes_detection_classes(self):
        from nuscenes.eval.detection.constants import DETECTION_NAMES

        assert set(BOX_CLASSES) == set(DETECTION_NAMES) and len(BOX_CLASSES) == 10

    def test_every_class_has_a_distinct_colour(self):
        colours = [BOX_COLOURS[c] for c in BOX_CLASSES] + [MAP_COLOURS[c] for c in MAP_CLASSES]
        assert len(set(colours)) == len(colours)

    def test_map_tables_only_name_map_classes(self):
        for table in (NUSCENES_MAP_LAYER_TO_CLASS, WAYMO_MAP_FEATURE_TO_CLASS, WAYMO_ROAD_LINE_TYPE_TO_CLASS):
            assert {v for v in table.values() if v is not None} <= set(MAP_CLASSES)


class TestNuScenesMapping:
    """nuScenes categories map as the devkit's detection mapping does, except that every
    human.pedestrian.* is a pedestrian (deliberate: a generator must draw every person)."""

    def test_mapping_agrees_with_devkit_except_pedestrian_subclasses(self):
        for category, target in NUSCENES_CATEGORY_TO_CLASS.items():
            devkit = category_to_detection_name(category)
            if category.startswith("human.pedestrian."):
                assert target == "pedestrian"
            else:
                assert target == devkit, category

    def test_issue_examples_map_to_their_classes(self):
        result = map_nuscenes_categories(
            [
                "vehicle.car",
                "vehicle.bus.bendy",
                "vehicle.bus.rigid",
                "human.pedestrian.adult",
                "movable_object.barrier",
                "movable_object.trafficcone",
                "vehicle.construction",
                "vehicle.trailer",
                "vehicle.bicycle",
                "vehicle.motorcycle",
                "vehicle.truck",
            ]
        )
        assert result.classes == (
            "car",
            "bus",
            "bus",
            "pedestrian",
            "barrier",
            "traffic_cone",
            "construction_vehicle",
            "trailer",
            "bicycle",
            "motorcycle",
            "truck",
        )
        assert result.keep.all() and not result.report

    def test_known_and_unknown_labels_are_counted(self):
        result = map_nuscenes_categories(["animal", "vehicle.car", "animal", "flat.driveable_surface"])
        assert result.classes == (None, "car", None, None)
        np.testing.assert_array_equal(result.keep, [False, True, False, False])
        assert result.unmapped == {"animal": 2}
        assert result.unknown == {"flat.driveable_surface": 1}
        assert result.report == {"animal": 2, "flat.driveable_surface": 1}

    def test_strict_mode_raises_on_unknown_labels(self):
        with pytest.raises(UnknownClassError, match="flat.driveable_surface"):
            map_nuscenes_categories(["flat.driveable_surface"], strict=True)


class TestWaymoMapping:
    """Waymo Label.Type: VEHICLE -> car, PEDESTRIAN -> pedestrian, CYCLIST -> bicycle; SIGN and
    UNKNOWN have no class and are reported; ints and names are both accepted."""

    def test_label_types_map_by_value_and_name(self):
        result = map_waymo_label_types([1, 2, 3, 4, "TYPE_VEHICLE", 0])
        assert result.classes == ("car", "pedestrian", None, "bicycle", "car", None)
        assert result.unmapped == {"TYPE_SIGN": 1, "TYPE_UNKNOWN": 1}

    def test_unknown_label_type_is_reported(self):
        result = map_waymo_label_types([7, 1])
        assert result.unknown == {"7": 1} and result.classes == (None, "car")
