"""One error contract for both commands: a user's mistake is one line and exit 2 with nothing
done (nothing created in ``--out``), an expected failure at run time is one line naming the
file and exit 1, a bug in our code keeps its traceback. Runs wait a bounded time, never for
ever."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from shardedit import tamper
from test_dataset import make_dataset

from cmpdata.errors import ConfigError, UsageError
from cmpdata.store.shards import ShardReader, file_sha256
from cmpmodel.cli import main as cmpmodel_main
from pipelines.cli import main as cmpdata_main

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def extract(clip: Path, out: Path, *extra: str) -> list[str]:
    options = "--quiet --shard-size 4 --max-pairs-per-video 2"
    return ["extract", "--videos", str(clip), "--out", str(out), *options.split(), *extra]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--short-side", "5"], "short_side must be in 16..4096"),
        (["--short-side", "5000"], "short_side must be in 16..4096"),
        (["--short-side", "0", "--min-side", "4"], "min_side must be >= 16"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--workers", "-2"], "workers must be >= 1"),
        (["--gap", "0"], "gap must be >= 1"),
        (["--val-fraction", "2"], "val_fraction must be in [0, 1]"),
        (
            ["--flow", "dis", "--flow-weights", "w.pth"],
            "--flow-weights applies to the learned estimators",
        ),
    ],
)
def test_bad_options_are_refused_at_once_and_create_nothing(
    synth_clips, tmp_path, capsys, options, words
):
    out = tmp_path / "new" / "ds"
    assert cmpdata_main(extract(synth_clips / "clip000.mp4", out, *options)) == 2
    err = capsys.readouterr().err
    assert one_line(err) and words in err, err
    assert not (tmp_path / "new").exists()


def test_refused_inputs_leave_no_output_folder(tmp_path, capsys):
    out = tmp_path / "ds"
    assert cmpdata_main(extract(tmp_path / "missing.mp4", out)) == 2
    assert "missing.mp4: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 2000)
    assert cmpdata_main(extract(bad, out)) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "no frame pairs to extract" in err and "bad.mp4" in err
    assert not out.exists()


def test_more_gpus_than_there_are_is_refused(synth_clips, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    started = time.monotonic()
    assert (
        cmpdata_main(extract(synth_clips / "clip000.mp4", tmp_path / "ds", "--num-gpus", "1")) == 2
    )
    err = capsys.readouterr().err
    assert one_line(err) and "--num-gpus 1: this machine has 0 GPUs" in err
    assert not (tmp_path / "ds").exists() and time.monotonic() - started < 120


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never answers (not a Ray cluster)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for connection in held:
        connection.close()


def test_cluster_addresses_that_do_not_answer_are_refused_in_bounded_time(
    synth_clips, tmp_path, silent_port, capsys
):
    clip = synth_clips / "clip000.mp4"
    cases = [
        ("127.0.0.1:1", "nothing answers there (Connection refused)"),
        (f"127.0.0.1:{silent_port}", "no Ray cluster answered within 3 s"),
        ("no-port", "expected auto or HOST:PORT"),
    ]
    for address, words in cases:
        started = time.monotonic()
        code = cmpdata_main(
            extract(clip, tmp_path / "ds", "--address", address, "--connect-timeout", "3")
        )
        err = capsys.readouterr().err
        assert code == 2 and one_line(err) and words in err, (address, err)
        assert time.monotonic() - started < 30
    assert not (tmp_path / "ds").exists()


def test_address_auto_with_no_ray_running(synth_clips, tmp_path):
    # A private PID and mount namespace: this test session's own Ray is out of sight there.
    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "-fpm", "--mount-proc", "true"], capture_output=True
        ).returncode
    ):
        pytest.skip("needs unshare with PID and mount namespaces (root)")
    script = (
        "import subprocess, sys; subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', '/tmp/ray'],"
        " check=True); from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    Path("/tmp/ray").mkdir(exist_ok=True)
    argv = extract(synth_clips / "clip000.mp4", tmp_path / "ds", "--address", "auto")
    proc = subprocess.run(
        ["unshare", "-fpm", "--mount-proc", sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and one_line(proc.stderr), proc.stderr
    assert "--address auto: cannot join the Ray cluster" in proc.stderr
    assert "Could not find any running Ray instance" in proc.stderr


def test_a_bug_keeps_its_traceback(synth_clips, tmp_path, monkeypatch):
    import pipelines.extract

    def broken(*args, **kwargs):
        raise ValueError("an internal shape check failed")

    monkeypatch.setattr(pipelines.extract, "plan_dataset", broken)
    with pytest.raises(ValueError, match="internal shape check"):
        cmpdata_main(extract(synth_clips / "clip000.mp4", tmp_path / "ds"))


def test_config_errors_are_value_errors_and_usage_errors():
    from cmpdata.io.pairs import PairConfig

    with pytest.raises(ConfigError) as error:
        PairConfig(stride=0)
    assert isinstance(error.value, ValueError) and isinstance(error.value, UsageError)
    assert error.value.exit_code == 2


# Looking at a dataset ------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    make_dataset(root, shard_sizes=(4, 4))
    return root


def test_inspect_exits_1_on_damage(dataset, capsys):
    assert cmpdata_main(["inspect", str(dataset)]) == 0
    capsys.readouterr()
    (dataset / "shard-00001.h5").write_bytes(b"not HDF5")
    assert cmpdata_main(["inspect", str(dataset)]) == 1
    out, err = capsys.readouterr()
    assert "DAMAGED" in out and "shard-00001.h5" in out and "cmpdata verify" in err


def test_outputs_that_cannot_be_written_are_refused(dataset, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert cmpdata_main(["show", str(dataset), "--index", "0", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "is a directory" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cmpdata_main(["preview", str(dataset), "--out", str(blocker)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


# Training and the model ------------------------------------------------------------------------


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    """``cmpmodel train`` of a tiny model for a few steps (``extra`` wins)."""
    options = "--arch tiny --iters 3 --batch-size 2 --crop 32 --lr 0.01"
    return ["train", "--data", str(data), "--out", str(out), *options.split(), *extra]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_damaged_sample_met_in_training_is_one_line(dataset, tmp_path, capsys, workers):
    # A train sample whose content changed after its digest was stored; the shard's checksum
    # in the manifest is made to match, so only reading the sample can tell.
    shard = dataset / "shard-00000.h5"
    with ShardReader(shard) as reader:
        row = next(i for i in range(len(reader)) if reader.encoded(i).split == "train")
        seed = reader.encoded(row).guide_seed
    tamper(shard, row, guide_seed=seed + 1)
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["shards"][0].update(bytes=shard.stat().st_size, sha256=file_sha256(shard))
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    code = cmpmodel_main(
        train_argv(dataset, tmp_path / "run", "--workers", workers, "--iters", "20")
    )
    err = capsys.readouterr().err
    said = err.splitlines()[-1]  # after the progress bar
    assert code == 1 and said.startswith("cmpmodel: error: "), err
    assert "Traceback" not in err and "Caught" not in err, err
    assert f"{shard}: sample {row}" in said and "--skip-damaged" in said


def test_training_outputs_that_cannot_be_written(dataset, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cmpmodel_main(train_argv(dataset, blocker)) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "exists and is not a directory" in err
    assert blocker.read_text() == "x"


def test_propagate_refuses_absurd_guides_and_unwritable_outputs(tmp_path, capsys):
    import cv2
    import numpy as np

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((40, 60, 3), np.uint8))
    base = ["propagate", "--checkpoint", str(tmp_path / "none.pt"), "--image", str(image)]
    cases = [
        ("10,10,1e9,0", "longer than the 60 x 40 image"),
        ("10,10,nan,0", "lies outside"),
        ("100,10,1,0", "lies outside"),
    ]
    for guide, words in cases:
        assert cmpmodel_main([*base, "--guide", guide, "--out", str(tmp_path / "p.png")]) == 2
        err = capsys.readouterr().err
        assert one_line(err) and words in err, err
    assert cmpmodel_main([*base, "--guide", "1,1,1,0", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cmpmodel_main([*base, "--guide", "1,1,1,0", "--out", str(tmp_path / "p.png")]) == 2
    assert "none.pt: no such checkpoint" in capsys.readouterr().err


def test_a_checkpoint_holding_objects_is_refused_without_unsafe_advice(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"model": argparse.Namespace(a=1)}, evil)
    assert (
        cmpmodel_main(
            ["export-encoder", "--checkpoint", str(evil), "--out", str(tmp_path / "e.pth")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert one_line(err) and "evil.pt: not loaded" in err and "Namespace" in err
    assert "weights_only" not in err and "trust" not in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["synth", "--out", "{tmp}/s", "--count", "0"], "count must be >= 1"),
        (["synth", "--out", "{tmp}/s", "--height", "2"], "both sides must be >= 8 px"),
        (["synth", "--out", "{tmp}/file"], "exists and is not a directory"),
        (["demo", "--out", "{tmp}/file"], "exists and is not a directory"),
        (["verify", "{tmp}/none"], "no such dataset directory"),
        (["inspect", "{tmp}/none"], "no such dataset directory"),
        (["show", "{tmp}/none", "--index", "0", "--out", "{tmp}/x.txt"], "expected a .png"),
    ],
)
def test_other_commands_refuse_in_one_line(tmp_path, capsys, argv, words):
    (tmp_path / "file").write_text("x")
    assert cmpdata_main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and words in err, err
    assert not (tmp_path / "s").exists()
