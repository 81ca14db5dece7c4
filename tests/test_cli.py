"""The ``cmpdata`` command as a user runs it: exit codes, messages, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from pipelines.cli import main


def test_probe_lists_sources_and_names_skipped_files(synth_clips: Path, tmp_path: Path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_text("this is not a video")
    code = main(["probe", str(synth_clips / "clip000.mp4"), str(synth_clips / "clip001"), str(bad)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "clip000.mp4" in out and "96" in out and "128" in out and "24" in out
    assert "clip001" in out
    assert "broken.mp4" in err and "Traceback" not in err
    assert "2 usable, 1 skipped" in out


def test_missing_path_is_a_one_line_error(tmp_path: Path):
    # A real process, to see exactly what a user sees: one line, no traceback, exit 2.
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "probe", str(tmp_path / "nope.mp4")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "nope.mp4" in proc.stderr and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_preview_writes_one_picture_per_pair(synth_clips: Path, tmp_path: Path, capsys):
    out = tmp_path / "preview"
    code = main(
        [
            "preview",
            str(synth_clips / "clip002.mp4"),
            "--out",
            str(out),
            "--short-side",
            "96",
            "--max-pairs-per-video",
            "2",
            "--consistency",
        ]
    )
    assert code == 0, capsys.readouterr().err
    pictures = sorted(out.glob("*.png"))
    assert [p.name for p in pictures] == [
        "clip002.mp4_000000-000003.png",
        "clip002.mp4_000020-000023.png",
    ]
    image = cv2.imread(str(pictures[0]))
    assert image is not None and image.shape[0] >= 96 and image.shape[1] > 2 * 128


def test_preview_with_only_bad_input_exits_2(tmp_path: Path, capsys):
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"\x00" * 1000)
    assert main(["preview", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "x.mp4" in err and "Traceback" not in err


def test_raft_without_weights_says_how_to_supply_them(
    synth_clips: Path, tmp_path: Path, capsys, monkeypatch
):
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code = main(
        [
            "preview",
            str(synth_clips / "clip000.mp4"),
            "--out",
            str(tmp_path / "o"),
            "--flow",
            "raft-small",
        ]
    )
    assert code == 2
    assert "--flow-weights" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path: Path, capsys, ray_local):
    from pipelines.demo import DemoSettings, run_demo

    out = tmp_path / "demo"
    summary = run_demo(out, DemoSettings(clips=2, iters=4))
    assert json.loads(json.dumps(summary)) == json.loads((out / "summary.json").read_text())
    # The stages: one pair of each 9-frame clip at the stage demo's stride, with a picture.
    assert summary["pairs"] == 2 and len(list((out / "pictures").glob("*.png"))) == 2
    # The estimated flow must be far better than no flow at all on the ground truth.
    assert summary["epe_mean"] < 0.25 * summary["epe_zero_mean"]
    # ...and the clips went on through extract into a verified dataset, with pictures of it,
    printed = capsys.readouterr().out
    assert "OK:" in printed and summary["verified"]
    assert (out / "dataset" / "manifest.json").exists() and len(list(out.glob("show-*.png"))) == 2
    # ...one clip held out, the other trained on for the steps asked, then evaluated on it,
    assert summary["train_samples"] > 0 and summary["val_samples"] > 0
    assert summary["train"]["step"] == 4 and (out / "train" / "checkpoint.pt").exists()
    scores = json.loads((out / "eval.json").read_text())
    assert scores["split"] == "val" and scores["num_samples"] == summary["val_samples"]
    assert set(scores["methods"]) == {"model", "zero", "nearest", "idw"} == set(summary["eval"])
    assert "nearest" in printed and "idw" in printed and "one per object" in printed
    assert cv2.imread(str(out / "eval.png")) is not None
    # The guides copy the stored flow, so spreading them must beat no motion at all.
    assert scores["methods"]["nearest"]["epe"] < scores["methods"]["zero"]["epe"]
    # ...and propagated guide vectors over a held-out frame.
    frame = cv2.imread(str(out / "propagate-input.png"))
    picture = cv2.imread(str(out / "propagate.png"))
    guides = summary["propagate"]["guides"]
    assert len(guides) == 3 and picture.shape[1] > frame.shape[1]
    assert all(0 <= x < frame.shape[1] and 0 <= y < frame.shape[0] for x, y, _, _ in guides)
    assert summary["propagate"]["sample_id"].startswith("clip000.mp4")
    # One clip cannot be both trained on and held out.
    with pytest.raises(ValueError, match="at least 2 clips"):
        DemoSettings(clips=1)


def test_the_demo_profiles_are_the_ones_the_command_offers():
    from pipelines.cli import build_parser
    from pipelines.demo import PROFILES

    demo = build_parser().subcommands["demo"]
    assert "{" + ",".join(PROFILES) + "}" in demo.format_help()
    for name in PROFILES:
        assert demo.parse_args(["--profile", name]).profile == name


def _extract_config(argv):
    from pipelines.cli import apply_config_file, build_parser, extract_config

    parser = build_parser()
    args, sections = apply_config_file(parser, parser.parse_args(argv), argv)
    return extract_config(args, sections)


def test_config_file_sets_options_and_flags_win(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "shard-size: 50\nseed: 7\ngap: 2\n"
        "filters: {static_motion_px: 1.0}\nguidance_options: {nms_ks: 41, max_num_guide: 150}\n"
        "flow_options: {preset: fast}\n"
    )
    config = _extract_config(
        ["extract", "--videos", "v", "--out", "o", "--config", str(cfg), "--seed", "3"]
    )
    assert config.shard_size == 50 and config.pairs.gap == 2 and config.seed == 3
    assert config.filters.static_motion_px == 1.0 and config.guidance.nms_ks == 41
    assert config.guidance.max_num_guide == 150 and config.flow_options == {"preset": "fast"}


def test_bad_config_files_are_named(tmp_path: Path, capsys):
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("shard_sise: 5\n")
    unsafe = tmp_path / "u.yaml"
    unsafe.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    for path, words in [(bad_key, "unknown keys ['shard_sise']"), (unsafe, "not valid YAML")]:
        code = main(
            ["extract", "--videos", "v", "--out", str(tmp_path / "o"), "--config", str(path)]
        )
        err = capsys.readouterr().err
        assert code == 2 and str(path) in err and words in err and "pwned" not in err
