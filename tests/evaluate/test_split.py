"""The held-out split never reaches training: the train split's clips, and every batch the trainer's
data yields, come from train logs only; evaluation reads exactly the val logs."""

from __future__ import annotations

import torch

from evaluate_shared import WAYMO_LOG


class TestSplitNeverLeaks:
    """Preprocessing records each log's split; ClipDataset(split=) and the trainer honour it."""

    def test_train_and_val_clips_partition_the_store_by_log(self, world):
        from drivegen.data.dataset import ClipDataset

        seen = {"train": set(), "val": set()}
        for split in seen:
            for datasets in (["waymo"], ["nuscenes"]):
                try:
                    ds = ClipDataset(world.store, split=split, datasets=datasets)
                except ValueError:  # DatasetConfigError: no clips of that dataset in the split
                    continue
                seen[split] |= {ds.metadata(i)["log"] for i in range(len(ds))}
        assert seen["train"] == world.train_logs and seen["val"] == world.val_logs
        assert not seen["train"] & seen["val"]

    def test_no_val_clip_in_a_training_batch(self, world):
        from drivegen.train import DataConfig, TrainConfig, Trainer, TrainerConfig

        # The trainer's own dataset, from its default data.split; every datasets filter it may use.
        for datasets in (["nuscenes"], ["waymo"]):
            data = DataConfig(logs=str(world.root / "logs"), store=str(world.store), image_size=[32, 48],
                              datasets=datasets)
            try:
                trainer = Trainer(TrainConfig(data=data, trainer=TrainerConfig(
                    steps=1, sample_steps=0, tensorboard=False, out=str(world.root / f"split-{datasets[0]}"))))
            except ValueError:  # no train-split clips of this dataset: nothing can leak
                assert datasets == ["waymo"]
                continue
            loader = torch.utils.data.DataLoader(trainer.data, batch_size=2, shuffle=True)
            logs = {log for batch in loader for log in batch["log"]}
            assert logs and logs <= world.train_logs and not logs & world.val_logs

    def test_evaluation_reads_exactly_the_val_logs(self, world):
        from drivegen.evaluate.config import EvaluateConfig
        from drivegen.evaluate.run import plan

        p = plan(EvaluateConfig(checkpoint=str(world.checkpoint), datasets=["waymo"], out=str(world.root / "plan")))
        assert {item["log"] for item in p["items"]} == {WAYMO_LOG} and len(p["items"]) == 5
        assert p["dataset"]["split"] == "val"
