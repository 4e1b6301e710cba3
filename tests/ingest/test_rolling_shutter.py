"""The rolling-shutter measurement behaves as the geometry says: no readout or no motion, no error;
the error grows linearly with the readout time and falls as 1/depth under pure translation."""

from __future__ import annotations

import numpy as np

from drivegen.data.ingest.rolling_shutter import rolling_shutter_error_px
from drivegen.data.sample_data import sample_waymo_cameras

HW = (256, 448)


class TestRollingShutterError:
    """Measured on the sample rig at the store's default size."""

    def test_no_readout_or_no_motion_is_exact(self):
        cam = sample_waymo_cameras((144, 256))[0]
        for err in (rolling_shutter_error_px(cam, HW, readout_s=0.0),
                    rolling_shutter_error_px(cam, HW, speed_mps=0.0, yaw_rate_rps=0.0)):
            assert all(np.allclose(e, 0.0, atol=1e-6) for e in err.values())

    def test_linear_in_readout_and_inverse_in_depth(self):
        cam = sample_waymo_cameras((144, 256))[3]  # SIDE_LEFT: translation sweeps across it
        e10 = rolling_shutter_error_px(cam, HW, depths_m=(10.0, 20.0), readout_s=0.01)
        e20 = rolling_shutter_error_px(cam, HW, depths_m=(10.0, 20.0), readout_s=0.02)
        assert np.isclose(e20[10.0].max(), 2 * e10[10.0].max(), rtol=0.05)
        assert np.isclose(e10[10.0].max(), 2 * e10[20.0].max(), rtol=0.05)
        # 15 m/s, 10 ms: the edge columns are read 5 ms from the middle one, the ego 0.075 m away;
        # a side camera looking across that motion sees f * 0.075 / 10 px at 10 m (f ~ 480 px)
        f = HW[1] / 2 / np.tan(np.radians(25))
        assert np.isclose(e10[10.0].max(), f * 0.075 / 10, rtol=0.05)
