"""``python -m drivegen.preview``: look at any log, store clip or generated scenario.

    python -m drivegen.preview                                               # datasets/sample: first log, frame 0
    python -m drivegen.preview source=datasets/sample log=segment-drivegen-sample-0001_with_camera_labels
    python -m drivegen.preview source=/data/nuscenes log=scene-0061 frame=20 num_frames=40   # an mp4
    python -m drivegen.preview source=datasets/clips.zarr clip=scene-drivegen-0001__000008
    python -m drivegen.preview source=outputs/generate/sample_edit num_frames=0               # the whole video

One picture per frame (a PNG for one frame, an mp4 for several): every camera of the source,
named as the source names them and laid out by where they look (nuScenes' six in two rows,
Waymo's five in one); on top the camera images with the projected 3D boxes (class colours) and
the map (the layout's map classes, blended) drawn over them, or the same over black where the
source has no image; below, the control images; on the right, the BEV. The caption names the
source and frame and says what the source left out (no map, classes not drawn, cameras without
images, frames outside the annotated span: the readers' `dropped`).

Modules: ``config`` (PreviewConfig, mirrored by configs/preview.yaml), ``sources`` (any source ->
PreviewClip, with the store's own rendering code), ``draw`` (one frame -> picture). It reads
files only: it does not import the preprocess / train / generate stages.
"""

from drivegen.preview.config import PreviewConfig
from drivegen.preview.draw import compose_frame, overlay
from drivegen.preview.sources import PreviewClip, load_source

__all__ = ["PreviewClip", "PreviewConfig", "compose_frame", "load_source", "overlay", "preview"]


def preview(cfg: PreviewConfig):
    """Write the preview of `cfg` (PNG for one frame, mp4 for several); return its path."""
    from pathlib import Path

    import numpy as np

    from chopgrad_core.atomic import write_png

    clip = load_source(cfg)
    T = len(clip.arrays["frame_index"])
    suffix = ".png" if T == 1 else ".mp4"
    out = Path(cfg.out) if cfg.out else Path("outputs/preview") / f"{clip.name}_{cfg.frame:04d}{suffix}"
    if T == 1:
        write_png(out, compose_frame(clip, 0))
    else:
        from chopgrad_core.video import Mp4Writer

        with Mp4Writer(out, cfg.fps) as writer:
            for t in range(T):
                writer.append(np.asarray(compose_frame(clip, t))[None])
    return out
