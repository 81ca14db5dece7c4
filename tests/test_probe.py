"""cmpmodel.probe and `cmpmodel probe`: the IoU metric by hand, the block labels, the head on a
separable case, the BN rule, a whole probe on a tiny dataset of synthetic clips with their
object ids, and the one-line errors.

``write_truth_dataset`` builds the dataset directly (no Ray), storing each pair with the
ground-truth parts ``extract`` stores for a clip with its description
(:func:`cmpdata.synth.truth.truth_parts`); the train and val splits come from different clips.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import ATTRS, tiny_config, write_dataset

from cmpdata.errors import UsageError
from cmpdata.guidance import GuidanceConfig, build_sampler
from cmpdata.records import FlowSample, FramePair
from cmpdata.stages import guide
from cmpdata.store.codec import FlowCodec
from cmpdata.store.shards import encode_sample, shard_name, write_shard
from cmpdata.synth.clips import SynthConfig, SyntheticClip
from cmpdata.synth.truth import truth_parts
from cmpmodel.cli import main
from cmpmodel.model import TinyEncoder
from cmpmodel.probe import (
    BN_RULE,
    cell_labels,
    confusion,
    fit_head,
    format_probe,
    iou_scores,
    predict,
    probe,
    random_encoder,
    recompute_bn_stats,
)
from cmpmodel.train import train

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SIZE = (47, 63)  # (H, W): not multiples of 8, so the frames are padded for the encoder


def write_truth_dataset(root: Path, num_train: int = 6, num_val: int = 3) -> Path:
    """One shard: ``num_train`` pairs of clip 0 (train) and ``num_val`` of clip 1 (val), each
    with its exact flow and object ids."""
    root.mkdir(parents=True, exist_ok=True)
    sampler, codec = build_sampler(GuidanceConfig()), FlowCodec()
    samples = []
    for seed, split, count in ((0, "train", num_train), (1, "val", num_val)):
        clip = SyntheticClip(
            SynthConfig(height=SIZE[0], width=SIZE[1], num_frames=count + 2, seed=seed)
        )
        for t in range(count):
            pair = FramePair(f"clip{seed}.mp4", t, t + 2, clip.frame(t), clip.frame(t + 2))
            pair = dataclasses.replace(pair, extras=truth_parts(clip, pair))
            flow, valid = clip.ground_truth(t, t + 2)
            guided = guide(FlowSample(pair, flow.astype(np.float32), valid), sampler, seed=0)
            samples.append(encode_sample(guided, split, codec))
    write_shard(root / shard_name(0), samples, {**ATTRS, "codec": codec.params(), "shard_index": 0})
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny truth dataset and a 4-step tiny checkpoint trained on it."""
    root = tmp_path_factory.mktemp("probe")
    data = write_truth_dataset(root / "data")
    summary = train(tiny_config(data, root / "run", iters=4))
    return data, Path(summary["checkpoint"])


# --- the metric and the labels ---------------------------------------------------------------


def test_iou_of_a_perfect_prediction_is_100():
    labels = np.zeros((4, 6), bool)
    labels[1:3, 2:5] = True
    scores = iou_scores(confusion(labels, labels))
    assert scores == {"miou": 100.0, "iou_background": 100.0, "iou_object": 100.0}


def test_iou_of_all_background_on_half_and_half():
    labels = np.zeros((4, 6), bool)
    labels[:, 3:] = True
    counts = confusion(np.zeros_like(labels), labels)
    np.testing.assert_array_equal(counts, [[12, 0], [12, 0]])
    # background: 12 right of 24 predicted; object: nothing right, 12 in its union.
    assert iou_scores(counts) == {"miou": 25.0, "iou_background": 50.0, "iou_object": 0.0}


def test_iou_is_summed_over_frames_before_dividing():
    a = np.array([[True, False]])  # object found: IoU_obj 1/1
    b = np.array([[True, True, True, False]])  # labels of frame b
    b_pred = np.array([[True, False, False, False]])  # 1 of 3 object pixels
    counts = confusion(a, a) + confusion(b_pred, b)
    # object: intersection 1 + 1, union 1 + 3 -> 50 % (a per-frame mean would say 66.7 %).
    # background: intersection 1 + 1, union 1 + 3 -> 50 %.
    assert iou_scores(counts) == pytest.approx(
        {"miou": 50.0, "iou_background": 50.0, "iou_object": 50.0}
    )


def test_a_class_absent_everywhere_is_left_out_of_the_mean():
    labels = np.zeros((3, 3), bool)
    scores = iou_scores(confusion(labels, labels))
    assert scores["miou"] == 100.0 and np.isnan(scores["iou_object"])


def test_cell_labels_are_the_majority_of_each_block_padding_left_out():
    labels = np.zeros((10, 9), bool)
    labels[:8, :8][:5] = True  # block (0, 0): 40 of 64 object
    labels[:4, 8] = True  # block (0, 1): 4 of its 8 frame pixels: a tie -> background
    labels[8:, :3] = True  # block (1, 0): 6 of its 16 frame pixels
    labels[8:, 8] = True  # block (1, 1): its 2 frame pixels
    np.testing.assert_array_equal(cell_labels(labels, 8), [[1, 0], [0, 1]])


# --- the head and the BN rule ----------------------------------------------------------------


def test_the_head_learns_a_linearly_separable_case():
    rng = np.random.default_rng(0)
    c, h, w = 6, 24, 32
    features = torch.from_numpy(rng.normal(size=(c, h, w)).astype(np.float32))
    features[2] = 5 * features[2] + 30  # channels of other scales and offsets
    direction = torch.tensor([1.0, -2.0, 0.3, 0.0, 0.5, 0.0])
    truth = torch.einsum("chw,c->hw", features - features.mean((1, 2), keepdim=True), direction)
    labels = (truth > 0.5).long()
    head, loss = fit_head(features.flatten(1).T, labels.flatten(), steps=300, lr=0.05)
    assert isinstance(head, torch.nn.Conv2d) and head.kernel_size == (1, 1)
    # At stride 1 the prediction is the head on each cell, no interpolation.
    predicted = predict(head, features, (h, w), stride=1)
    scores = iou_scores(confusion(predicted, labels.numpy().astype(bool)))
    assert scores["miou"] > 95 and loss < 0.2


def test_the_head_is_seeded():
    rng = np.random.default_rng(1)
    features = torch.from_numpy(rng.normal(size=(5000, 4)).astype(np.float32))
    labels = (features[:, 0] > 0).long()
    one, two, other = (fit_head(features, labels, 20, 0.01, seed)[0] for seed in (3, 3, 4))
    assert torch.equal(one.weight, two.weight) and not torch.equal(one.weight, other.weight)


def test_bn_statistics_are_recomputed_as_the_average_over_the_images():
    encoder = TinyEncoder(4)
    images = [torch.randn(3, 16, 24) * 3 + 1 for _ in range(3)]
    assert recompute_bn_stats(encoder, images) == 4
    first = encoder.conv1[1]
    assert not encoder.training and first.momentum is None and first.num_batches_tracked == 3
    with torch.no_grad():
        means = [encoder.conv1[0](x[None]).mean((0, 2, 3)) for x in images]
    torch.testing.assert_close(first.running_mean, torch.stack(means).mean(0))


def test_the_random_encoder_is_seeded_and_leaves_the_global_rng_alone():
    config = {"arch": "tiny", "tiny_width": 4, "decoder_width": 8}
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a, b, c = (random_encoder(config, s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.conv1[0].weight, b.conv1[0].weight)
    assert not torch.equal(a.conv1[0].weight, c.conv1[0].weight)


# --- end to end and the command ---------------------------------------------------------------


def test_probe_command_scores_both_encoders_and_writes_json(run, tmp_path, capsys):
    data, checkpoint = run
    out = tmp_path / "probe.json"
    argv = ["probe", "--data", str(data), "--checkpoint", str(checkpoint), "--steps", "50"]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["encoders"]) == {"cmp", "random"}
    for scores in result["encoders"].values():
        for key in ("miou", "iou_background", "iou_object"):
            assert 0 <= scores[key] <= 100
        assert np.isfinite(scores["train_loss"])
    assert result["num_train_samples"] == 6 and result["num_val_samples"] == 3
    assert result["num_val_pixels"] == 3 * SIZE[0] * SIZE[1]
    assert result["num_train_cells"] == 6 * 6 * 8  # 47 x 63 padded to 48 x 64
    assert 0 < result["object_fraction_val"] < 1
    assert (result["steps"], result["lr"], result["bn_rule"]) == (50, 0.01, BN_RULE)
    printed = capsys.readouterr().out
    assert printed.strip() == format_probe(result) and BN_RULE in printed
    assert "random init" in printed and "CMP (step 4)" in printed
    # The same seed gives the same numbers.
    again = probe(data, checkpoint, steps=50, max_samples=2)
    assert again["num_train_samples"] == again["num_val_samples"] == 2
    assert probe(data, checkpoint, steps=50, max_samples=2)["encoders"] == again["encoders"]


def test_data_without_object_ids_is_one_line_exit_2(run, tmp_path, capsys):
    _, checkpoint = run
    plain = write_dataset(tmp_path / "plain", num_train=2, num_val=1)
    assert main(["probe", "--data", str(plain), "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cmpmodel: error: {plain}: no object ids (probe needs synthetic clips extracted "
        "with their descriptions)"
    )


def test_bad_checkpoint_empty_split_and_bad_options_are_one_line_exit_2(run, tmp_path, capsys):
    data, checkpoint = run
    cases = [
        ["--checkpoint", str(tmp_path / "missing.pt")],
        ["--checkpoint", str(checkpoint), "--steps", "0"],
        ["--checkpoint", str(checkpoint), "--json", str(tmp_path / "out.txt")],
    ]
    for extra in cases:
        assert main(["probe", "--data", str(data), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cmpmodel: error: ") and "\n" not in err, extra
    train_only = write_truth_dataset(tmp_path / "train_only", num_train=2, num_val=0)
    with pytest.raises(UsageError, match="no val samples to probe"):
        probe(train_only, checkpoint, steps=1)
