"""``python -m chopgrad_core.restore CHECKPOINT INPUT OUTPUT.mp4``: apply a trained head to a video.

INPUT is an mp4 file or a frame folder: the low-resolution video (sr), the video with holes (inpaint,
with ``--mask``; without it the task's configured mask is used) or the degraded render (enhance).
The whole video goes through the model at once (the transformer attends over all of it; the decoder
streams), so its frame count must be one the VAE accepts (1 + 4k) unless ``--trim`` drops the last
frames. Frames whose size is not a multiple of the model's are padded (edge replication) and
cropped back. The output keeps the input's frame rate; it is written atomically.

Shape legend: c channels, F frames, H W size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from chopgrad_core.heads import load_checkpoint
from chopgrad_core.heads.inpaint import fit_mask, load_mask
from chopgrad_core.heads.restoration import check_frames
from chopgrad_core.video import read_video, to_float, to_uint8, video_fps, write_mp4


def restore_video(checkpoint: str | Path, input: str | Path, output: str | Path, *, mask: str | Path | None = None,
                  trim: bool = False, device: str = "cpu", fps: float | None = None) -> Path:
    """Restore ``input`` with the head in ``checkpoint`` and write ``output`` (mp4). Returns its path."""
    if device == "cpu":
        torch.set_flush_denormal(True)
    model, head, _ = load_checkpoint(checkpoint, device)
    frames = read_video(input)  # (F H W 3) uint8; VideoError names the file
    n = frames.shape[0]
    if trim and n > 1:
        frames = frames[: 1 + 4 * ((n - 1) // 4)]
    check_frames(frames.shape[0], f"video {str(input)!r}")
    video = to_float(frames)[None]  # (1 c F h w)
    m = None
    if mask is not None:
        if head.name != "inpaint":
            raise ValueError(f"--mask is for inpainting heads; {str(checkpoint)!r} is a {head.name} head")
        m = fit_mask(load_mask(mask), video.shape[2], tuple(video.shape[-2:]), repr(str(mask)))[None, None]

    # Pad the output grid to the model's multiple; crop back after.
    scale = getattr(head.config, "scale", 1)
    h, w = video.shape[-2] * scale, video.shape[-1] * scale
    mult = model.size_multiple
    step = mult // scale if mult % scale == 0 else mult
    ph, pw = -video.shape[-2] % step, -video.shape[-1] % step
    if ph or pw:
        video = F.pad(video.flatten(1, 2), (0, pw, 0, ph), mode="replicate").unflatten(1, video.shape[1:3])
        if m is not None:
            m = F.pad(m.flatten(1, 2), (0, pw, 0, ph)).unflatten(1, m.shape[1:3])
    sample = head.prepare(video, m)
    restored = model.restore(head, sample.to(device))[0, :, :, :h, :w]  # (c F H W)
    return write_mp4(output, to_uint8(restored.transpose(0, 1)), fps=fps or video_fps(input))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="head.safetensors written by python -m chopgrad_core.finetune")
    ap.add_argument("input", help="mp4 file or frame folder")
    ap.add_argument("output", help="mp4 file to write")
    ap.add_argument("--mask", help="inpaint: mask image, mp4 or frame folder (white = missing)")
    ap.add_argument("--trim", action="store_true", help="drop the last frames down to 1 + 4k")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's)")
    args = ap.parse_args(argv)
    out = restore_video(args.checkpoint, args.input, args.output, mask=args.mask, trim=args.trim,
                        device=args.device, fps=args.fps)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
