"""Real camera footage through the whole chain a user runs, command by command:
``cmpdata extract`` (at a non-dyadic resize, with the kinds of input real collections hold)
-> ``verify`` -> ``inspect`` -> ``ShardDataset`` -> ``cmpmodel train`` -> ``eval`` ->
``propagate`` -> ``show``; and a long source through ffmpeg, over a thousand pairs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_errors import train_argv

from cmpdata.store.dataset import ShardDataset
from cmpdata.store.manifest import read_failures, read_manifest
from cmpdata.synth.clips import make_clips
from cmpdata.synth.truth import read_truth
from cmpmodel.cli import main as cmpmodel_main
from pipelines.cli import main as cmpdata_main

pytestmark = pytest.mark.usefixtures("ray_local", "torch_one_thread")

# Inputs of cmpdata.synth.footage, beside the two real clips as shipped.
KINDS = ("av1_mkv", "rotated90", "hevc_10bit", "vfr", "frames_damaged", "lying", "symlink_loop")


@pytest.fixture(scope="module")
def dataset(real_clips, footage, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real") / "ds"
    inputs = [str(real_clips["bikes"]), str(real_clips["carphone"])]
    inputs += [str(footage[kind]) for kind in KINDS]
    options = "--quiet --max-pairs-per-video 4 --gap 2 --stride 5 --shard-size 8 --val-fraction 0.3"
    code = cmpdata_main(["extract", "--videos", *inputs, "--out", str(out), *options.split()])
    assert code == 0
    return out


def test_what_extract_wrote_from_real_footage_verifies(dataset, capsys):
    capsys.readouterr()
    assert cmpdata_main(["verify", str(dataset), "--quiet"]) == 0
    assert cmpdata_main(["inspect", str(dataset)]) == 0
    report = capsys.readouterr().out
    assert "DAMAGED" not in report and "416x979" in report
    manifest = read_manifest(dataset)
    sources = manifest["sources"]
    # The anamorphic clip at its display aspect (193x144 shown, so 558x416 stored), decoded
    # by ffmpeg as are AV1 and 10-bit HEVC; bikes by decord (8-bit 4:2:0, square pixels).
    assert {sid: s["decoder"] for sid, s in sources.items() if s["decoder"]} == {
        "bikes.mp4": "decord",
        "carphone.mp4": "ffmpeg",
        "av1.mkv": "ffmpeg",
        "rotated90.mp4": "decord",
        "hevc_10bit.mp4": "ffmpeg",
        "vfr.mkv": "decord",
        "frames_damaged": "frames",
        "lying.mkv": "ffmpeg",
        "clip.webm": "decord",
    }
    assert manifest["splits"]["train"] > 0 and manifest["splits"]["val"] > 0
    assert "header claims 100000000 frames" in sources["lying.mkv"]["note"]


def test_every_loss_is_recorded_with_its_own_reason(dataset):
    failures = read_failures(dataset)
    by_stage: dict[str, list[str]] = {}
    for d in failures:
        by_stage.setdefault(d.stage, []).append(f"{d.sample_id}: {d.reason}")
    skipped = by_stage["source"]
    assert any("Too many levels of symbolic links" in r for r in skipped), skipped
    assert any("lying.mkv" in r and "header claims" in r for r in by_stage["probe"])
    damaged = [r for r in by_stage.get("decode", []) if r.startswith("frames_damaged")]
    # Only the pair using 00005.jpg (damaged data) is dropped, naming that frame; the folder's
    # other pairs are written.
    assert damaged == ["frames_damaged#000005-000007: damaged JPEG"] or (
        len(damaged) == 1 and "00005.jpg" in damaged[0] and "damaged JPEG" in damaged[0]
    ), damaged
    written = read_manifest(dataset)["sources"]["frames_damaged"]["written"]
    assert written == 3
    assert all(len(d.reason) <= 400 for d in failures)


def test_the_samples_read_back_with_their_non_dyadic_scales(dataset):
    data = ShardDataset(dataset, split=None)
    samples = [data[i] for i in range(len(data))]
    bikes = [s for s in samples if s.source_id == "bikes.mp4"]
    assert bikes and all(s.image.shape == (416, 979, 3) for s in bikes)
    assert all(s.scale == (979 / 640, 416 / 272) for s in bikes)
    carphone = next(s for s in samples if s.source_id == "carphone.mp4")
    assert carphone.image.shape == (416, 558, 3)
    rotated = next(s for s in samples if s.source_id == "rotated90.mp4")
    assert rotated.image.shape[0] > rotated.image.shape[1]  # upright: portrait
    assert all(np.isfinite(s.flow).all() and len(s.guidance) > 0 for s in samples)


def test_train_eval_propagate_and_show_on_real_footage(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    faster = ["--crop", "64", "--workers", "0", "--loss-stride", "4"]
    code = cmpmodel_main(train_argv(dataset, run, *faster))
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    checkpoint = str(run / "checkpoint.pt")
    results = tmp_path / "eval.json"
    assert (
        cmpmodel_main(
            [
                "eval",
                "--data",
                str(dataset),
                "--checkpoint",
                checkpoint,
                "--max-samples",
                "3",
                "--json",
                str(results),
            ]
        )
        == 0
    )
    evaluated = json.loads(results.read_text())
    assert evaluated["num_samples"] == 3
    assert all(np.isfinite(m["epe"]) for m in evaluated["methods"].values())

    frame = ShardDataset(dataset, split="val")[0].image
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    propagated = tmp_path / "propagated.png"
    assert (
        cmpmodel_main(
            [
                "propagate",
                "--checkpoint",
                checkpoint,
                "--image",
                str(image),
                "--guide",
                "40,40,5,0",
                "--out",
                str(propagated),
            ]
        )
        == 0
    )
    assert cv2.imread(str(propagated)) is not None
    picture = tmp_path / "show.png"
    assert cmpdata_main(["show", str(dataset), "--index", "0", "--out", str(picture)]) == 0
    shown = cv2.imread(str(picture))
    assert shown is not None and shown.shape[1] > 2 * 416


def test_a_long_source_through_ffmpeg_loses_no_pair(footage, tmp_path, capsys):
    # Over a thousand pairs in a run of two workers: work items of over 100 pairs, which the
    # old ffmpeg frame selection could not parse (every pair of the source was lost).
    out = tmp_path / "long"
    options = "--quiet --decoder ffmpeg --short-side 0 --stride 3 --shard-size 2000 --workers 2"
    argv = ["extract", "--videos", str(footage["long"]), "--out", str(out), *options.split()]
    code = cmpdata_main(argv)
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    lost = [d for d in read_failures(out) if not d.stage.startswith("filter:")]
    assert manifest["num_planned"] > 1000 and not lost, lost[:3]
    # Only the pair filters drop pairs (a shot cut where the clip loops, still moments).
    assert manifest["num_samples"] + manifest["num_dropped"] == manifest["num_planned"]
    assert manifest["num_samples"] > 900, manifest["num_samples"]


def test_synthetic_clips_beside_real_footage_share_shards(real_clips, tmp_path, capsys):
    # The truth parts of the synthetic clip and the real video's samples without them in one
    # shard (make bench extracts both together).
    make_clips(tmp_path / "synth", 1, height=96, width=128, num_frames=8)
    out = tmp_path / "ds"
    inputs = [str(real_clips["bikes"]), str(tmp_path / "synth" / "clip000.mp4")]
    options = "--quiet --max-pairs-per-video 2 --stride 2 --short-side 96 --val-fraction 0"
    assert cmpdata_main(["extract", "--videos", *inputs, "--out", str(out), *options.split()]) == 0
    assert cmpdata_main(["verify", str(out)]) == 0
    samples = list(ShardDataset(out, split="train"))
    assert len(read_manifest(out)["shards"]) == 1
    assert {s.source_id for s in samples} == {"bikes.mp4", "clip000.mp4"}
    for sample in samples:
        truth = read_truth(sample.extras, sample.flow.shape[:2])
        assert (truth is None) == (sample.source_id == "bikes.mp4")
    capsys.readouterr()
