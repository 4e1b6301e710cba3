"""Writing videos people can look at: mp4 per camera and mosaics.

The generic video IO lives in :mod:`chopgrad_core.video` (one place for every package); these names
are re-exported so drivegen code keeps importing them from here.

Shape legend: T frames, K cameras, H W image size. Frames are float in [-1, 1] or uint8.
"""

from __future__ import annotations

from chopgrad_core.video import mosaic, read_video, to_uint8, write_mp4

__all__ = ["mosaic", "read_video", "to_uint8", "write_mp4"]
