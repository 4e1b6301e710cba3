"""conditions: a driving scene -> the tensors that control generation.

Pure scene -> numpy code: no dataset formats (ingestion maps nuScenes / Waymo into `Scene`), no
model, no file IO (except `python -m conditions.preview`, which writes a PNG of a demo scene).

    scene = Scene(cameras=..., frames=..., map_elements=..., source=...)
    out = render_frame(scene, frame_index=0, config=LayoutConfig(image_size=(256, 448)))
    out.layout_KCHW, out.control_KHW3, out.box_corners_KS82, out.plucker_K6hw, out.bev_CHW, ...

Conventions are in `conditions.geometry` (frames, pixels, box size order) and channel layouts in
`conditions.layout`, `conditions.bev` and `conditions.tokens`.
"""

from conditions.bev import BEV_CHANNELS, BevConfig, render_bev
from conditions.errors import (
    ConditionsError,
    FrameIndexError,
    InvalidBoxError,
    InvalidCameraError,
    InvalidConfigError,
    InvalidMapError,
    InvalidPoseError,
    InvalidSceneError,
    UnknownCameraError,
    UnknownClassError,
)
from conditions.layout import (
    DEPTH_CHANNEL,
    INSTANCE_CHANNEL,
    LAYOUT_CHANNELS,
    LayoutConfig,
    control_from_layout,
    depth_from_layout,
)
from conditions.render import FrameConditions, render_frame
from conditions.scene import Agents, Camera, Frame, MapElement, Scene, SceneSource
from conditions.taxonomy import (
    BOX_CLASSES,
    MAP_CLASSES,
    MAP_LINE_CLASSES,
    MAP_POLYGON_CLASSES,
    ClassMapping,
    map_nuscenes_categories,
    map_waymo_label_types,
)
from conditions.tokens import BOX_PARAM_NAMES

__all__ = [
    "Agents",
    "BEV_CHANNELS",
    "BOX_CLASSES",
    "BOX_PARAM_NAMES",
    "BevConfig",
    "Camera",
    "ClassMapping",
    "ConditionsError",
    "DEPTH_CHANNEL",
    "Frame",
    "FrameConditions",
    "FrameIndexError",
    "INSTANCE_CHANNEL",
    "InvalidBoxError",
    "InvalidCameraError",
    "InvalidConfigError",
    "InvalidMapError",
    "InvalidPoseError",
    "InvalidSceneError",
    "LAYOUT_CHANNELS",
    "LayoutConfig",
    "MAP_CLASSES",
    "MAP_LINE_CLASSES",
    "MAP_POLYGON_CLASSES",
    "MapElement",
    "Scene",
    "SceneSource",
    "UnknownCameraError",
    "UnknownClassError",
    "control_from_layout",
    "depth_from_layout",
    "map_nuscenes_categories",
    "map_waymo_label_types",
    "render_bev",
    "render_frame",
]
