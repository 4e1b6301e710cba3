"""The data layer: logs in, clips out.

- ``ingest/``: readers of nuScenes and Waymo logs into ``conditions.Scene`` (and the TFRecord codec).
- ``sample_data``: the bundled synthetic world, written in both real formats (``python -m drivegen.data.sample_data``).
- ``nuscenes_format``: the one nuScenes dataroot writer (sample logs and generated labels).
- ``clips``: one clip's arrays (images resized, conditions rendered per frame).
- ``preprocess/``: the Ray preprocessing library (config, worker, driver).
- ``store``: the Zarr v3 clip store (atomic clips, report); ``dataset``: ``ClipDataset`` over it.

Nothing here imports the model or a stage.
"""
