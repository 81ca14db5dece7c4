"""cmpmodel.data: crops, flips, guidance, normalisation, padding, determinism, DataLoader workers.

Most samples are built in memory: a "coordinate" sample whose flow at pixel (x, y) is (x, y)
and whose image holds x and y in its red and green channels, so any output pixel tells where
in the frame it came from; and a synthetic clip's exact flow, whose moving parts give the
watershed something to find. ``test_dataset.make_dataset`` writes real shards for the
DataLoader tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_dataset import make_dataset
from torch.utils.data import DataLoader

from cmpdata.guidance import GuidanceConfig, build_sampler, rasterize
from cmpdata.records import Guidance
from cmpdata.seeding import sample_rng
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.shards import StoredSample
from cmpdata.synth.clips import SynthConfig, SyntheticClip
from cmpmodel.data import (
    RGB_MEAN,
    RGB_STD,
    EvalTransform,
    TrainTransform,
    TrainTransformConfig,
    collate,
    eval_inputs,
    expand,
    make_train_loader,
    window_guidance,
)

CROP = 32
#: a dense grid (stride 4 px): many points in a 32 px crop, on a flow of any shape
DENSE = GuidanceConfig(strategies="grid", bg_ratio=1 / 16)
IDS = [f"clip{i}.mp4#{t:06d}-{t + 2:06d}" for i in range(3) for t in (0, 10)]


def stored(
    image: np.ndarray,
    flow: np.ndarray,
    valid: np.ndarray | None = None,
    sample_id: str = IDS[0],
    guidance: Guidance | None = None,
) -> StoredSample:
    if guidance is None:
        guidance = Guidance(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    h, w = flow.shape[:2]
    return StoredSample(
        sample_id, "clip.mp4", 0, 2, "train", 0, image, flow, valid, guidance, (0, 0, w, h), (1, 1)
    )


def coordinate_sample(h: int = 48, w: int = 64, **kwargs) -> StoredSample:
    """Flow (x, y) at pixel (x, y); image red = x, green = y, blue = 7."""
    ys, xs = np.mgrid[:h, :w]
    flow = np.stack([xs, ys], axis=-1).astype(np.float32)
    image = np.stack([xs, ys, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    return stored(image, flow, **kwargs)


@pytest.fixture(scope="module")
def synthetic() -> StoredSample:
    clip = SyntheticClip(SynthConfig(height=48, width=64, num_frames=3, max_speed=3.0))
    flow, valid = clip.ground_truth(0, 2)
    return stored(clip.frame(0), flow.astype(np.float32), valid)


def config(**changes) -> TrainTransformConfig:
    return TrainTransformConfig(**{"crop": CROP, "guidance": DENSE, **changes})


def unnormalise(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) 0-255 values, rounded to integers."""
    values = image.numpy().transpose(1, 2, 0) * np.float32(RGB_STD) + np.float32(RGB_MEAN)
    return np.rint(values).astype(np.int64)


def source_pixels(out: dict) -> tuple[np.ndarray, np.ndarray, bool]:
    """Where each output pixel of a coordinate sample came from (x, y), and whether the crop
    was mirrored (its source x falls from left to right)."""
    rgb = unnormalise(out["image"])
    x, y = rgb[..., 0], rgb[..., 1]
    return x, y, bool(x[0, 0] > x[0, 1])


def guidance_of(out: dict) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the guidance points of an item and their vectors (K, 2), from "sparse"."""
    sparse = out["sparse"].numpy()
    ys, xs = np.nonzero(sparse[2])
    return np.stack([xs, ys], axis=1), sparse[:2, ys, xs].T


def assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_shapes_dtypes_and_keys(synthetic):
    out = TrainTransform(config(guidance=GuidanceConfig()))(synthetic)
    assert set(out) == {"image", "sparse", "flow", "valid", "sample_id"}
    expected = {
        "image": ((3, CROP, CROP), torch.float32),
        "sparse": ((4, CROP, CROP), torch.float32),
        "flow": ((2, CROP, CROP), torch.float32),
        "valid": ((CROP, CROP), torch.bool),
    }
    for key, (shape, dtype) in expected.items():
        assert tuple(out[key].shape) == shape and out[key].dtype == dtype, key
    assert out["sample_id"] == synthetic.sample_id
    mask = out["sparse"][2]
    assert mask.sum() > 0
    assert torch.equal(mask, out["sparse"][3])
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(out["sparse"][:2][:, mask == 0] == 0)


def test_normalisation_uses_the_paper_mean_and_std():
    colour = np.array([200, 100, 50], np.uint8)
    sample = stored(np.broadcast_to(colour, (48, 64, 3)).copy(), np.zeros((48, 64, 2), np.float32))
    image = TrainTransform(config())(sample)["image"]
    expected = (colour - np.array(RGB_MEAN)) / np.array(RGB_STD)
    for c in range(3):
        np.testing.assert_allclose(image[c].numpy(), expected[c], rtol=1e-6)
    assert TrainTransformConfig().mean == (123.675, 116.28, 103.53)
    assert TrainTransformConfig().std == (58.395, 57.12, 57.375)


def test_crop_is_the_same_region_in_image_flow_and_guidance():
    transform = TrainTransform(config(flip=False))
    lefts, tops = set(), set()
    for epoch in range(4):
        transform.set_epoch(epoch)
        for sample_id in IDS:
            out = transform(coordinate_sample(sample_id=sample_id))
            x, y, flipped = source_pixels(out)
            left, top = int(x[0, 0]), int(y[0, 0])
            assert not flipped
            assert 0 <= left <= 64 - CROP and 0 <= top <= 48 - CROP
            np.testing.assert_array_equal(x, left + np.arange(CROP)[None, :].repeat(CROP, 0))
            np.testing.assert_array_equal(y, top + np.arange(CROP)[:, None].repeat(CROP, 1))
            flow = out["flow"].numpy()
            np.testing.assert_array_equal(flow[0], x)
            np.testing.assert_array_equal(flow[1], y)
            points, vectors = guidance_of(out)
            assert len(points) == 64  # the stride-4 grid of a 32 x 32 crop
            np.testing.assert_array_equal(
                vectors - points, np.broadcast_to([left, top], points.shape)
            )
            lefts.add(left)
            tops.add(top)
    assert len(lefts) > 5 and len(tops) > 5


def test_flip_mirrors_the_image_and_negates_the_flow_x():
    transform = TrainTransform(config())
    seen = set()
    for epoch in range(12):
        transform.set_epoch(epoch)
        out = transform(coordinate_sample())
        x, y, flipped = source_pixels(out)
        seen.add(flipped)
        step = -1 if flipped else 1
        np.testing.assert_array_equal(np.diff(x, axis=1), step)
        flow = out["flow"].numpy()
        # A mirrored pixel moves the other way along x; its motion along y is unchanged.
        np.testing.assert_array_equal(flow[0], -x if flipped else x)
        np.testing.assert_array_equal(flow[1], y)
        points, vectors = guidance_of(out)
        np.testing.assert_array_equal(vectors, flow[:, points[:, 1], points[:, 0]].T)
    assert seen == {True, False}
    no_flip = TrainTransform(config(flip=False))
    assert not any(
        source_pixels(no_flip(coordinate_sample(sample_id=i)))[2] for i in IDS for _ in range(2)
    )


def test_redrawn_guidance_is_the_target_flow_at_its_points(synthetic):
    # The whole frame: the paper's sampler keeps about one point on a 32 px crop.
    transform = TrainTransform(config(crop=48, guidance=GuidanceConfig()))
    for epoch in range(6):
        transform.set_epoch(epoch)
        out = transform(synthetic)
        points, vectors = guidance_of(out)
        assert len(points) > 0
        flow = out["flow"].numpy()
        np.testing.assert_array_equal(vectors, flow[:, points[:, 1], points[:, 0]].T)
        assert out["valid"].numpy()[points[:, 1], points[:, 0]].all()


def test_same_seed_sample_and_epoch_give_the_same_item(synthetic):
    first = TrainTransform(config(guidance=GuidanceConfig(strategies="uniform", bg_ratio=0.02)))
    second = TrainTransform(first.config, epoch=0)
    again = pickle.loads(pickle.dumps(first))  # what a spawned worker gets
    for sample_id in IDS:
        sample = dataclasses.replace(synthetic, sample_id=sample_id)
        assert_items_equal(first(sample), second(sample))
        assert_items_equal(first(sample), again(sample))
    sample = dataclasses.replace(synthetic, sample_id=IDS[0])
    base = first(sample)
    first.set_epoch(1)
    other_seed = TrainTransform(dataclasses.replace(first.config, seed=1))
    for changed in (first(sample), other_seed(sample)):
        assert not torch.equal(changed["image"], base["image"])
        assert not torch.equal(changed["sparse"], base["sparse"])
    # The guidance alone depends on the epoch too, not only through the crop.
    fixed = TrainTransform(config(crop=64, flip=False, guidance=first.config.guidance))
    wide = dataclasses.replace(synthetic, sample_id=IDS[0])
    before = fixed(wide)
    fixed.set_epoch(1)
    after = fixed(wide)
    assert torch.equal(before["image"], after["image"])
    assert not torch.equal(before["sparse"], after["sparse"])


def test_invalid_pixels_are_never_guidance_and_are_false_in_valid():
    valid = np.ones((48, 64), np.bool_)
    valid[:, 20:44] = False
    valid[10, 4] = False
    transform = TrainTransform(config())
    for epoch in range(6):
        transform.set_epoch(epoch)
        out = transform(coordinate_sample(valid=valid))
        x, y, _ = source_pixels(out)
        np.testing.assert_array_equal(out["valid"].numpy(), valid[y, x])
        points, _ = guidance_of(out)
        assert len(points) > 0
        assert valid[y[points[:, 1], points[:, 0]], x[points[:, 1], points[:, 0]]].all()
        assert not (out["sparse"][2:].numpy() * ~valid[y, x]).any()
    without = TrainTransform(config())(coordinate_sample())
    assert out["valid"].dtype == torch.bool and without["valid"].all()


def test_stored_guidance_is_cropped_shifted_and_mirrored():
    xs, ys = np.meshgrid(np.arange(1, 64, 3), np.arange(2, 48, 5))
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    # Vectors unlike the flow, so the stored ones are recognisable.
    vectors = np.stack([1000 + points[:, 0], -points[:, 1] - 500], axis=1).astype(np.float32)
    guidance = Guidance(points, vectors)
    transform = TrainTransform(config(use_stored_guidance=True))
    seen = set()
    for epoch in range(10):
        transform.set_epoch(epoch)
        out = transform(coordinate_sample(guidance=guidance))
        x, y, flipped = source_pixels(out)
        seen.add(flipped)
        expected = np.zeros((4, CROP, CROP), np.float32)
        for (px, py), (vx, vy) in zip(points.astype(int), vectors, strict=True):
            hit = np.argwhere((x == px) & (y == py))
            if len(hit):
                ((row, col),) = hit
                expected[:, row, col] = (-vx if flipped else vx, vy, 1, 1)
        assert expected[2].sum() > 0
        np.testing.assert_array_equal(out["sparse"].numpy(), expected)
    assert seen == {True, False}


@pytest.mark.parametrize("flip", [False, True])
def test_frame_smaller_than_the_crop_is_padded_and_invalid(flip):
    transform = TrainTransform(config(flip=flip))
    seen = set()
    for h, w in [(20, 24), (48, 20), (24, 64)]:
        for epoch in range(4):
            transform.set_epoch(epoch)
            out = transform(coordinate_sample(h, w))
            rows, cols = min(h, CROP), min(w, CROP)
            x, y, _ = source_pixels(out)
            inside = unnormalise(out["image"])[..., 2] == 7  # padding is the mean colour
            steps = np.diff(x[inside].reshape(rows, cols), axis=1)
            flipped = bool(steps[0, 0] < 0)
            seen.add(flipped)
            assert (steps == (-1 if flipped else 1)).all()
            assert (np.diff(y[inside].reshape(rows, cols), axis=0) == 1).all()
            assert y[inside].max() < h and x[inside].max() < w
            # Padded at the bottom and right, then mirrored with the rest of the crop.
            expected = np.zeros((CROP, CROP), np.bool_)
            expected[:rows, :cols] = True
            np.testing.assert_array_equal(inside, expected[:, ::-1] if flipped else expected)
            np.testing.assert_array_equal(out["valid"].numpy(), inside)
            padding = ~torch.from_numpy(inside)
            for key in ("image", "flow", "sparse"):
                assert not out[key][:, padding].any(), key
            assert out["sparse"][2].sum() > 0
    assert seen == {False, True} if flip else seen == {False}


def test_eval_transform_is_a_fixed_centre_crop(synthetic):
    transform = EvalTransform(config(flip=True))
    out = transform(coordinate_sample())
    x, y, flipped = source_pixels(out)
    assert (x[0, 0], y[0, 0], flipped) == ((64 - CROP) // 2, (48 - CROP) // 2, False)
    assert_items_equal(transform(synthetic), EvalTransform(transform.config)(synthetic))
    assert len(guidance_of(transform(synthetic))[0]) > 0


def test_eval_inputs_pad_to_a_multiple_of_8_with_repeatable_guidance(synthetic):
    cut = dataclasses.replace(
        synthetic,
        image=synthetic.image[:45, :61].copy(),
        flow=synthetic.flow[:45, :61].copy(),
        valid=synthetic.valid[:45, :61].copy(),
    )
    random = GuidanceConfig(strategies="uniform,watershed", bg_ratio=0.01)
    out = eval_inputs(cut, random, seed=3)
    assert out["size"] == (45, 61)
    assert tuple(out["image"].shape) == (3, 48, 64) and tuple(out["sparse"].shape) == (4, 48, 64)
    assert tuple(out["flow"].shape) == (2, 48, 64) and tuple(out["valid"].shape) == (48, 64)
    np.testing.assert_array_equal(out["valid"][:45, :61].numpy(), cut.valid)
    assert not out["valid"][45:].any() and not out["valid"][:, 61:].any()
    assert not out["image"][:, 45:].any() and not out["flow"][:, :, 61:].any()
    np.testing.assert_array_equal(unnormalise(out["image"])[:45, :61], cut.image)
    assert_items_equal(
        {k: v for k, v in out.items() if k != "guidance"},
        {k: v for k, v in eval_inputs(cut, random, seed=3).items() if k != "guidance"},
    )
    direct = build_sampler(random)(cut.flow, sample_rng(3, cut.sample_id), cut.valid)
    np.testing.assert_array_equal(out["guidance"].points, direct.points)
    points, vectors = guidance_of(out)
    np.testing.assert_array_equal(points, direct.points)
    np.testing.assert_array_equal(vectors, direct.vectors)
    other = eval_inputs(cut, random, seed=4)
    assert not torch.equal(other["sparse"], out["sparse"])
    stored_guidance = eval_inputs(dataclasses.replace(cut, guidance=direct), None, seed=0)
    assert torch.equal(stored_guidance["sparse"], out["sparse"])


def test_config_round_trips_through_a_dict_and_checks_values():
    cfg = TrainTransformConfig(crop=384, guidance=GuidanceConfig.alexnet(), seed=5)
    assert TrainTransformConfig(**dataclasses.asdict(cfg)) == cfg
    as_lists = {**dataclasses.asdict(cfg), "mean": list(RGB_MEAN), "std": list(RGB_STD)}
    assert TrainTransformConfig(**as_lists) == cfg
    assert TrainTransformConfig().guidance == GuidanceConfig.resnet()
    for crop in (0, 36):
        with pytest.raises(ValueError, match="multiple of 8"):
            TrainTransformConfig(crop=crop)
    with pytest.raises(ValueError, match="std"):
        TrainTransformConfig(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="mean"):
        TrainTransformConfig(mean=(1.0, 2.0))


def test_mismatched_sample_arrays_name_the_sample():
    sample = coordinate_sample()
    bad = dataclasses.replace(sample, valid=np.ones((47, 64), np.bool_))
    with pytest.raises(ValueError, match=r"clip0\.mp4#000000-000002.*disagree"):
        TrainTransform(config())(bad)
    floats = dataclasses.replace(sample, image=sample.image.astype(np.float32))
    with pytest.raises(ValueError, match=r"clip0\.mp4#000000-000002: image is float32"):
        TrainTransform(config())(floats)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-data") / "data"
    make_dataset(root)
    return root


def test_dataloader_workers_see_the_epoch_and_agree(dataset_root):
    transform = TrainTransform(config(guidance=GuidanceConfig()))
    dataset = ShardDataset(dataset_root, split=None, transform=transform)
    plain = ShardDataset(dataset_root, split=None)
    runs = {}
    for workers in (0, 2):
        transform.set_epoch(3)  # before the iterator is made: workers copy the transform then
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, persistent_workers=False)
        runs[workers] = list(loader)
    assert len(runs[0]) == len(runs[2]) == 3
    for a, b in zip(runs[0], runs[2], strict=True):
        assert_items_equal(a, b)
    expected = TrainTransform(transform.config, epoch=3)(plain[4])
    last = runs[2][-1]
    assert last["sample_id"] == [expected["sample_id"]]
    for key in ("image", "sparse", "flow", "valid"):
        assert torch.equal(last[key][0], expected[key])


def test_make_train_loader_is_a_function_of_the_epoch(dataset_root):
    dataset = ShardDataset(dataset_root, split=None, transform=TrainTransform(config()))
    first = list(make_train_loader(dataset, batch_size=2, epoch=0))
    again = list(make_train_loader(dataset, batch_size=2, epoch=0, num_workers=2))
    later = list(make_train_loader(dataset, batch_size=2, epoch=1))
    assert len(first) == 2  # 5 samples, the incomplete batch dropped
    for a, b in zip(first, again, strict=True):
        assert_items_equal(a, b)
    ids = [i for batch in first for i in batch["sample_id"]]
    assert len(set(ids)) == 4 and set(ids) <= set(dataset.sample_ids())
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, later, strict=True))
    plain = ShardDataset(dataset_root, split=None)
    index = {sample_id: i for i, sample_id in enumerate(plain.sample_ids())}
    reference = TrainTransform(dataset.transform.config, epoch=1)
    for batch in later:
        inputs = expand(batch, "cpu", reference.config.mean, reference.config.std)
        for k, sample_id in enumerate(batch["sample_id"]):
            expected = reference(plain[index[sample_id]])
            for key in ("image", "sparse", "flow", "valid"):
                assert torch.equal(inputs[key][k], expected[key])
    with pytest.raises(ValueError, match="TrainTransform"):
        make_train_loader(ShardDataset(dataset_root), batch_size=2, epoch=0)


def outputs_digest(items: list[dict]) -> str:
    """sha256 over every item's keys and values, tensors as dtype, shape and bytes (so a -0.0
    where there was a 0.0 changes it)."""
    h = hashlib.sha256()
    for item in items:
        for key in sorted(item):
            value = item[key]
            h.update(key.encode())
            if isinstance(value, Guidance):
                value = np.concatenate([value.points, value.vectors], axis=1)
            if isinstance(value, torch.Tensor):
                value = value.numpy()
            if isinstance(value, np.ndarray):
                h.update(f"{value.dtype} {value.shape}".encode())
                h.update(np.ascontiguousarray(value).tobytes())
            else:
                h.update(repr(value).encode())
    return h.hexdigest()


#: sha256 of the items of ``pinned_outputs``, computed by the transforms before the loader
#: was made faster (issue 16): the faster crop, flip and normalisation must give the same
#: bits. Change it only for a change of output argued in cmpmodel.data's docstrings.
PINNED_OUTPUTS = "8db5789532b40b3080bbdfb47752a971a4299771d173af776f67e0b4e8fd8a09"


def pinned_outputs() -> list[dict]:
    """Items of every path of the transforms: the defaults (320 px crop, paper guidance) on a
    416 x 560 synthetic frame with and without a mask over several epochs (flipped and not),
    frames smaller than the crop (padding, flipped and not), random and stored guidance, the
    evaluation crop and eval_inputs' padding to a multiple of 8."""
    clip = SyntheticClip(SynthConfig(height=416, width=560, num_frames=3, texture="noise"))
    flow, valid = clip.ground_truth(0, 2)
    large = stored(clip.frame(0), flow.astype(np.float32), valid)
    small = SyntheticClip(SynthConfig(height=48, width=64, num_frames=3, texture="noise"))
    small_flow, small_valid = small.ground_truth(0, 2)
    small_sample = stored(small.frame(0), small_flow.astype(np.float32), small_valid)
    points = np.stack(np.meshgrid(np.arange(1, 64, 3), np.arange(2, 48, 5)), -1).reshape(-1, 2)
    guidance = Guidance(points.astype(np.float32), np.float32(points[:, ::-1]) - 7)
    items = []
    for epoch in range(6):
        for sample, cfg in [
            (large, TrainTransformConfig()),
            (dataclasses.replace(large, valid=None, sample_id=IDS[1]), TrainTransformConfig()),
            (small_sample, config()),
            (small_sample, config(crop=72)),  # padded on both axes
            (dataclasses.replace(small_sample, valid=None), config(crop=56)),
            (coordinate_sample(20, 24, valid=small_valid[:20, :24].copy()), config()),
            (small_sample, config(random_guides=5)),
            (coordinate_sample(guidance=guidance), config(use_stored_guidance=True)),
        ]:
            items.append(TrainTransform(cfg, epoch=epoch)(sample))
    items += [EvalTransform()(large), EvalTransform(config(crop=72))(small_sample)]
    cut = dataclasses.replace(
        small_sample,
        image=small_sample.image[:45, :61].copy(),
        flow=small_sample.flow[:45, :61].copy(),
        valid=small_sample.valid[:45, :61].copy(),
    )
    items.append(eval_inputs(cut, GuidanceConfig(strategies="uniform,watershed"), seed=3))
    return items


def test_transforms_give_the_pinned_outputs():
    items = pinned_outputs()
    flips = {bool(source_pixels(item)[2]) for item in items[7:48:8]}
    assert flips == {False, True}  # the coordinate sample was mirrored at some epochs only
    assert outputs_digest(items) == PINNED_OUTPUTS


def packed_batch_cases() -> list[tuple[StoredSample, TrainTransformConfig]]:
    """Items of one crop size that differ in every way a batch must keep apart: padded on one
    axis, on both, or not; a mask or none; drawn, random and stored guidance (two stored
    points on one pixel: the later one's vector is the one drawn)."""
    small = coordinate_sample(20, 24)
    doubled = Guidance(
        np.float32([[31.2, 15.0], [33, 20], [30.8, 15.4], [40, 25]]),
        np.float32([[1, 1], [2, 2], [5, -5], [3, 3]]),
    )
    return [
        (coordinate_sample(), config()),
        (dataclasses.replace(small, valid=np.ones((20, 24), bool)), config()),
        (coordinate_sample(30, 50, sample_id=IDS[2]), config(random_guides=7)),
        (coordinate_sample(guidance=doubled, sample_id=IDS[3]), config(use_stored_guidance=True)),
        (small, config(flip=False)),
    ]


def test_a_packed_batch_expands_to_the_items_the_transform_gives():
    cases = packed_batch_cases()
    for epoch in range(4):
        transforms = [TrainTransform(cfg, epoch=epoch) for _, cfg in cases]
        packed = [t.pack(sample) for t, (sample, _) in zip(transforms, cases, strict=True)]
        batch = collate(packed)
        assert batch["image"].dtype == torch.uint8 and batch["guide"].shape[1] == 4
        inputs = expand(batch)
        for k, (transform, (sample, _)) in enumerate(zip(transforms, cases, strict=True)):
            expected = transform(sample)
            assert inputs["sample_id"][k] == expected["sample_id"]
            for key in ("image", "sparse", "flow", "valid"):
                assert torch.equal(inputs[key][k], expected[key]), (epoch, k, key)
    # The doubled pixel holds the later point's vector, as rasterize draws the stored guidance
    # of the window the transform's draws chose.
    sample, cfg = cases[3]
    doubled_inside = 0
    for epoch in range(4):
        rng = sample_rng(cfg.seed, sample.sample_id, epoch)
        top, left = int(rng.integers(0, 48 - CROP + 1)), int(rng.integers(0, 64 - CROP + 1))
        flip = bool(rng.random() < 0.5)
        guidance = window_guidance(sample.guidance, top, left, CROP, CROP, CROP if flip else None)
        drawn = TrainTransform(cfg, epoch=epoch)(sample)["sparse"]
        assert torch.equal(drawn, torch.from_numpy(rasterize(guidance, (CROP, CROP))))
        doubled_inside += len(np.unique(guidance.points, axis=0)) < len(guidance.points)
    assert doubled_inside


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_expanding_on_the_gpu_gives_the_cpu_bits():
    cases = packed_batch_cases()
    batch = collate([TrainTransform(cfg).pack(sample) for sample, cfg in cases])
    on_cpu, on_gpu = expand(batch), expand(batch, "cuda")
    for key in ("image", "sparse", "flow", "valid"):
        assert torch.equal(on_gpu[key].cpu(), on_cpu[key]), key
