"""The IO the heads (and drivegen) share: the streaming atomic Mp4Writer, progress lines readable in
logs, and outputs checked for write access before any work."""

from __future__ import annotations

import io

import numpy as np
import pytest

from chopgrad_core.errors import OutputNotWritableError, VideoError
from chopgrad_core.progress import progress
from chopgrad_core.video import Mp4Writer, read_video, write_mp4


def _frames(n: int, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class TestMp4Writer:
    """Mp4Writer(path, fps) streams frame groups into one mp4 that appears under its name only after
    close(ok=True); close(ok=False), a bad frame or an ffmpeg failure leave nothing behind, and an
    ffmpeg failure raises VideoError naming the file and ffmpeg's reason."""

    def test_streamed_groups_equal_one_write(self, tmp_path):
        frames = _frames(9)
        w = Mp4Writer(tmp_path / "streamed.mp4", fps=10)
        for group in (frames[:1], frames[1:5], frames[5:]):
            w.append(group)
        assert not (tmp_path / "streamed.mp4").exists()  # not under its name before close
        assert w.close() == tmp_path / "streamed.mp4"
        once = write_mp4(tmp_path / "once.mp4", frames, fps=10)
        assert np.array_equal(read_video(tmp_path / "streamed.mp4"), read_video(once))
        assert _leftovers(tmp_path) == ["once.mp4", "streamed.mp4"]

    def test_close_not_ok_removes_temp_file(self, tmp_path):
        w = Mp4Writer(tmp_path / "v.mp4")
        w.append(_frames(5))
        assert w.close(ok=False) is None
        assert _leftovers(tmp_path) == []

    def test_exception_in_with_block_discards_file(self, tmp_path):
        with pytest.raises(KeyError):
            with Mp4Writer(tmp_path / "v.mp4") as w:
                w.append(_frames(5))
                raise KeyError("boom")
        assert _leftovers(tmp_path) == []

    def test_odd_frame_size_ffmpeg_failure_names_file_and_cause(self, tmp_path):
        with pytest.raises(VideoError, match=r"odd.mp4.*ffmpeg.*width not divisible by 2"):
            write_mp4(tmp_path / "odd.mp4", _frames(5, 33, 47))
        assert _leftovers(tmp_path) == []

    def test_killed_ffmpeg_broken_pipe_names_file_and_cause(self, tmp_path):
        w = Mp4Writer(tmp_path / "killed.mp4")
        w.append(_frames(1))
        w._proc.kill()  # the encoder dies mid-video (as on a full disk or an OOM kill)
        w._proc.wait()
        with pytest.raises(VideoError, match=r"killed.mp4.*ffmpeg failed.*(Broken pipe|status -9)"):
            for _ in range(100):
                w.append(_frames(20))
            w.close()
        assert _leftovers(tmp_path) == []

    def test_frame_size_change_names_both_sizes(self, tmp_path):
        w = Mp4Writer(tmp_path / "v.mp4")
        w.append(_frames(2))
        with pytest.raises(VideoError, match=r"v.mp4.*16x16.*after frames of 32x48"):
            w.append(_frames(2, 16, 16))
        assert _leftovers(tmp_path) == []

    def test_dropped_writer_leaves_nothing(self, tmp_path):
        w = Mp4Writer(tmp_path / "v.mp4")
        w.append(_frames(2))
        proc = w._proc
        del w  # never closed: discarded, the encoder stopped
        assert _leftovers(tmp_path) == [] and proc.poll() is not None

    def test_close_without_frames_names_file(self, tmp_path):
        with pytest.raises(VideoError, match=r"v.mp4.*no frames"):
            Mp4Writer(tmp_path / "v.mp4").close()
        assert _leftovers(tmp_path) == []

    def test_float_frames_are_refused(self, tmp_path):
        with pytest.raises(VideoError, match=r"v.mp4.*uint8.*to_uint8"):
            write_mp4(tmp_path / "v.mp4", np.zeros((2, 32, 48, 3), np.float32))


class TestProgress:
    """progress() on a non-terminal stream writes plain lines (no carriage returns) at most every ~10 s,
    plus the first and the last: a 1000-step loop that also sets a postfix each step gives a few lines."""

    def test_thousand_steps_into_log_write_few_plain_lines(self):
        log = io.StringIO()
        bar = progress(range(1000), desc="finetune sr", unit="step", file=log)
        for i in bar:
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
        bar.close()
        lines = log.getvalue().splitlines()
        assert "\r" not in log.getvalue()
        assert 1 <= len(lines) <= 4, lines
        assert lines[-1].startswith("finetune sr: 1000/1000 (100%)") and "loss=" in lines[-1]

    def test_stacked_bars_with_late_total_write_plain_lines(self):
        log = io.StringIO()
        logs = progress(total=2, desc="logs", unit="log", position=0, file=log)
        clips = progress(total=0, desc="clips", unit="clip", position=1, file=log)
        clips.total += 4  # known only once the first log is read
        clips.update(4)
        logs.update(2)
        clips.close()
        logs.close()
        text = log.getvalue()
        assert "\x1b" not in text and "\r" not in text
        assert "clips: 4/4 (100%)" in text and text.splitlines()[-1].startswith("logs: 2/2 (100%)")

    def test_disabled_writes_nothing(self):
        log = io.StringIO()
        for _ in progress(range(10), file=log, disable=True):
            pass
        assert log.getvalue() == ""


class TestOutputsCheckedFirst:
    """finetune refuses an output folder it cannot write before loading data or building a model,
    naming the config key."""

    def test_finetune_unwritable_out_names_key(self, tmp_path):
        from chopgrad_core.heads import make_head
        from chopgrad_core.heads.data import HeadDataConfig
        from chopgrad_core.heads.finetune import FinetuneConfig, HeadTrainConfig, finetune

        blocker = tmp_path / "file"
        blocker.write_text("")
        cfg = FinetuneConfig(task=make_head({"name": "sr"}).config,
                             data=HeadDataConfig(root=str(tmp_path / "no-videos"), prepare=None),
                             train=HeadTrainConfig(steps=1, device="cpu", out=str(blocker / "out")))
        with pytest.raises(OutputNotWritableError, match=r"train.out=.*file/out"):
            finetune(cfg, show_progress=False)
