"""``python -m chopgrad_core.heads.restore CHECKPOINT INPUT OUTPUT.mp4``: apply a trained head to a video.

INPUT is an mp4 file or a frame folder: the low-resolution video (sr), the video with holes (inpaint,
with ``--mask``; without it the task's configured mask is used) or the degraded render (enhance).
The whole video goes through the model at once (the transformer attends over all of it; the decoder
streams), so its frame count must be one the VAE accepts (1 + 4k) unless ``--trim`` drops the last
frames. Frames whose size is not a multiple of the model's are padded (edge replication) and
cropped back. The output folder is checked for write access before the model is loaded; the mp4 is
written atomically (``chopgrad_core.video.Mp4Writer``).

Options (one per keyword argument of :func:`restore_video`; ``tests/heads/test_head_configs.py``
checks the parser, this list and the README against each other):

- ``checkpoint``: ``head.safetensors`` written by ``python -m chopgrad_core.heads.finetune``;
- ``input``: mp4 file or frame folder;
- ``output``: the mp4 file to write;
- ``--mask``: inpaint only: mask image, mp4 or frame folder (white = missing);
- ``--trim``: drop the last frames down to 1 + 4k;
- ``--device``: cpu (default), cuda or cuda:N;
- ``--fps``: output frame rate (default: the input's).

Bad input raises a ``chopgrad_core.errors`` type naming the option: ``HeadConfigError`` (an option),
``CheckpointError`` (the checkpoint file), ``VideoError`` / ``ShapeError`` (the video or mask),
``OutputNotWritableError`` (the output folder).

Shape legend: c channels, F frames, H W size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from chopgrad_core.atomic import check_writable
from chopgrad_core.errors import ChopGradError, HeadConfigError
from chopgrad_core.heads.inpaint import fit_mask, load_mask
from chopgrad_core.heads.restoration import check_frames, load_head
from chopgrad_core.video import read_video, to_float, to_uint8, video_fps, write_mp4


def _check_options(output: Path, device: str, fps: float | None) -> None:
    if output.suffix.lower() != ".mp4":
        raise HeadConfigError(f"output={str(output)!r} must end in .mp4 (the only format written); rename it")
    if device != "cpu" and not device.startswith("cuda"):
        raise HeadConfigError(f"--device={device!r} is unknown; use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HeadConfigError(f"--device={device!r} but no CUDA device is available; use --device cpu")
    if fps is not None and not fps > 0:
        raise HeadConfigError(f"--fps={fps} must be > 0 (or left out: the input's frame rate)")


def restore_video(checkpoint: str | Path, input: str | Path, output: str | Path, *, mask: str | Path | None = None,
                  trim: bool = False, device: str = "cpu", fps: float | None = None) -> Path:
    """Restore ``input`` with the head in ``checkpoint`` and write ``output`` (mp4). Returns its path."""
    output = Path(output)
    # 1. Options and the output folder first: nothing is computed for a run that cannot finish.
    _check_options(output, device, fps)
    check_writable(output.parent, "output")
    if device == "cpu":
        torch.set_flush_denormal(True)  # random-weight decoders drift into denormals, ~30x slower on CPU

    # 2. Model, video and mask.
    model, head, _ = load_head(checkpoint, device)  # CheckpointError names the file
    if mask is not None and head.name != "inpaint":
        raise HeadConfigError(f"--mask={str(mask)!r} is for inpainting heads; {str(checkpoint)!r} is a {head.name} "
                              "head: leave --mask out")
    frames = read_video(input)  # (F H W 3) uint8; VideoError names the file
    n = frames.shape[0]
    if trim and n > 1:
        frames = frames[: 1 + 4 * ((n - 1) // 4)]
    check_frames(frames.shape[0], f"video {str(input)!r}")
    video = to_float(frames)[None]  # (1 c F h w)
    m = None
    if mask is not None:
        m = fit_mask(load_mask(mask), video.shape[2], tuple(video.shape[-2:]), repr(str(mask)))[None, None]

    # 3. Pad the output grid to the model's multiple; crop back after.
    scale = getattr(head.config, "scale", 1)
    h, w = video.shape[-2] * scale, video.shape[-1] * scale
    mult = model.size_multiple
    step = mult // scale if mult % scale == 0 else mult
    ph, pw = -video.shape[-2] % step, -video.shape[-1] % step
    if ph or pw:
        video = F.pad(video.flatten(1, 2), (0, pw, 0, ph), mode="replicate").unflatten(1, video.shape[1:3])
        if m is not None:
            m = F.pad(m.flatten(1, 2), (0, pw, 0, ph)).unflatten(1, m.shape[1:3])

    # 4. Restore and write (atomic).
    sample = head.prepare(video, m)
    restored = model.restore(head, sample.to(device))[0, :, :, :h, :w]  # (c F H W)
    return write_mp4(output, to_uint8(restored.transpose(0, 1)), fps=fps or video_fps(input))


def build_parser() -> argparse.ArgumentParser:
    """The command line; its options are :func:`restore_video`'s parameters, one to one."""
    ap = argparse.ArgumentParser(prog="python -m chopgrad_core.heads.restore", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="head.safetensors written by python -m chopgrad_core.heads.finetune")
    ap.add_argument("input", help="mp4 file or frame folder")
    ap.add_argument("output", help="mp4 file to write")
    ap.add_argument("--mask", help="inpaint only: mask image, mp4 or frame folder (white = missing)")
    ap.add_argument("--trim", action="store_true", help="drop the last frames down to 1 + 4k")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        out = restore_video(args.pop("checkpoint"), args.pop("input"), args.pop("output"), **args)
    except ChopGradError as e:  # bad input: the message names it and the fix; no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
