"""Frame counts, bad files, pairs, masks, checkpoints and restore options: clear errors that name the file or
the option (configs: test_configs.py)."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from chopgrad_core.errors import CheckpointError, HeadConfigError, OutputNotWritableError, ShapeError
from chopgrad_core.heads import HEADS, HeadModelConfig, OneStepRestorer, load_head, make_head, save_head
from chopgrad_core.heads.data import HeadDataConfig, VideoSet
from chopgrad_core.heads.inpaint import InpaintHead
from chopgrad_core.heads.restore import restore_video
from chopgrad_core.video import VideoError, read_video, write_mp4


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    heads = {name: make_head({"name": name}) for name in HEADS}
    return {name: (OneStepRestorer(HeadModelConfig(), head.extra_channels), head) for name, head in heads.items()}


def _frames(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)


class TestFrameCounts:
    """Every head takes any frame count the Wan VAE accepts (1 + 4k) and returns that many frames;
    any other count is refused with an error naming where the frames came from and 1 + 4k."""

    @pytest.mark.parametrize("name", list(HEADS))
    @pytest.mark.parametrize("frames", [1, 5, 9])
    def test_accepted_frame_count_restores_same_length(self, models, name, frames):
        model, head = models[name]
        x = torch.rand(1, 3, frames, 16, 32) * 2 - 1 if name == "sr" else torch.rand(1, 3, frames, 32, 64) * 2 - 1
        out = model.restore(head, head.prepare(x))
        assert out.shape[2] == frames and out.shape[-2:] == (32, 64)

    @pytest.mark.parametrize("name", list(HEADS))
    @pytest.mark.parametrize("frames", [2, 4, 6])
    def test_other_frame_count_is_refused(self, models, name, frames):
        model, head = models[name]
        x = torch.rand(1, 3, frames, 32, 64) * 2 - 1
        with pytest.raises(ShapeError, match=r"has %d frames.*1 \+ 4k" % frames):
            model.restore(head, head.prepare(x))

    def test_restore_of_wrong_length_file_names_file(self, models, tmp_path):

        model, head = models["enhance"]
        ckpt = save_head(tmp_path / "head.safetensors", model, head)
        src = write_mp4(tmp_path / "six.mp4", _frames(6))
        with pytest.raises(ShapeError, match="six.mp4.*6 frames"):
            restore_video(ckpt, src, tmp_path / "out.mp4")
        assert read_video(restore_video(ckpt, src, tmp_path / "out.mp4", trim=True)).shape[0] == 5

    def test_data_frames_not_1_plus_4k_names_key(self):
        with pytest.raises(ShapeError, match="data.frames=6"):
            HeadDataConfig(frames=6)


class TestBadVideos:
    """Unreadable, zero-length and empty videos, and mismatched pairs, raise VideoError naming the file."""

    def test_zero_length_mp4_names_file(self, tmp_path):
        (tmp_path / "empty.mp4").write_bytes(b"")
        with pytest.raises(VideoError, match="empty.mp4.*zero-length"):
            read_video(tmp_path / "empty.mp4")

    def test_corrupt_mp4_names_file(self, tmp_path):
        (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
        with pytest.raises(VideoError, match="cannot read video.*junk.mp4"):
            read_video(tmp_path / "junk.mp4")

    def test_zero_length_frame_names_file(self, tmp_path):
        (tmp_path / "clip").mkdir()
        imageio.imwrite(tmp_path / "clip" / "000.png", _frames(1)[0])
        (tmp_path / "clip" / "001.png").write_bytes(b"")
        with pytest.raises(VideoError, match="001.png.*zero-length"):
            read_video(tmp_path / "clip")

    def test_folder_without_videos_names_key(self, tmp_path):
        with pytest.raises(VideoError, match="data.root=.*no mp4"):
            VideoSet(HeadDataConfig(root=str(tmp_path), prepare=None))

    def test_mp4_round_trip_keeps_frames(self, tmp_path):
        frames = np.zeros((5, 32, 48, 3), np.uint8) + 100
        back = read_video(write_mp4(tmp_path / "v.mp4", frames))
        assert back.shape == frames.shape and np.abs(back.astype(int) - 100).max() <= 3
        assert not list(tmp_path.glob("*partial*"))

    def test_mismatched_pair_lengths_name_both_files(self, tmp_path):
        for name, n in (("clean", 9), ("degraded", 5)):
            write_mp4(tmp_path / name / "a.mp4", _frames(n))
            write_mp4(tmp_path / name / "b.mp4", _frames(9))
        cfg = HeadDataConfig(root=str(tmp_path / "clean"), degraded_root=str(tmp_path / "degraded"), prepare=None,
                         crop=[32, 48])
        with pytest.raises(VideoError, match=r"degraded/a.mp4.* 5 frames.*clean/a.mp4.* 9"):
            VideoSet(cfg)

    def test_missing_pair_names_file(self, tmp_path):
        write_mp4(tmp_path / "clean" / "a.mp4", _frames(5))
        (tmp_path / "degraded").mkdir()
        cfg = HeadDataConfig(root=str(tmp_path / "clean"), degraded_root=str(tmp_path / "degraded"), prepare=None,
                         crop=[32, 48])
        with pytest.raises(VideoError, match="degraded/a.mp4.*does not exist"):
            VideoSet(cfg)

    def test_pairs_train_enhance_from_folders(self, tmp_path):
        for i in range(2):
            write_mp4(tmp_path / "clean" / f"{i}.mp4", _frames(9))
            write_mp4(tmp_path / "degraded" / f"{i}.mp4", _frames(9)[..., ::-1])
        data = VideoSet(HeadDataConfig(root=str(tmp_path / "clean"), degraded_root=str(tmp_path / "degraded"),
                                   prepare=None, crop=[32, 48]))
        clean, degraded = data.batch(2, torch.Generator().manual_seed(0))
        assert clean.shape == degraded.shape == (2, 3, 5, 32, 48)


class TestDegradations:
    """The training degradations keep the clip layout, are reproducible from the generator, and change
    the frames (each configured step does work)."""

    def test_sr_pipeline_with_h264_halves_size_reproducibly(self):
        head = make_head({"name": "sr", "scale": 2, "h264_crf": 35})
        clean = torch.rand(1, 3, 5, 32, 48) * 2 - 1
        a = head.degrade(clean, torch.Generator().manual_seed(0))
        b = head.degrade(clean, torch.Generator().manual_seed(0))
        assert a.input.shape == (1, 3, 5, 16, 24) and a.baseline.shape == clean.shape
        assert torch.allclose(a.input, b.input)

    def test_enhance_synthetic_artefacts_change_frames(self):
        head = make_head({"name": "enhance"})
        clean = torch.zeros(2, 3, 5, 32, 48)
        s = head.degrade(clean, torch.Generator().manual_seed(0))
        assert s.input.shape == clean.shape and float((s.input - clean).abs().mean()) > 0.01
        assert s.input.min() >= -1 and s.input.max() <= 1


class TestMasks:
    """Masks: centre (half height and width), strokes, folder; a mask of the wrong size names its file."""

    def test_center_mask_covers_half_height_and_width(self):
        head = make_head({"name": "inpaint", "mask": "center"})
        m = head.make_mask(1, 5, (64, 96), None)
        assert m.shape == (1, 1, 5, 64, 96) and float(m.mean()) == pytest.approx(0.25)
        assert m[0, 0, 0, 16:48, 24:72].all()

    def test_stroke_masks_are_random_and_partial(self):
        head = make_head({"name": "inpaint", "mask": "strokes"})
        g = torch.Generator().manual_seed(0)
        a, b = head.make_mask(1, 5, (64, 96), g), head.make_mask(1, 5, (64, 96), g)
        assert 0.02 < float(a.mean()) < 0.9 and not torch.equal(a, b)

    def test_folder_mask_of_wrong_size_names_file(self, tmp_path):
        imageio.imwrite(tmp_path / "small.png", np.full((16, 16), 255, np.uint8))
        head = make_head({"name": "inpaint", "mask": "folder", "mask_folder": str(tmp_path)})
        with pytest.raises(ShapeError, match="small.png.*16x16.*64x96"):
            head.make_mask(1, 5, (64, 96), None)

    def test_folder_mask_image_applies_to_every_frame(self, tmp_path):
        m = np.zeros((64, 96), np.uint8)
        m[:32] = 255
        imageio.imwrite(tmp_path / "top.png", m)
        head: InpaintHead = make_head({"name": "inpaint", "mask": "folder", "mask_folder": str(tmp_path)})
        mask = head.make_mask(2, 5, (64, 96), None)
        assert mask.shape == (2, 1, 5, 64, 96) and float(mask.mean()) == pytest.approx(0.5)

    def test_restore_mask_of_wrong_size_names_file(self, models, tmp_path):

        model, head = models["inpaint"]
        ckpt = save_head(tmp_path / "head.safetensors", model, head)
        imageio.imwrite(tmp_path / "m.png", np.full((10, 10), 255, np.uint8))
        src = write_mp4(tmp_path / "v.mp4", _frames(5))
        with pytest.raises(ShapeError, match="m.png.*10x10"):
            restore_video(ckpt, src, tmp_path / "o.mp4", mask=tmp_path / "m.png")


@pytest.fixture(scope="module")
def ckpt(models, tmp_path_factory):
    model, head = models["sr"]
    return save_head(tmp_path_factory.mktemp("ckpt") / "head.safetensors", model, head, extra={"steps": 3})


@pytest.fixture(scope="module")
def enhance_ckpt(models, tmp_path_factory):
    model, head = models["enhance"]
    return save_head(tmp_path_factory.mktemp("enh") / "head.safetensors", model, head)


class TestCheckpoints:
    """A head checkpoint that is missing, truncated, not safetensors or not a head raises CheckpointError
    naming the file and how to make a good one; a good one round-trips exactly."""

    def test_saved_head_loads_same_weights_and_config(self, models, ckpt):
        model, head, extra = load_head(ckpt)
        assert head.config == models["sr"][1].config and extra == {"steps": 3}
        ref = models["sr"][0].state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
        assert not list(ckpt.parent.glob(".*partial*"))  # atomic: no temporary left beside it

    def test_missing_checkpoint_names_file_and_finetune(self, tmp_path):
        with pytest.raises(CheckpointError, match=r"nothing.safetensors.*does not exist.*heads.finetune"):
            load_head(tmp_path / "nothing.safetensors")

    def test_truncated_checkpoint_names_file(self, ckpt, tmp_path):
        cut = tmp_path / "cut.safetensors"
        cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        with pytest.raises(CheckpointError, match=r"cut.safetensors.*cannot be read"):
            load_head(cut)

    def test_random_bytes_checkpoint_names_file(self, tmp_path):
        junk = tmp_path / "junk.safetensors"
        junk.write_bytes(np.random.default_rng(0).bytes(2048))
        with pytest.raises(CheckpointError, match=r"junk.safetensors"):
            load_head(junk)

    def test_foreign_safetensors_names_format(self, tmp_path):
        import safetensors.torch

        other = tmp_path / "other.safetensors"
        safetensors.torch.save_file({"w": torch.zeros(2)}, str(other))
        with pytest.raises(CheckpointError, match=r"other.safetensors.*not a chopgrad_core head checkpoint"):
            load_head(other)


class TestRestoreOptions:
    """restore refuses bad options before loading anything, naming the option: a mask for a non-inpainting
    head, a non-mp4 output, an unwritable output folder."""

    def test_mask_for_enhance_head_names_option(self, enhance_ckpt, tmp_path):
        src = write_mp4(tmp_path / "v.mp4", _frames(5))
        imageio.imwrite(tmp_path / "m.png", np.full((32, 48), 255, np.uint8))
        with pytest.raises(HeadConfigError, match=r"--mask=.*m.png.*enhance head"):
            restore_video(enhance_ckpt, src, tmp_path / "o.mp4", mask=tmp_path / "m.png")

    def test_non_mp4_output_names_option(self, enhance_ckpt, tmp_path):
        with pytest.raises(HeadConfigError, match=r"output=.*o.avi.*\.mp4"):
            restore_video(enhance_ckpt, tmp_path / "v.mp4", tmp_path / "o.avi")

    def test_unwritable_output_folder_fails_before_work(self, enhance_ckpt, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("")  # a file where the output folder should be
        with pytest.raises(OutputNotWritableError, match=r"output=.*file/sub"):
            restore_video(enhance_ckpt, tmp_path / "missing.mp4", blocker / "sub" / "o.mp4")

    def test_command_line_reports_bad_input_without_traceback(self, tmp_path, capsys):
        from chopgrad_core.heads.restore import main

        assert main([str(tmp_path / "none.safetensors"), str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: head checkpoint") and "none.safetensors" in err and "Traceback" not in err
