"""A property of the whole per-sample chain, stages run in this process: for random source
sizes, letterbox crops and short sides, every sample written reads back, verifies, and its
flow is the source's exact flow, cropped and resized, with its vectors scaled by the factors
the sample stores.

The flow backend here is the test's own (``exact``): it returns the synthetic clip's exact
flow for the frames it is given, found by their content, so that what is checked is the
geometry (crop, resize, the recorded factors), the codec and the shard format, not an
estimator.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmpdata.config import ExtractConfig
from cmpdata.filters import FilterConfig
from cmpdata.flow import FlowBackend, build_flow, register_flow, resize_flow
from cmpdata.guidance import GuidanceConfig, build_sampler
from cmpdata.io.pairs import PairConfig, resize_short_side
from cmpdata.records import Dropped, Source
from cmpdata.stages import process_source
from cmpdata.store.shards import (
    ShardReader,
    check_written,
    decode_image,
    encode_image,
    encode_sample,
    write_shard,
)
from cmpdata.synth.clips import SynthConfig, SyntheticClip

GAP = 2
FILTERS = FilterConfig(shot_cut_threshold=None, static_motion_px=None, min_valid_fraction=None)


@register_flow("exact-test")
class ExactFlow(FlowBackend):
    """The exact flow of ``frames`` (a clip's decoded frames, letterboxed) and ``flows``
    (its exact flow t -> t + GAP, on the same letterboxed canvas), for frames that went
    through the pipeline's own crop and resize."""

    def __init__(
        self,
        frames: Sequence[np.ndarray] = (),
        flows: Sequence[np.ndarray] = (),
        short_side: int = 416,
    ) -> None:
        self.frames, self.flows, self.short_side = frames, flows, short_side

    def compute(self, frames0, frames1):
        out = []
        for frame in frames0:
            for t, flow in enumerate(self.flows):
                x0, y0, x1, y1 = FILTERS.crop(self.frames[t], self.frames[t + GAP])
                resized, _ = resize_short_side(self.frames[t][y0:y1, x0:x1], self.short_side)
                if resized.shape == frame.shape and np.array_equal(resized, frame):
                    out.append(resize_flow(flow[y0:y1, x0:x1], frame.shape[:2]))
                    break
            else:
                raise AssertionError("a frame that is no frame of the clip")
        return out


def letterboxed(image: np.ndarray, bars: tuple[int, int, int, int]) -> np.ndarray:
    top, bottom, left, right = bars
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(33, 90),
    width=st.integers(33, 120),
    bars=st.tuples(*[st.sampled_from([0, 0, 3, 11]) for _ in range(4)]),
    short_side=st.integers(16, 150),
    seed=st.integers(0, 1000),
)
def test_written_samples_read_back_verify_and_hold_the_exact_flow(
    tmp_path_factory: pytest.TempPathFactory, height, width, bars, short_side, seed
):
    clip = SyntheticClip(
        SynthConfig(height=height, width=width, num_frames=GAP + 3, seed=seed, camera_speed=1.5)
    )
    frames = [letterboxed(clip.frame(t), bars) for t in range(clip.config.num_frames)]
    flows = [letterboxed(clip.flow(t, t + GAP), bars) for t in range(3)]
    folder = tmp_path_factory.mktemp("frames")
    for t, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{t:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    config = ExtractConfig(
        pairs=PairConfig(gap=GAP, stride=1, short_side=short_side, min_side=16),
        flow="exact-test",
        filters=FILTERS,
        guidance=GuidanceConfig(strategies=("grid",), bg_ratio=1 / 64),
    )
    source = Source("clip", folder, "frames", tuple(sorted(p.name for p in folder.iterdir())))
    backend = build_flow("exact-test", frames=frames, flows=flows, short_side=short_side)
    results = list(process_source(source, backend, build_sampler(config.guidance), config))
    assert not [r for r in results if isinstance(r, Dropped)]
    samples = [encode_sample(r, "train", config.codec) for r in results]
    assert len(samples) == 3

    shard = tmp_path_factory.mktemp("shard") / "shard-00000.h5"
    info = write_shard(
        shard,
        samples,
        {"shard_index": 0, "config": {}, "flow_backend": {}, "codec": config.codec.params()},
    )
    check_written(shard, info, [s.sample_id for s in samples])
    with ShardReader(shard) as reader:
        _, stored, recomputed = reader.digests()
        assert stored == recomputed == list(info.digests)
        for i in range(len(reader)):
            sample = reader.read(i)  # checks the digest too
            h, w = sample.flow.shape[:2]
            assert min(h, w) == short_side
            x0, y0, x1, y1 = sample.crop
            sx, sy = sample.scale
            # The factors stored are those the frame was resized by, exactly.
            assert (sx, sy) == (w / (x1 - x0), h / (y1 - y0))
            exact = flows[sample.t0][y0:y1, x0:x1]
            interpolation = (
                cv2.INTER_AREA if h * w < exact.shape[0] * exact.shape[1] else (cv2.INTER_LINEAR)
            )
            expected = cv2.resize(exact, (w, h), interpolation=interpolation) * np.float32([sx, sy])
            # The codec's bound: mean absolute error over both components.
            error = np.abs(sample.flow - expected).mean(dtype=np.float64)
            assert error <= config.codec.max_mae + 1e-4, (error, sample.sample_id)
            # The crop removed the bars (the detector may take a dark content line too).
            top, _, left, _ = bars
            assert x0 >= left and y0 >= top
            assert x1 <= left + width and y1 <= top + height
            # The image stored is the JPEG of the source frame, cropped and resized the same way.
            frame = resize_short_side(frames[sample.t0][y0:y1, x0:x1], short_side)[0]
            assert np.array_equal(sample.image, decode_image(encode_image(frame, 95)))
