"""Frame counts, bad files, pairs, masks and configs: clear errors that name the file or the key."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from chopgrad_core.errors import ChopGradError, ShapeError
from chopgrad_core.heads import HEADS, ModelConfig, OneStepRestorer, make_head
from chopgrad_core.heads.data import DataConfig, VideoSet, ensure_root
from chopgrad_core.heads.inpaint import InpaintHead
from chopgrad_core.video import VideoError, read_video, write_mp4


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    return {name: (OneStepRestorer(ModelConfig(), make_head({"name": name}).extra_channels), make_head({"name": name}))
            for name in HEADS}


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
        from chopgrad_core.heads import save_checkpoint
        from chopgrad_core.restore import restore_video

        model, head = models["enhance"]
        ckpt = save_checkpoint(tmp_path / "head.safetensors", model, head)
        src = write_mp4(tmp_path / "six.mp4", _frames(6))
        with pytest.raises(ShapeError, match="six.mp4.*6 frames"):
            restore_video(ckpt, src, tmp_path / "out.mp4")
        assert read_video(restore_video(ckpt, src, tmp_path / "out.mp4", trim=True)).shape[0] == 5

    def test_data_frames_not_1_plus_4k_names_key(self):
        with pytest.raises(ShapeError, match="data.frames=6"):
            DataConfig(frames=6)


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
            VideoSet(DataConfig(root=str(tmp_path), prepare=None))

    def test_mp4_round_trip_keeps_frames(self, tmp_path):
        frames = np.zeros((5, 32, 48, 3), np.uint8) + 100
        back = read_video(write_mp4(tmp_path / "v.mp4", frames))
        assert back.shape == frames.shape and np.abs(back.astype(int) - 100).max() <= 3
        assert not list(tmp_path.glob("*partial*"))

    def test_mismatched_pair_lengths_name_both_files(self, tmp_path):
        for name, n in (("clean", 9), ("degraded", 5)):
            write_mp4(tmp_path / name / "a.mp4", _frames(n))
            write_mp4(tmp_path / name / "b.mp4", _frames(9))
        cfg = DataConfig(root=str(tmp_path / "clean"), degraded_root=str(tmp_path / "degraded"), prepare=None,
                         crop=[32, 48])
        with pytest.raises(VideoError, match=r"degraded/a.mp4.* 5 frames.*clean/a.mp4.* 9"):
            VideoSet(cfg)

    def test_missing_pair_names_file(self, tmp_path):
        write_mp4(tmp_path / "clean" / "a.mp4", _frames(5))
        (tmp_path / "degraded").mkdir()
        cfg = DataConfig(root=str(tmp_path / "clean"), degraded_root=str(tmp_path / "degraded"), prepare=None,
                         crop=[32, 48])
        with pytest.raises(VideoError, match="degraded/a.mp4.*does not exist"):
            VideoSet(cfg)

    def test_pairs_train_enhance_from_folders(self, tmp_path):
        for i in range(2):
            write_mp4(tmp_path / "clean" / f"{i}.mp4", _frames(9))
            write_mp4(tmp_path / "degraded" / f"{i}.mp4", _frames(9)[..., ::-1])
        data = VideoSet(DataConfig(root=str(tmp_path / "clean"), degraded_root=str(tmp_path / "degraded"),
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
        from chopgrad_core.heads import save_checkpoint
        from chopgrad_core.restore import restore_video

        model, head = models["inpaint"]
        ckpt = save_checkpoint(tmp_path / "head.safetensors", model, head)
        imageio.imwrite(tmp_path / "m.png", np.full((10, 10), 255, np.uint8))
        src = write_mp4(tmp_path / "v.mp4", _frames(5))
        with pytest.raises(ShapeError, match="m.png.*10x10"):
            restore_video(ckpt, src, tmp_path / "o.mp4", mask=tmp_path / "m.png")


class TestConfigs:
    """configs/finetune mirrors the dataclasses 1:1; bad values and unknown keys name the key; a missing
    data root without data.prepare, or with a module that is not installed, names the command and key."""

    def _compose(self, *overrides):
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(version_base="1.3", config_dir=str(Path(__file__).parents[2] / "configs/finetune")):
            return compose(config_name="finetune", overrides=list(overrides))

    @pytest.mark.parametrize("task", list(HEADS))
    def test_yaml_keys_equal_dataclass_fields(self, task):
        from omegaconf import OmegaConf

        from chopgrad_core.config import ChopGradConfig
        from chopgrad_core.finetune import TrainConfig, to_config

        raw = OmegaConf.to_container(self._compose(f"task={task}"), resolve=True)
        raw.pop("hydra", None)
        for key, cls in (("task", HEADS[task][0]), ("data", DataConfig), ("model", ModelConfig),
                         ("chopgrad", ChopGradConfig), ("train", TrainConfig)):
            assert set(raw[key]) == {f.name for f in fields(cls)}, key
        assert to_config(raw).task.name == task

    def test_folder_data_yaml_keys_equal_dataclass_fields(self):
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(self._compose("data=folder", "data.root=/x"), resolve=True)
        assert set(raw["data"]) == {f.name for f in fields(DataConfig)}

    def test_unknown_task_key_names_it(self):
        with pytest.raises(ChopGradError, match="task=sr.*bogus"):
            make_head({"name": "sr", "bogus": 1})

    def test_bad_scale_names_key(self):
        with pytest.raises(ChopGradError, match="task.scale=3"):
            make_head({"name": "sr", "scale": 3})

    def test_missing_root_without_prepare_names_key(self, tmp_path):
        with pytest.raises(VideoError, match="data.root=.*does not exist"):
            ensure_root(DataConfig(root=str(tmp_path / "nothing"), prepare=None))

    def test_missing_root_with_uninstalled_module_names_command_and_key(self, tmp_path):
        cfg = DataConfig(root=str(tmp_path / "nothing"), prepare=["no_such_pkg_xyz.make", "--out", "x"])
        with pytest.raises(VideoError) as err:
            ensure_root(cfg)
        assert "`python -m no_such_pkg_xyz.make --out x`" in str(err.value) and "(data.prepare)" in str(err.value)

    def test_pairs_for_other_tasks_are_refused(self):
        from chopgrad_core.finetune import FinetuneConfig

        with pytest.raises(ChopGradError, match="data.degraded_root"):
            FinetuneConfig(task=make_head({"name": "sr"}).config, data=DataConfig(degraded_root="/x"))
