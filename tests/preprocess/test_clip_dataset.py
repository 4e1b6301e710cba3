"""ClipDataset over a store written in-process (ClipWorker without Ray): item shapes, dtypes and
ranges, camera / length / size checks, both sampling modes, and 2 spawn DataLoader workers."""

from __future__ import annotations

import pytest
import torch

from drivegen.data import store
from drivegen.data.dataset import ClipDataset, DatasetConfigError
from drivegen.data.clips import clip_starts
from drivegen.data.preprocess import ClipWorker, load_config

T_STORED, H, W, S = 4, 64, 112, 16


@pytest.fixture(scope="module")
def clip_store(logs, tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    out = root / "clips.zarr"
    config = load_config(
        [f"out={out}", f"clip.length={T_STORED}", "clip.stride=12", f"conditions.image_size=[{H},{W}]",
         f"conditions.max_boxes={S}", "progress=false"]
    )
    store.open_store(out, config.store_settings())
    worker = ClipWorker(str(out), config, logs["opener"])
    rigs = {}
    for ref in [*logs["good"], logs["stripped"]]:
        plan = worker.plan(ref)
        assert plan["ok"], plan
        for start in clip_starts(plan["frames"], T_STORED, 12):
            assert worker.write_clip(ref, start)["status"] == "written"
        rigs[ref.name] = (plan["dataset"], plan["cameras"])
    store.consolidate(out)
    first = logs["good"][0].name
    return {"path": out, "dataset": rigs[first][0], "cameras": rigs[first][1], "stripped": logs["stripped"].name}


def _check_item(item, T, K):
    assert item["images"].shape == (T, K, 3, H, W) and item["images"].dtype == torch.float32
    assert item["control"].shape == (T, K, 3, H, W)
    assert -1.0 <= item["images"].min() and item["images"].max() <= 1.0
    assert -1.0 <= item["control"].min() and item["control"].max() <= 1.0
    assert item["layout"].shape[:2] == (T, K) and item["layout"].shape[3:] == (H, W)
    assert item["layout"].dtype == torch.uint8
    assert item["box_corners"].shape == (T, K, S, 8, 2)
    assert item["box_params"].shape[:3] == (T, K, S)
    assert item["box_mask"].shape == (T, K, S) and item["box_mask"].dtype == torch.bool
    assert item["plucker"].shape == (T, K, 6, H // 8, W // 8)
    assert item["intrinsics"].shape == (T, K, 3, 3) and item["cam_to_ego"].shape == (T, K, 4, 4)
    assert item["bev"].shape[0] == T and item["bev"].dtype == torch.uint8
    assert item["timestamp_us"].shape == (T,)


class TestClipDataset:
    """Items are dicts of (T, K, ...) tensors at the stored resolution; wrong cameras, lengths or
    sizes fail with the stored values in the message; spawn workers open the store themselves."""

    def test_item_has_declared_shapes_and_ranges(self, clip_store):
        ds = ClipDataset(clip_store["path"], datasets=[clip_store["dataset"]])
        item = ds[0]
        _check_item(item, T_STORED, len(clip_store["cameras"]))
        assert bool(item["has_images"]) and item["images"].std() > 0

    def test_camera_subset_in_requested_order(self, clip_store):
        cams = clip_store["cameras"][::-2]
        full = ClipDataset(clip_store["path"], datasets=[clip_store["dataset"]])
        sub = ClipDataset(clip_store["path"], cameras=cams, datasets=[clip_store["dataset"]])
        k = [list(full.cameras).index(c) for c in cams]
        torch.testing.assert_close(sub[0]["layout"], full[0]["layout"][:, k])

    def test_unknown_camera_error_lists_stored_cameras(self, clip_store):
        with pytest.raises(DatasetConfigError, match=clip_store["cameras"][0]):
            ClipDataset(clip_store["path"], cameras=["NOT_A_CAMERA"], datasets=[clip_store["dataset"]])

    def test_length_beyond_stored_and_other_size_are_refused(self, clip_store):
        with pytest.raises(DatasetConfigError, match=f"clips of {T_STORED} frames"):
            ClipDataset(clip_store["path"], clip_length=T_STORED + 1, datasets=[clip_store["dataset"]])
        with pytest.raises(DatasetConfigError, match=r"written at \(64, 112\)"):
            ClipDataset(clip_store["path"], image_size=(128, 224), datasets=[clip_store["dataset"]])

    def test_sequential_windows_tile_each_clip(self, clip_store):
        ds = ClipDataset(clip_store["path"], clip_length=2, datasets=[clip_store["dataset"]])
        assert len(ds) == 2 * len(ClipDataset(clip_store["path"], datasets=[clip_store["dataset"]]))
        a, b = ds[0], ds[1]
        assert a["clip"] == b["clip"] and b["start_frame"] == a["start_frame"] + 2
        assert b["frame_index"][0] == a["frame_index"][-1] + 1

    def test_random_sampling_draws_windows_inside_the_clip(self, clip_store):
        ds = ClipDataset(clip_store["path"], clip_length=1, sampling="random", datasets=[clip_store["dataset"]])
        torch.manual_seed(0)
        starts = {int(ds[0]["frame_index"][0]) for _ in range(12)}
        first = ClipDataset(clip_store["path"], datasets=[clip_store["dataset"]])[0]["frame_index"].tolist()
        assert len(starts) > 1 and starts <= set(first)

    def test_conditions_only_clip_has_zero_images_and_flag(self, clip_store):
        ds = ClipDataset(clip_store["path"], datasets=None if clip_store["dataset"] == "synthetic" else ["waymo"])
        items = [ds[i] for i in range(len(ds)) if ds.metadata(i)["log"] == clip_store["stripped"]][:1]
        assert items and not bool(items[0]["has_images"]) and items[0]["images"].abs().max() == 0

    def test_two_spawn_workers_yield_correct_shapes(self, clip_store):
        ds = ClipDataset(clip_store["path"], clip_length=2, datasets=[clip_store["dataset"]])
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")
        batches = list(loader)
        assert sum(len(b["clip"]) for b in batches) == len(ds)
        for batch in batches:
            B = len(batch["clip"])
            assert batch["images"].shape == (B, 2, len(ds.cameras), 3, H, W)
            assert batch["layout"].shape[:3] == (B, 2, len(ds.cameras))
            assert batch["box_mask"].shape == (B, 2, len(ds.cameras), S)
