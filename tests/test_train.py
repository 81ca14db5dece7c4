"""cmpmodel.train and the `cmpmodel train / export-encoder` commands: the lr schedule, steps,
checkpoints, exact resumption, DDP on two gloo processes, validation, TensorBoard, the
progress bar, clear errors.

``write_dataset`` builds a tiny dataset directly (no Ray): synthetic clips' exact flow,
encoded with ``encode_sample`` and written with ``write_shard``; ``test_evaluate`` uses it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from cmpdata.errors import CmpDataError, UsageError
from cmpdata.guidance import GuidanceConfig, build_sampler
from cmpdata.records import FlowSample, FramePair
from cmpdata.stages import guide
from cmpdata.store.codec import FlowCodec
from cmpdata.store.shards import encode_sample, shard_name, write_shard
from cmpdata.synth.clips import SynthConfig, SyntheticClip
from cmpmodel.cli import build_parser, main, read_train_config
from cmpmodel.evaluate import evaluate
from cmpmodel.model import MODEL_FORMAT, TinyEncoder, build_model
from cmpmodel.train import (
    CheckpointError,
    TrainConfig,
    load_checkpoint,
    load_model,
    lr_at,
    plain,
    read_log,
    save_atomic,
    train,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ATTRS = {
    "config": {"seed": 0},
    "flow_backend": {"name": "ground-truth", "params": {}, "weights_sha256": None},
}


def write_dataset(root: Path, num_train: int = 6, num_val: int = 2, size=(48, 64)) -> Path:
    """A one-shard dataset of ground-truth synthetic samples, ``num_train`` train then
    ``num_val`` val, frames of ``size`` (H, W)."""
    root.mkdir(parents=True, exist_ok=True)
    n = num_train + num_val
    clip = SyntheticClip(SynthConfig(height=size[0], width=size[1], num_frames=n + 2))
    sampler = build_sampler(GuidanceConfig())
    codec = FlowCodec()
    samples = []
    for t in range(n):
        pair = FramePair("clip.mp4", t, t + 2, clip.frame(t), clip.frame(t + 2))
        flow, valid = clip.ground_truth(t, t + 2)
        guided = guide(FlowSample(pair, flow.astype(np.float32), valid), sampler, seed=0)
        samples.append(encode_sample(guided, "train" if t < num_train else "val", codec))
    write_shard(root / shard_name(0), samples, {**ATTRS, "codec": codec.params(), "shard_index": 0})
    return root


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    values = {
        "data": [str(data)],
        "out": str(out),
        "arch": "tiny",
        "tiny_width": 8,
        "decoder_width": 16,
        "iters": 4,
        "batch_size": 2,
        "lr": 0.01,
        "crop": 32,
        "workers": 0,
        "log_every": 1,
        "ckpt_every": 100,
        "picture_every": 0,
        **changes,
    }
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train") / "data")


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory after 6 uninterrupted steps (3 epochs of 3 batches, 2 epochs in)."""
    out = tmp_path_factory.mktemp("run") / "full"
    train(tiny_config(data, out, iters=6, picture_every=3, tensorboard=False))
    return out


@pytest.fixture(scope="module")
def validated(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run of ``trained``, validating at steps 4 and 6 (the last), with TensorBoard."""
    out = tmp_path_factory.mktemp("run") / "validated"
    train(tiny_config(data, out, iters=6, picture_every=3, val_every=4))
    return out


def test_lr_schedule_is_the_papers_scaled_linearly():
    config = TrainConfig(iters=70_000, batch_size=10)
    assert lr_at(0, config, world_size=16) == pytest.approx(0.1)
    assert lr_at(0, config) == pytest.approx(0.1 / 16)
    assert lr_at(39_899, config, 16) == pytest.approx(0.1)
    assert lr_at(39_900, config, 16) == pytest.approx(0.01)
    assert lr_at(60_199, config, 16) == pytest.approx(0.01)
    assert lr_at(60_200, config, 16) == pytest.approx(0.001)
    assert lr_at(69_999, config, 16) == pytest.approx(0.001)
    fixed = dataclasses.replace(config, lr=0.05, warmup_iters=10)
    assert [lr_at(s, fixed, 16) for s in (0, 4, 9, 10)] == pytest.approx([0.005, 0.025, 0.05, 0.05])
    assert lr_at(0, config, world_size=8) == pytest.approx(0.05)


def test_one_step_changes_the_weights_and_logs_a_finite_loss(data, tmp_path):
    config = tiny_config(data, tmp_path / "run", iters=1, ckpt_every=1)
    torch.manual_seed(config.seed)
    initial = build_model(config.model_config()).state_dict()
    summary = train(config)
    assert summary["step"] == 1 and np.isfinite(summary["loss"])
    model, _ = load_model(summary["checkpoint"])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, initial[k])]
    assert any(k.startswith("image_encoder") for k in changed)
    assert any(k.startswith("flow_decoder.head") for k in changed)
    (row,) = read_log(tmp_path / "run")
    assert row["step"] == 1 and row["lr"] == pytest.approx(0.01)
    assert 2 * np.log(99) - 1 < row["loss"] < 2 * np.log(99) + 1


def test_checkpoint_loads_with_weights_only_and_carries_the_config(trained):
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 6
    assert checkpoint["config"]["arch"] == "tiny" and checkpoint["config"]["iters"] == 6
    assert checkpoint["model_config"]["tiny_width"] == 8
    assert checkpoint["transform_config"]["crop"] == 32
    assert TrainConfig(**checkpoint["config"]).iters == 6
    rows = read_log(trained)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert sorted(p.name for p in (trained / "pictures").iterdir()) == [
        "step-0000003.png",
        "step-0000006.png",
    ]


def test_resume_reproduces_an_uninterrupted_run(data, trained, tmp_path):
    out = tmp_path / "resumed"
    config = tiny_config(data, out, iters=6, ckpt_every=2, keep_checkpoints=True)
    train(config)
    # As if it had crashed after step 2 (mid-epoch: 3 batches per epoch) with the log run on
    # to step 6: the checkpoint of step 2; the log's rows 3 to 6 are dropped and redone.
    os.replace(out / "checkpoint-0000002.pt", out / "checkpoint.pt")
    assert load_checkpoint(out / "checkpoint.pt")["position"] == 2
    train(dataclasses.replace(config, resume=True))
    resumed, expected = read_log(out), read_log(trained)
    assert [r["step"] for r in resumed] == [r["step"] for r in expected]
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in expected]
    np.testing.assert_allclose(
        [r["loss"] for r in resumed], [r["loss"] for r in expected], rtol=0, atol=1e-6
    )
    final = load_checkpoint(out / "checkpoint.pt")["model"]
    reference = load_checkpoint(trained / "checkpoint.pt")["model"]
    for key, value in reference.items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=1e-6)
    # TensorBoard drops the events logged after the checkpoint too: each step once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]


def test_ddp_with_two_gloo_processes(data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "cmpmodel.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--arch",
        "tiny",
        "--iters",
        "2",
        "--batch-size",
        "2",
        "--crop",
        "32",
        "--workers",
        "0",
        "--lr",
        "0.01",
        "--val-every",
        "2",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in out.glob("checkpoint*.pt")] == ["checkpoint.pt"]
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["world_size"] == 2 and checkpoint["step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    rows = read_log(out)
    assert [r["step"] for r in rows] == [2] and np.isfinite(rows[0]["loss"])
    assert np.isfinite(rows[0]["val_epe"]) and np.isfinite(rows[0]["val_epe_nearest"])


def test_export_encoder_tiny_loads_strictly(trained, tmp_path):
    out = tmp_path / "encoder.pth"
    assert (
        main(["export-encoder", "--checkpoint", str(trained / "checkpoint.pt"), "--out", str(out)])
        == 0
    )
    state = torch.load(out, weights_only=True)
    TinyEncoder(8).load_state_dict(state)


def test_export_encoder_resnet50_loads_into_torchvision(tmp_path):
    config = TrainConfig(arch="resnet50", decoder_width=8)
    torch.manual_seed(0)
    model = build_model(config.model_config())
    save_atomic(
        {
            "model": model.state_dict(),
            "model_format": MODEL_FORMAT,
            "model_config": plain(config.model_config()),
            "config": plain(config),
            "step": 0,
        },
        tmp_path / "r50.pt",
    )
    out = tmp_path / "r50.pth"
    assert (
        main(["export-encoder", "--checkpoint", str(tmp_path / "r50.pt"), "--out", str(out)]) == 0
    )
    result = torchvision.models.resnet50().load_state_dict(
        torch.load(out, weights_only=True), strict=False
    )
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []


def test_bad_inputs_give_clear_errors(data, trained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CmpDataError, match="no shards"):
        train(tiny_config(empty, tmp_path / "r1"))
    with pytest.raises(ValueError, match="architecture"):
        tiny_config(data, tmp_path / "r2", arch="vgg")
    corrupt = tmp_path / "bad" / "checkpoint.pt"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"bad/checkpoint\.pt: not a readable checkpoint"):
        train(tiny_config(data, corrupt.parent, resume=True))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        train(tiny_config(data, tmp_path / "none", resume=True))
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.pt").write_bytes((trained / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError, match="was trained with"):
        train(tiny_config(data, other, tiny_width=16, resume=True))
    with pytest.raises(CheckpointError, match="resume with the same"):
        train(tiny_config(data, other, batch_size=3, resume=True))
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": object()}, pickled)
    with pytest.raises(CheckpointError, match=r"pickled\.pt"):
        load_checkpoint(pickled)
    capsys.readouterr()
    code = main(["train", "--data", str(empty), "--out", str(tmp_path / "r3"), "--arch", "tiny"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("cmpmodel: error:") and "no shards" in err and "Traceback" not in err
    assert main(["export-encoder", "--checkpoint", str(corrupt), "--out", "x.pth"]) == 2
    assert "bad/checkpoint.pt" in capsys.readouterr().err


def test_cli_train_reads_a_yaml_config(data, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data: [{data}]\narch: tiny\ntiny_width: 8\ndecoder_width: 16\niters: 1\n"
        "batch_size: 2\ncrop: 32\nworkers: 0\nlog_every: 1\n"
    )
    out = tmp_path / "yaml-run"
    assert main(["train", "--config", str(config), "--out", str(out), "--lr", "0.02"]) == 0
    saved = load_checkpoint(out / "checkpoint.pt")["config"]
    assert saved["tiny_width"] == 8 and saved["lr"] == 0.02 and saved["iters"] == 1
    config.write_text("data: [x]\nitres: 3\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown keys ['itres']" in capsys.readouterr().err


def test_validation_logs_evals_epes_and_leaves_training_bit_exact(data, trained, validated):
    rows, reference = read_log(validated), read_log(trained)
    assert [r["step"] for r in rows] == [r["step"] for r in reference]
    assert [r["loss"] for r in rows] == [r["loss"] for r in reference]
    assert [r["lr"] for r in rows] == [r["lr"] for r in reference]
    with_val, without = (
        load_checkpoint(validated / "checkpoint.pt"),
        load_checkpoint(trained / "checkpoint.pt"),
    )
    for key, value in without["model"].items():
        assert torch.equal(with_val["model"][key], value), key
    for index, state in without["optimizer"]["state"].items():
        assert torch.equal(
            with_val["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"]
        )
    assert torch.equal(with_val["rng"]["torch"], without["rng"]["torch"])
    # Validation at steps 4 and 6 (the last) only; empty cells read as NaN.
    validated_steps = [r["step"] for r in rows if not np.isnan(r["val_epe"])]
    assert validated_steps == [4, 6]
    assert all(np.isnan(r["val_epe_nearest"]) for r in rows if r["step"] not in (4, 6))
    # The final model's EPE is what `cmpmodel eval` reports of its checkpoint; the nearest-
    # guide baseline does not depend on the model.
    scores = evaluate(data, validated / "checkpoint.pt", max_samples=16)["methods"]
    last = rows[-1]
    assert last["val_epe"] == pytest.approx(scores["model"]["epe"], rel=1e-9)
    assert last["val_epe_nearest"] == pytest.approx(scores["nearest"]["epe"], rel=1e-9)
    assert rows[3]["val_epe_nearest"] == last["val_epe_nearest"]
    assert last["val_epe"] != rows[3]["val_epe"]


def test_tensorboard_holds_the_scalars_and_pictures(validated, trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(validated / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"loss", "lr", "samples_per_s", "val_epe", "val_epe_nearest"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("val_epe")] == [4, 6]
    assert events.Scalars("val_epe")[-1].value == pytest.approx(read_log(validated)[-1]["val_epe"])
    assert tags["images"] == ["picture"]
    assert [e.step for e in events.Images("picture")] == [3, 6]
    assert not (trained / "tensorboard").exists()  # tensorboard=False


def test_without_the_tensorboard_package_one_warning_and_the_run_goes_on(
    data, tmp_path, monkeypatch, capsys
):
    # As if it were not installed: importing either module fails.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    with pytest.warns(UserWarning) as caught:
        summary = train(tiny_config(data, out, iters=2, val_every=2, picture_every=2))
    messages = [str(w.message) for w in caught if "tensorboard" in str(w.message).lower()]
    assert len(messages) == 1 and "pip install tensorboard" in messages[0]
    assert "\n" not in messages[0]
    assert summary["step"] == 2 and (out / "checkpoint.pt").exists()
    assert (out / "pictures" / "step-0000002.png").exists() and not (out / "tensorboard").exists()
    assert summary["val_epe"] == read_log(out)[-1]["val_epe"]
    # The labelled progress bar, with the loss and the validation EPE.
    err = capsys.readouterr().err
    assert "train: 100%" in err and "2/2" in err and "loss=" in err and "val_epe=" in err


def test_val_every_without_val_samples_is_refused_before_any_work(tmp_path, capsys):
    data = write_dataset(tmp_path / "no-val", num_train=4, num_val=0)
    out = tmp_path / "run"
    with pytest.raises(UsageError, match="no val samples"):
        train(tiny_config(data, out, val_every=2))
    assert not out.exists()
    argv = ["train", "--data", str(data), "--out", str(out), "--arch", "tiny", "--batch-size", "2"]
    argv += ["--val-every", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cmpmodel: error:") and "no val samples" in err
    assert err.count("\n") == 1 and not out.exists()


def test_cli_train_validation_and_tensorboard_options(tmp_path, capsys):
    parser = build_parser()
    given = ["train", "--data", "d", "--val-every", "50", "--val-samples", "4", "--no-tensorboard"]
    config = read_train_config(parser.parse_args(given))
    assert (config.val_every, config.val_samples, config.tensorboard) == (50, 4, False)
    config = read_train_config(parser.parse_args(["train", "--data", "d"]))
    assert (config.val_every, config.val_samples, config.tensorboard) == (0, 16, True)
    # Without the flag, a YAML file's value stands.
    yaml = tmp_path / "run.yaml"
    yaml.write_text("data: [d]\ntensorboard: false\nval_every: 7\n")
    config = read_train_config(parser.parse_args(["train", "--config", str(yaml)]))
    assert (config.val_every, config.tensorboard) == (7, False)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "--val-every N" in usage and "0: never (default: 0)" in usage
    assert "--val-samples N" in usage and "(default: 16)" in usage and "--no-tensorboard" in usage
    with pytest.raises(ValueError, match="val_every must be >= 0"):
        TrainConfig(val_every=-1)
