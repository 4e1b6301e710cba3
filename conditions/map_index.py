"""A clipping index over a scene's static map (shapely 2, vectorised).

Built once per scene: the polygons of each class are unioned (OpenCV's fillPoly fills with the
even-odd rule, so two overlapping walkway polygons drawn in one call would cancel where they
overlap; after the union they cannot overlap) and split into parts; lines stay as they are. An
STRtree over all parts answers "what lies in this view?".

`clip` moves those candidates into a frame chosen by the caller and clips them there in one
vectorised call, with GEOS' rectangle clipper when the region is an axis-aligned rectangle in
that frame (cameras and the BEV arrange for it: ~10x faster than a general intersection). It
returns flat paths (rings of polygons, and lines) sorted by class, so a renderer draws each class
with one fillPoly / polylines call.

Shape legend: G indexed geometries, R paths (rings or lines), Q points.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import shapely

from conditions.geometry import SHIFT_BITS
from conditions.taxonomy import MAP_CLASS_ID, MAP_CLASSES, MAP_POLYGON_CLASSES

__all__ = ["ClippedMap", "MapIndex", "draw_map"]

_NUM_POLYGON_CLASSES = len(MAP_POLYGON_CLASSES)
_POLYGON, _LINESTRING, _LINEARRING = 3, 1, 2  # shapely.get_type_id values
# Unioned areas are cut into tiles of this size, so a view only clips the few tiles it meets
# instead of a city-wide polygon with thousands of vertices. Tiles share edges exactly, which
# the even-odd fill draws seamlessly.
_TILE_M = 40.0


@dataclass(frozen=True, slots=True)
class ClippedMap:
    """Map paths inside a region, in world x/y.

    Path r has points coords_Q2[offsets_R1[r]:offsets_R1[r + 1]] and class path_class_R (index in
    MAP_CLASSES). Paths of polygon classes are closed rings (exteriors and holes, filled together
    with the even-odd rule); paths of line classes are open lines. Sorted by class.
    """

    coords_Q2: np.ndarray
    offsets_R1: np.ndarray
    path_class_R: np.ndarray

    @staticmethod
    def empty() -> "ClippedMap":
        return ClippedMap(np.zeros((0, 2)), np.zeros(1, np.int64), np.zeros(0, np.int64))

    def class_ranges(self) -> list[tuple[int, int, int]]:
        """(class id, first path, end path) for each class present."""
        if len(self.path_class_R) == 0:
            return []
        classes, starts = np.unique(self.path_class_R, return_index=True)
        ends = np.append(starts[1:], len(self.path_class_R))
        return list(zip(classes.tolist(), starts.tolist(), ends.tolist()))


class MapIndex:
    """Per-class unioned map geometry with an STRtree; see the module docstring."""

    def __init__(self, elements) -> None:
        geoms, classes = [], []
        for cls in MAP_CLASSES:
            members = [e for e in elements if e.cls == cls]
            if not members:
                continue
            if cls in MAP_POLYGON_CLASSES:
                polys = [shapely.Polygon(e.points, [h for h in e.holes]) for e in members]
                # Source polygons are sometimes self-intersecting; make_valid keeps their area.
                merged = shapely.union_all(shapely.make_valid(np.array(polys, dtype=object)))
                parts = shapely.get_parts(shapely.get_parts(merged))  # collections may nest once
                parts = _tiles(parts[shapely.get_type_id(parts) == _POLYGON])
            else:
                parts = [shapely.LineString(e.points) for e in members]
            geoms.append(np.asarray(parts, dtype=object))
            classes.append(np.full(len(parts), MAP_CLASS_ID[cls], dtype=np.int64))
        self.geoms_G = np.concatenate(geoms) if geoms else np.zeros(0, dtype=object)
        self.class_G = np.concatenate(classes) if classes else np.zeros(0, dtype=np.int64)
        self.tree = shapely.STRtree(self.geoms_G)

    def __len__(self) -> int:
        return len(self.geoms_G)

    def clip(
        self,
        query_region: shapely.Geometry,
        world_to_frame_33: np.ndarray,
        clip_to: tuple[float, float, float, float] | shapely.Geometry,
        max_segment_m: float | None = None,
    ) -> ClippedMap:
        """Map paths that meet `query_region`, moved into a frame and clipped there.

        query_region: world x/y polygon; geometries not meeting it are skipped (STRtree).
        world_to_frame_33: homogeneous 2D affine map from world x/y into the clipping frame.
        clip_to: (xmin, ymin, xmax, ymax) in the frame, clipped with GEOS' fast rectangle
            clipper, or any polygon in the frame (a general, ~10x slower, intersection).
        max_segment_m: cut longer segments into pieces (for lenses that bend straight lines).
        Returns coordinates in the frame, sorted by class.
        """
        if len(self.geoms_G) == 0 or query_region is None or query_region.is_empty:
            return ClippedMap.empty()
        idx = np.sort(self.tree.query(query_region, predicate="intersects"))
        if len(idx) == 0:
            return ClippedMap.empty()
        A_22, b_2 = world_to_frame_33[:2, :2], world_to_frame_33[:2, 2]
        moved = shapely.transform(self.geoms_G[idx], lambda xy: xy @ A_22.T + b_2)
        if isinstance(clip_to, tuple):
            try:
                clipped = shapely.clip_by_rect(moved, *clip_to)
            except shapely.errors.GEOSException:  # degenerate input (the general path copes)
                clipped = shapely.intersection(moved, shapely.box(*clip_to))
        else:
            clipped = shapely.intersection(moved, clip_to)
        if max_segment_m is not None:
            clipped = shapely.segmentize(clipped, max_segment_m)
        parts, part_of = shapely.get_parts(clipped, return_index=True)
        part_class = self.class_G[idx][part_of]
        types = shapely.get_type_id(parts)
        # Clipping can degenerate (a polygon touching the region's edge yields a line or a
        # point); only keep the geometry type each class is drawn with.
        is_area = part_class < _NUM_POLYGON_CLASSES
        polys = parts[(types == _POLYGON) & is_area]
        poly_class = part_class[(types == _POLYGON) & is_area]
        line_mask = ((types == _LINESTRING) | (types == _LINEARRING)) & ~is_area
        rings, ring_of = shapely.get_rings(polys, return_index=True)
        paths = np.concatenate([rings, parts[line_mask]])
        path_class = np.concatenate([poly_class[ring_of], part_class[line_mask]])
        if len(paths) == 0:
            return ClippedMap.empty()
        order = np.argsort(path_class, kind="stable")
        paths, path_class = paths[order], path_class[order]
        coords, path_of = shapely.get_coordinates(paths, return_index=True)
        offsets = np.zeros(len(paths) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(np.bincount(path_of, minlength=len(paths)))
        return ClippedMap(coords, offsets, path_class)


def _tiles(polygons: np.ndarray) -> np.ndarray:
    """Cut polygons larger than a tile along a world grid (polygons, holes kept)."""
    out = []
    for polygon in polygons:
        x0, y0, x1, y1 = polygon.bounds
        if max(x1 - x0, y1 - y0) <= _TILE_M:
            out.append(polygon)
            continue
        gx = np.arange(np.floor(x0 / _TILE_M), np.ceil(x1 / _TILE_M)) * _TILE_M
        gy = np.arange(np.floor(y0 / _TILE_M), np.ceil(y1 / _TILE_M)) * _TILE_M
        cx, cy = np.meshgrid(gx, gy)
        cells = shapely.box(cx.ravel(), cy.ravel(), cx.ravel() + _TILE_M, cy.ravel() + _TILE_M)
        pieces = shapely.get_parts(shapely.intersection(polygon, cells))
        out.extend(pieces[shapely.get_type_id(pieces) == _POLYGON])
    parts = np.array(out, dtype=object)
    # Zero-area leftovers fill no pixel and make GEOS' rectangle clipper fail.
    return parts[shapely.area(parts) > 1e-9] if len(parts) else parts


def draw_map(
    raster_CHW: np.ndarray,
    clipped: ClippedMap,
    px_Q2: np.ndarray,
    line_width_px: int,
    top_HW: np.ndarray | None = None,
) -> None:
    """Fill polygon classes and stroke line classes into their channels (channel = class id).

    px_Q2: the clipped map's points as int32 fixed-point pixels (SHIFT_BITS fractional bits).
    top_HW: if given, also paint class id + 1 there, classes in order, so it ends up holding the
    topmost class of each pixel (drawing again is cheaper than merging 8 channels per pixel).
    """
    paths = np.split(px_Q2, clipped.offsets_R1[1:-1])
    for cls, start, end in clipped.class_ranges():
        images = [(raster_CHW[cls], 1)] + ([] if top_HW is None else [(top_HW, cls + 1)])
        for image, value in images:
            if cls < _NUM_POLYGON_CLASSES:
                cv2.fillPoly(image, paths[start:end], value, cv2.LINE_8, SHIFT_BITS)
            else:
                cv2.polylines(image, paths[start:end], False, value, line_width_px, cv2.LINE_8, SHIFT_BITS)
