"""The preprocessing stage: ``python -m drivegen.preprocess [key=value ...]`` (configs/preprocess.yaml).

    python -m drivegen.preprocess                                   # datasets/sample -> datasets/clips.zarr
    python -m drivegen.preprocess input_root=/data/nuscenes out=/data/clips.zarr clip.length=16
    python -m drivegen.preprocess ray.address=auto                  # join a running Ray cluster

A thin CLI: the work is ``drivegen.data.preprocess.run``.
"""
