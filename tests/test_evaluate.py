"""cmpmodel.evaluate and cmpmodel.propagate: the baselines by hand, the EPE table, the
`cmpmodel eval / propagate` commands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_train import ATTRS, tiny_config, write_dataset

from cmpdata.errors import CmpDataError
from cmpdata.guidance import GuidanceConfig, build_sampler
from cmpdata.records import FlowSample, FramePair, Guidance
from cmpdata.stages import guide
from cmpdata.store.codec import FlowCodec
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.shards import StoredSample, encode_sample, shard_name, write_shard
from cmpdata.synth.clips import SynthConfig, SyntheticClip
from cmpdata.synth.truth import read_truth, truth_parts
from cmpmodel.cli import main
from cmpmodel.data import eval_inputs
from cmpmodel.evaluate import (
    FAR_DISTANCE,
    METHODS,
    PAPER,
    PER_OBJECT,
    SETTINGS,
    Tally,
    evaluate,
    format_table,
    idw_flow,
    nearest_flow,
    object_guidance,
    other_object_pixels,
    plot_curve,
    random_guidance,
    score_sample,
)
from cmpmodel.propagate import propagate
from cmpmodel.train import train

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny dataset (val frames 45 x 61: padded for the model) and a 2-step checkpoint."""
    root = tmp_path_factory.mktemp("eval")
    data = write_dataset(root / "data", num_train=4, num_val=3, size=(45, 61))
    summary = train(tiny_config(data, root / "run", iters=2))
    return data, Path(summary["checkpoint"])


def two_points() -> np.ndarray:
    """A (4, 3, 6) guidance map: (x=0, y=0) moves (1, 0), (x=4, y=0) moves (0, 2)."""
    sparse = np.zeros((4, 3, 6), np.float32)
    sparse[:, 0, 0] = (1, 0, 1, 1)
    sparse[:, 0, 4] = (0, 2, 1, 1)
    return sparse


def test_nearest_baseline_by_hand():
    flow, distance = nearest_flow(two_points())
    assert flow.shape == (3, 6, 2) and flow.dtype == np.float32
    np.testing.assert_array_equal(flow[0, 1], (1, 0))
    np.testing.assert_array_equal(flow[2, 0], (1, 0))
    np.testing.assert_array_equal(flow[1, 5], (0, 2))
    np.testing.assert_array_equal(flow[0, 3], (0, 2))
    assert distance[0, 0] == 0 and distance[0, 1] == 1
    assert distance[2, 5] == pytest.approx(np.hypot(1, 2))
    empty, far = nearest_flow(np.zeros((4, 3, 6), np.float32))
    assert not empty.any() and np.isinf(far).all()


def test_idw_baseline_by_hand():
    flow = idw_flow(two_points())
    np.testing.assert_allclose(flow[0, 0], (1, 0))
    np.testing.assert_allclose(flow[0, 4], (0, 2))
    # (1, 0): distances 1 and 3, weights 1 and 1/9.
    np.testing.assert_allclose(flow[0, 1], (0.9, 0.2), rtol=1e-6)
    # (2, 0): equidistant, the plain mean.
    np.testing.assert_allclose(flow[0, 2], (0.5, 1.0), rtol=1e-6)
    # (0, 2): distances 2 and sqrt(20), weights 1/4 and 1/20.
    np.testing.assert_allclose(flow[2, 0], (5 / 6, 2 / 6), rtol=1e-6)
    assert not idw_flow(np.zeros((4, 3, 6), np.float32)).any()


def test_evaluate_scores_every_method(run):
    data, checkpoint = run
    result = evaluate(data, checkpoint)
    assert set(result["methods"]) == set(METHODS)
    assert result["num_samples"] == 3 and result["step"] == 2
    assert 0 < result["num_far_pixels"] < result["num_pixels"]
    assert result["far_distance_px"] == FAR_DISTANCE
    # The zero baseline's EPE is the mean flow magnitude over the valid pixels.
    samples = [s for s in ShardDataset(data, split="val")]
    magnitudes = np.concatenate([np.hypot(*s.flow.transpose(2, 0, 1))[s.valid] for s in samples])
    assert result["num_pixels"] == len(magnitudes)
    assert result["methods"]["zero"]["epe"] == pytest.approx(magnitudes.mean(), rel=1e-6)
    scores = result["methods"]
    for name in METHODS:
        assert np.isfinite(scores[name]["epe"]) and np.isfinite(scores[name]["epe_far"])
        assert 0 <= scores[name]["epe"] < 50
    # Guidance is exact flow at its points: propagating it beats no motion at all.
    assert scores["nearest"]["epe"] < scores["zero"]["epe"]
    assert scores["idw"]["epe"] < scores["zero"]["epe"]
    assert evaluate(data, checkpoint, max_samples=1)["num_samples"] == 1
    assert evaluate(data, checkpoint)["methods"] == scores  # same guidance, same numbers
    table = format_table(result)
    assert all(name in table for name in METHODS)


def test_eval_command_writes_json(run, tmp_path, capsys):
    data, checkpoint = run
    out = tmp_path / "eval.json"
    assert (
        main(["eval", "--data", str(data), "--checkpoint", str(checkpoint), "--json", str(out)])
        == 0
    )
    assert "idw" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["methods"]) == set(METHODS)
    assert cv2.imread(str(out.with_suffix(".png"))) is not None
    assert main(["eval", "--data", str(tmp_path), "--checkpoint", str(checkpoint)]) == 2
    assert "no shards" in capsys.readouterr().err


def test_propagate_writes_a_picture(run, tmp_path, capsys):
    data, checkpoint = run
    image = ShardDataset(data, split="val")[0].image
    image_path = tmp_path / "frame.png"
    cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "pictures" / "flow.png"
    flow = propagate(checkpoint, image_path, [(10, 20, 3, -2), (40, 5, 0, 1)], out)
    assert flow.shape == (45, 61, 2) and np.isfinite(flow).all()
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] > 2 * 61
    args = ["propagate", "--checkpoint", str(checkpoint), "--image", str(image_path)]
    assert main([*args, "--guide", "1,2,3,4", "--out", str(tmp_path / "cli.png")]) == 0
    assert (tmp_path / "cli.png").exists()
    assert main([*args, "--guide", "100,2,3,4", "--out", str(tmp_path / "x.png")]) == 2
    assert "outside" in capsys.readouterr().err
    with pytest.raises(CmpDataError, match="not a readable image"):
        propagate(checkpoint, tmp_path / "missing.png", [(1, 1, 0, 0)], out)


# Guidance where CMP should win: a few guides, one per object, the other-object pixels -------


def two_objects() -> StoredSample:
    """A 2 x 10 frame: object 0 (columns 0-6) moves (1, 0), object 1 (columns 7-9) (0, 2)."""
    objects = np.zeros((2, 10), np.uint8)
    objects[:, 7:] = 1
    flow = np.where(objects[..., None] == 0, np.float32((1, 0)), np.float32((0, 2)))
    none = Guidance(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    return StoredSample(
        "hand#0-1", "hand", 0, 1, "val", 0, np.zeros((2, 10, 3), np.uint8), flow,
        np.ones((2, 10), bool), none, (0, 0, 10, 2), (1.0, 1.0), {"ids": objects.tobytes()},
    )  # fmt: skip


def guides_at(sample: StoredSample, *points: tuple[int, int]) -> Guidance:
    xs, ys = np.array(points).T
    return Guidance(np.float32(np.stack([xs, ys], 1)), np.float32(sample.flow[ys, xs]))


def test_other_object_pixels_by_hand():
    sample = two_objects()
    objects = np.frombuffer(sample.extras["ids"], np.uint8).reshape(2, 10)
    inputs = eval_inputs(sample, None, 0, guidance=guides_at(sample, (1, 0), (8, 0)))
    sparse = inputs["sparse"].numpy()[:, :2, :10]
    other = other_object_pixels(sparse, objects)
    # Columns 5 and 6 belong to object 0 but are nearer the guide at x = 8 (object 1).
    expected = np.zeros((2, 10), bool)
    expected[:, 5:7] = True
    np.testing.assert_array_equal(other, expected)
    assert not other_object_pixels(np.zeros_like(sparse), objects).any()


def test_scores_of_one_sample_by_hand():
    sample = two_objects()
    objects = np.frombuffer(sample.extras["ids"], np.uint8).reshape(2, 10)
    inputs = eval_inputs(sample, None, 0, guidance=guides_at(sample, (1, 0), (8, 0)))
    exact, still = Tally(), Tally()
    score_sample(exact, inputs, objects, sample.flow)  # a model that is right everywhere
    score_sample(still, inputs, objects, np.zeros((2, 10, 2), np.float32))
    result = exact.result()
    assert result["guides_per_frame"] == 2 and result["num_samples"] == 1
    assert result["num_pixels"] == {"epe": 20, "epe_far": 0, "epe_other": 4}
    methods = result["methods"]
    assert methods["model"]["epe"] == 0 and methods["model"]["epe_other"] == 0
    # Zero flow: 14 pixels move 1 px, 6 move 2 px; the other-object pixels all move 1 px.
    assert methods["zero"]["epe"] == pytest.approx(1.3)
    assert methods["zero"]["epe_other"] == pytest.approx(1.0)
    # Nearest: the 4 other-object pixels copy (0, 2) instead of (1, 0).
    assert methods["nearest"]["epe"] == pytest.approx(4 * np.sqrt(5) / 20)
    assert methods["nearest"]["epe_other"] == pytest.approx(np.sqrt(5))
    assert np.isnan(methods["nearest"]["epe_far"])
    assert still.result()["methods"]["model"]["epe"] == methods["zero"]["epe"]
    # Without object ids the other-object figure does not exist.
    blind = Tally()
    score_sample(blind, inputs, None, sample.flow)
    assert blind.result()["methods"]["nearest"]["epe_other"] is None


def test_random_and_per_object_guidance_by_hand():
    sample = two_objects()
    objects = np.frombuffer(sample.extras["ids"], np.uint8).reshape(2, 10)
    valid = np.ones((2, 10), bool)
    valid[0] = False
    drawn = random_guidance(sample.flow, valid, 4, np.random.default_rng(0))
    xs, ys = drawn.points.astype(int).T
    assert len(drawn) == 4 and len(set(zip(xs, ys, strict=True))) == 4 and (ys == 1).all()
    np.testing.assert_array_equal(drawn.vectors, sample.flow[ys, xs])
    again = random_guidance(sample.flow, valid, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(again.points, drawn.points)
    assert len(random_guidance(sample.flow, valid, 50, np.random.default_rng(0))) == 10
    per_object = object_guidance(sample.flow, valid, objects, np.random.default_rng(1))
    xs, ys = per_object.points.astype(int).T
    assert list(objects[ys, xs]) == [0, 1] and (ys == 1).all()
    np.testing.assert_array_equal(per_object.vectors, [[1, 0], [0, 2]])


def write_truth_dataset(root: Path, size=(40, 56), gap: int = 2, offset: float = 0.5) -> Path:
    """Val samples of a synthetic clip with their exact flow stored beside: the stored flow is
    the exact one shifted by ``offset`` px along x (a flow method's error)."""
    root.mkdir(parents=True, exist_ok=True)
    clip = SyntheticClip(SynthConfig(height=size[0], width=size[1], num_frames=8, num_objects=2))
    sampler, codec = build_sampler(GuidanceConfig()), FlowCodec()
    samples = []
    for t in (0, 3):
        pair = FramePair("clip.mp4", t, t + gap, clip.frame(t), clip.frame(t + gap))
        pair = dataclasses.replace(pair, extras=truth_parts(clip, pair))
        flow, valid = clip.ground_truth(t, t + gap)
        stored = (flow + np.float32((offset, 0))).astype(np.float32)
        guided = guide(FlowSample(pair, stored, valid), sampler, seed=0)
        samples.append(encode_sample(guided, "val", codec))
    write_shard(root / shard_name(0), samples, {**ATTRS, "codec": codec.params(), "shard_index": 0})
    return root


def test_evaluate_against_exact_flow_at_every_amount_of_guidance(run, tmp_path):
    _, checkpoint = run
    data = write_truth_dataset(tmp_path / "truth")
    result = evaluate(data, checkpoint)
    assert result["reference"] == {"exact": 2, "stored": 0}
    # The stored flow is 0.5 px off the exact one (up to the codec's error).
    assert result["stored_flow_epe"] == pytest.approx(0.5, abs=0.06)
    assert list(result["curve"]) == list(SETTINGS)
    assert result["methods"] == result["curve"][PAPER]["methods"]
    truths = [read_truth(s.extras, s.flow.shape[:2]) for s in ShardDataset(data, split="val")]
    # Zero flow scored against the exact flow, over the exact visibility.
    magnitudes = np.concatenate([np.hypot(*t.flow.transpose(2, 0, 1))[t.valid] for t in truths])
    for setting, scores in result["curve"].items():
        assert scores["num_samples"] == 2
        assert scores["num_pixels"]["epe"] == len(magnitudes)
        zero = scores["methods"]["zero"]
        assert zero["epe"] == pytest.approx(magnitudes.mean(), rel=1e-6)
        assert 0 < scores["num_pixels"]["epe_other"] < len(magnitudes), setting
    for k in (1, 2, 4, 8, 16):
        assert result["curve"][str(k)]["guides_per_frame"] == k
    # Sixteen exact vectors spread over a 40 x 56 frame: copying them beats no motion.
    dense = result["curve"]["16"]["methods"]
    assert dense["nearest"]["epe"] < dense["zero"]["epe"] / 2
    layers = np.mean([len(np.unique(t.objects[t.valid])) for t in truths])
    assert result["curve"][PER_OBJECT]["guides_per_frame"] == layers
    table = format_table(result)
    assert "one per object" in table and "another object" in table and "0.5" in table
    picture = cv2.imread(str(plot_curve(result, tmp_path / "curve.png")))
    assert picture is not None and picture.shape[1] > picture.shape[0]


def test_real_data_has_no_other_object_figure(run):
    data, checkpoint = run  # samples without stored truth: scored against their stored flow
    result = evaluate(data, checkpoint)
    assert result["reference"] == {"exact": 0, "stored": 3} and result["stored_flow_epe"] is None
    assert PER_OBJECT not in result["curve"]
    assert all(m["epe_other"] is None for m in result["methods"].values())
    assert "absent" in format_table(result)
