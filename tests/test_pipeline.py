"""The extraction pipeline through a local Ray: content, determinism, resume, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError, UsageError
from cmpdata.io.pairs import PairConfig
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.directory import locked
from cmpdata.store.manifest import read_failures, read_manifest
from cmpdata.store.reports import verify_dataset
from pipelines.extract import RunSettings, extract
from pipelines.stages import flowed_batches

CONFIG = ExtractConfig(pairs=PairConfig(short_side=None), shard_size=4, val_fraction=0.34)
QUIET = RunSettings(progress=False)


def videos(clips: Path) -> list[str]:
    return [str(clips / "*.mp4")]


def extract_argv(inputs: str, out: Path, *extra: str) -> list[str]:
    """``cmpdata extract`` with the options of ``CONFIG`` (and ``extra``)."""
    options = "--short-side 0 --shard-size 4 --val-fraction 0.34 --quiet"
    return ["extract", "--videos", inputs, "--out", str(out), *options.split(), *extra]


@pytest.fixture(scope="module")
def clean_run(synth_clips: Path, ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "ds"
    result = extract(videos(synth_clips), out, CONFIG, QUIET)
    assert result.complete and result.errors == 0
    return out


def test_end_to_end_dataset(clean_run: Path):
    manifest = read_manifest(clean_run)
    # 3 clips of 24 frames: pairs (0, 3), (10, 13), (20, 23) each; 4 samples a shard.
    assert manifest["complete"] and manifest["num_planned"] == 9 and manifest["num_samples"] == 9
    assert [s["num_samples"] for s in manifest["shards"]] == [4, 4, 1]
    assert read_failures(clean_run) == []
    assert verify_dataset(clean_run, progress=False).ok
    samples = [ShardDataset(clean_run, split=None)[i] for i in range(9)]
    assert [s.sample_id for s in samples][:3] == [
        "clip000.mp4#000000-000003",
        "clip000.mp4#000010-000013",
        "clip000.mp4#000020-000023",
    ]
    # A video's pairs all fall on one side of the split.
    splits: dict[str, set[str]] = {}
    for s in samples:
        splits.setdefault(s.source_id, set()).add(s.split)
        assert s.image.shape == (96, 128, 3) and s.flow.shape == (96, 128, 2)
        assert len(s.guidance) > 0
    assert all(len(v) == 1 for v in splits.values())
    assert sum(manifest["splits"].values()) == 9


def test_one_and_two_workers_give_the_same_dataset(synth_clips: Path, clean_run: Path, tmp_path):
    result = extract(
        videos(synth_clips), tmp_path / "w1", CONFIG, RunSettings(workers=1, progress=False)
    )
    clean = read_manifest(clean_run)
    assert result.manifest["plan_fingerprint"] == clean["plan_fingerprint"]
    assert result.manifest["content_digest"] == clean["content_digest"]


# The GPU path's plumbing (decode tasks that stream batches, a pool of flow actors, then the
# finishing tasks) on a Ray of its own that declares one GPU; DIS never touches it.
GPU_PATH = """
import json, sys
import ray
sys.path.insert(0, "tests")
from test_pipeline import CONFIG, videos
from pipelines.extract import RunSettings, extract

ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
run = RunSettings(num_gpus=1, batch_size=2, progress=False)
result = extract(videos(__import__("pathlib").Path(sys.argv[1])), sys.argv[2], CONFIG, run)
print(json.dumps([result.complete, result.manifest["content_digest"]]))
"""


def test_the_gpu_path_gives_the_same_dataset(synth_clips: Path, clean_run: Path, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", GPU_PATH, str(synth_clips), str(tmp_path / "gpu")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
        env={**os.environ, "RAY_BACKEND_LOG_LEVEL": "fatal"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    complete, digest = json.loads(done.stdout.strip().splitlines()[-1])
    assert complete and digest == read_manifest(clean_run)["content_digest"]


def test_a_task_keeps_one_batch_ahead_at_its_flow_actor():
    # The GPU path's task: the next batch is decoded and sent before the previous one's flows
    # are taken back, so the actor has work while the task finishes; never more than two out.
    log = []

    def batches():
        for k in range(4):
            log.append(f"decode {k}")
            yield [k]

    def submit(batch):
        log.append(f"send {batch[0]}")
        return batch[0]

    def get(ref):
        log.append(f"take {ref}")
        return [10 * ref]

    assert list(flowed_batches(batches(), submit, get)) == [[0], [10], [20], [30]]
    assert log == [
        "decode 0",
        "send 0",
        "decode 1",
        "send 1",
        "take 0",
        "decode 2",
        "send 2",
        "take 1",
        "decode 3",
        "send 3",
        "take 2",
        "take 3",
    ]
    assert list(flowed_batches(iter([]), submit, get)) == []


def test_rerun_resumes_and_other_options_are_refused(synth_clips: Path, clean_run: Path, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(clean_run, out)
    (out / "shard-00001.h5").unlink()  # as if the run had died before this shard
    again = extract(videos(synth_clips), out, CONFIG, QUIET)
    assert again.computed == 4  # only the missing shard was recomputed
    assert again.manifest["content_digest"] == read_manifest(clean_run)["content_digest"]

    other = ExtractConfig(
        pairs=PairConfig(short_side=None), shard_size=4, val_fraction=0.34, seed=1
    )
    with pytest.raises(CmpDataError, match=r"seed: 0 -> 1"):
        extract(videos(synth_clips), out, other, QUIET)
    replaced = extract(videos(synth_clips), out, other, RunSettings(overwrite=True, progress=False))
    assert replaced.complete and replaced.manifest["config"]["seed"] == 1


def test_broken_videos_are_recorded_and_the_rest_completes(synth_clips: Path, ray_local, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("clip000.mp4", "clip001.mp4"):
        shutil.copy(synth_clips / name, inputs / name)
    (inputs / "noise.mp4").write_bytes(os.urandom(4000))
    (inputs / "text.avi").write_text("not a video at all")
    data = (synth_clips / "clip002.mp4").read_bytes()
    (inputs / "truncated.mp4").write_bytes(data[: len(data) // 2])
    result = extract([str(inputs)], tmp_path / "ds", CONFIG, QUIET)
    assert result.complete and result.errors == 0
    failures = {d.source_id: d for d in read_failures(tmp_path / "ds")}
    assert {"noise.mp4", "text.avi"} <= set(failures)
    assert all(failures[k].t0 == -1 and "noise.mp4" in failures[k].reason for k in ["noise.mp4"])
    assert result.written >= 6  # both intact clips complete; the truncated one may add some
    assert verify_dataset(tmp_path / "ds", progress=False).ok


def test_kill_9_then_rerun_gives_the_clean_dataset(synth_clips: Path, clean_run: Path, tmp_path):
    out = tmp_path / "ds"
    run = ["--workers", "1", "--batch-size", "1"]
    cmd = [sys.executable, "-m", "pipelines.cli", *extract_argv(videos(synth_clips)[0], out, *run)]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (out / "shard-00000.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the first shard never appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait()
    result = extract(videos(synth_clips), out, CONFIG, QUIET)
    clean = read_manifest(clean_run)
    assert result.manifest["plan_fingerprint"] == clean["plan_fingerprint"]
    assert result.manifest["content_digest"] == clean["content_digest"]
    assert not list(out.glob(".shard-*"))  # no temporary file left behind
    assert verify_dataset(out, progress=False).ok


def test_a_second_run_on_the_same_directory_refuses(synth_clips: Path, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    with locked(out), pytest.raises(CmpDataError, match="another cmpdata extract"):
        extract(videos(synth_clips), out, CONFIG, QUIET)


def test_unusable_output_directory_is_refused_before_work(synth_clips: Path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match=r"ds: cannot be created: .*file is not a directory"):
        extract(videos(synth_clips), blocker / "ds", CONFIG, QUIET)
    with pytest.raises(UsageError, match=r"exists and is not a directory"):
        extract(videos(synth_clips), blocker, CONFIG, QUIET)
    assert blocker.read_text() == "x"


def test_work_items_keep_long_videos_whole_but_feed_every_worker():
    from cmpdata.plan import Plan, PlannedSample
    from cmpdata.records import Source, VideoInfo
    from pipelines.extract import work_items

    sources = {k: Source(k, Path(k), "video") for k in ("long.mp4", "short.mp4")}
    infos = {k: VideoInfo(64, 64, 10**6) for k in sources}
    samples = [PlannedSample("long.mp4", t, t + 3, "train") for t in range(0, 30000, 10)]
    samples += [PlannedSample("short.mp4", t, t + 3, "train") for t in range(0, 100, 10)]
    plan = Plan(ExtractConfig(shard_size=1000), {}, sources, infos, [], samples)
    few = work_items(plan, range(plan.num_shards), workers=1)
    many = work_items(plan, range(plan.num_shards), workers=64)
    for items in (few, many):
        # Every planned pair exactly once, each item within one shard and one source.
        got = [(i.source.id, p) for i in items for p in i.pairs]
        assert got == [(s.source_id, (s.t0, s.t1)) for s in samples]
        assert all(
            i.shard
            == plan.samples.index(
                next(
                    s for s in samples if s.source_id == i.source.id and (s.t0, s.t1) == i.pairs[0]
                )
            )
            // 1000
            for i in items
        )
    assert len(few) < 10  # one worker: few long items, few restarts of the decoder
    assert len(many) >= 4 * 32 and max(len(i.pairs) for i in many) == 16


def test_a_shard_that_does_not_read_back_as_written_is_never_finished(
    synth_clips: Path, clean_run: Path, tmp_path, monkeypatch, capsys
):
    import h5py
    from shardwriter import InlineShardWriter

    import cmpdata.store.directory
    import pipelines.extract
    from pipelines.cli import main

    # The shards written in this process, where the patch below holds (the same function as
    # the Ray tasks; those report their errors as test_a_failed_shard_task_is_one_line shows).
    monkeypatch.setattr(pipelines.extract, "ShardWriter", InlineShardWriter)
    real_write = cmpdata.store.directory.write_shard

    def write_then_change(path, samples, attrs):
        # A writer and a reader that disagree: one stored byte is not what was hashed.
        info = real_write(path, samples, attrs)
        with h5py.File(path, "r+") as f:
            f["data"][5] ^= 0xFF
        return info

    monkeypatch.setattr(cmpdata.store.directory, "write_shard", write_then_change)
    out = tmp_path / "ds"
    argv = extract_argv(videos(synth_clips)[0], out)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "shard-0000" in err and "read back, sample 0" in err and "Traceback" not in err
    assert not list(out.glob("shard-*"))  # the shard removed, no done marker
    assert read_manifest(out)["complete"] is False
    monkeypatch.undo()
    assert main(argv) == 0  # the rerun writes the shard again
    assert read_manifest(out)["content_digest"] == read_manifest(clean_run)["content_digest"]


def test_a_shard_from_its_parts_in_any_order(clean_run: Path, tmp_path):
    from cmpdata.store.directory import write_part, write_shard_from_parts
    from cmpdata.store.shards import ShardError, ShardReader

    with ShardReader(clean_run / "shard-00000.h5") as reader:
        samples = [reader.encoded(i) for i in range(len(reader))]
        ids, digests, _ = reader.digests()
        attrs = reader.attrs
    # Parts as workers leave them: any grouping, arriving in any order.
    parts = [write_part(tmp_path, 0, samples[2:]), write_part(tmp_path, 0, samples[:2])]
    assert write_part(tmp_path, 0, samples[:2]) == parts[1]  # a retried task: the same part
    info, rows = write_shard_from_parts(tmp_path, 0, parts, ids, attrs)
    assert rows == [[i, d, s.split] for i, d, s in zip(ids, digests, samples, strict=True)]
    assert list(info.digests) == digests and not list(tmp_path.glob(".shard-*"))
    with ShardReader(tmp_path / "shard-00000.h5") as reader:
        assert reader.digests()[0] == ids
    parts = [write_part(tmp_path, 1, samples[:3])]
    with pytest.raises(ShardError, match="its parts hold 3 samples, 4 expected"):
        write_shard_from_parts(tmp_path, 1, parts, ids, attrs)
    assert not (tmp_path / "shard-00001.h5").exists()


def test_a_failed_shard_task_is_one_line(ray_local, tmp_path):
    from cmpdata.store.shards import ShardError
    from pipelines.extract import ShardWriter

    writer = ShardWriter(tmp_path, {})
    writer.submit(3, [".shard-00003.h5.part-gone"], ["a#000000-000003"])
    with pytest.raises(ShardError, match=r"shard-00003.h5: its part .* is missing") as caught:
        writer.finished(wait=True)
    assert "\n" not in str(caught.value) and not writer.running


def test_a_dataset_of_the_old_schema_is_one_line_everywhere(
    clean_run: Path, synth_clips: Path, tmp_path
):
    import json

    import h5py

    out = Path(shutil.copytree(clean_run, tmp_path / "old"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    for shard in out.glob("shard-*.h5"):
        with h5py.File(shard, "r+") as f:
            f.attrs["schema_version"] = 1
    with pytest.raises(UsageError) as refused:
        extract(videos(synth_clips), out, CONFIG, QUIET)
    with pytest.raises(CmpDataError) as unread:
        ShardDataset(out)
    report = verify_dataset(out, progress=False)
    for message in (str(refused.value), str(unread.value), *map(str, report.problems)):
        assert "\n" not in message and "shard schema 1" in message and "--overwrite" in message
    assert len(report.problems) == 1
    replace = RunSettings(overwrite=True, progress=False)
    assert extract(videos(synth_clips), out, CONFIG, replace).complete
    assert verify_dataset(out, progress=False).ok
