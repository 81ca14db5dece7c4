"""Fault injection: whatever breaks during an extraction or a training run, nothing is lost,
duplicated or corrupt, and the toolkit says what happened.

"The same dataset" means the same content digest recomputed from the shard files by
``verify`` (the samples actually written), not only the same plan fingerprint.

A run that must die at a precise moment, or hit a full disk, runs in a subprocess that
patches itself before calling the library (:data:`FAULTY`): it replaces ``os.replace``,
``os.fsync`` or ``torch.save`` by a version that SIGKILLs the process at the
n-th call, so the library carries no test hook. In those subprocesses the Ray stages are
replayed: ``run_pipeline`` yields the summaries the clean run's pipeline produced and leaves
their part files in the output directory, as the workers did (recorded by the ``clean``
fixture), and the shards are written in the process itself
(:class:`shardwriter.InlineShardWriter`, the same function as the Ray tasks), so that a killed
run costs a process start rather than a Ray job; what is under test there (the driver's
locking, atomic writes, done markers and resuming) runs as is, and every rerun after a kill is
a real ``extract``. Faults inside the Ray stages
(a killed worker, a removed node, a hanging decoder) use the real pipeline.

Covered elsewhere and not repeated here: a whole ``cmpdata extract`` process group killed
from outside after its first shard, then rerun (``test_pipeline``); broken and truncated
videos recorded (``test_pipeline``); a hanging decoder or probe killed (``test_pairs``);
each kind of damage reported on its own (``test_reports``, ``test_dataset``); exact resumption
of training from a mid-epoch checkpoint (``test_train``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import h5py
import pytest
import torch
from test_dataset import drop_dataset, make_dataset, truncate
from test_pipeline import CONFIG, QUIET, extract_argv, videos
from test_train import tiny_config, write_dataset

import pipelines.extract as extract_module
from cmpdata.errors import CmpDataError, FlowWeightsError
from cmpdata.flow import build_flow
from cmpdata.io.media import ffmpeg_exe
from cmpdata.io.pairs import PairConfig
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.manifest import read_failures, read_manifest
from cmpdata.store.reports import verify_dataset
from cmpdata.store.shards import ShardError, ShardReader
from cmpmodel.cli import main as cmpmodel_main
from cmpmodel.train import CheckpointError, load_checkpoint, train
from pipelines.cli import main as cmpdata_main
from pipelines.extract import RunSettings, extract

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("torch_one_thread")

# The start of every subprocess script: ``apply(spec)`` patches the process as ``spec`` asks:
# "kill": {"call": "replace" | "fsync" | "torch.save", "name": the file name (a temporary
# file by its final name) or "torch.save", "when": "before" | "after", "nth": n} SIGKILLs it
# at the n-th matching call (torch.save writes half the file first); "replay": a pickle of
# (shard, Stored, part bytes) makes run_pipeline write those parts and yield those summaries,
# and shards be written in this process; "wait_for": a path the replay waits for before its
# first.
FAULTY = """
import io, json, os, pickle, signal, sys, time
from pathlib import Path

def apply(spec):
    moment = spec.get("kill")
    calls = []

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def matches(name):
        calls.extend([name] if name == moment["name"] else [])
        return name == moment["name"] and len(calls) == moment["nth"]

    if moment and moment["call"] == "replace":
        real_replace = os.replace
        def replace(src, dst):
            hit = matches(Path(dst).name)
            if hit and moment["when"] == "before":
                die()
            real_replace(src, dst)
            if hit:
                die()
        os.replace = replace
    if moment and moment["call"] == "fsync":
        real_fsync = os.fsync
        def fsync(fd):
            # A temporary file ".<name>.tmp-<pid>" is matched by the name it will be given.
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
            if matches(name[1:].split(".tmp-")[0] if ".tmp-" in name else name):
                die()
            real_fsync(fd)
        os.fsync = fsync
    if moment and moment["call"] == "torch.save":
        import torch
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            if not matches("torch.save"):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            with open(f, "wb") if isinstance(f, (str, os.PathLike)) else f as out:
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                out.flush()
                die()
        torch.save = save
    if spec.get("replay"):
        import pipelines.extract
        sys.path.insert(0, "tests")
        from shardwriter import InlineShardWriter
        records = pickle.loads(Path(spec["replay"]).read_bytes())
        def replay(plan, shards, run, options, out):
            while spec.get("wait_for") and not os.path.exists(spec["wait_for"]):
                time.sleep(0.02)
            for shard, stored, part in records:
                if shard in shards:
                    if stored.part:
                        (out / stored.part).write_bytes(part)
                    yield shard, stored
        pipelines.extract.run_pipeline = replay
        pipelines.extract.ShardWriter = InlineShardWriter
"""

# argv: the spec, then the command: ["cmpdata", ...] runs the cmpdata command line, ["train",
# TrainConfig fields] runs cmpmodel.train.train.
RUN = (
    FAULTY
    + """
apply(json.loads(sys.argv[1]))
command = json.loads(sys.argv[2])
if command[0] == "cmpdata":
    from pipelines.cli import main
    sys.exit(main(command[1:]))
from cmpmodel.train import TrainConfig, train
train(TrainConfig(**command[1]))
"""
)


def run_faulty(spec: dict, command: list, **popen) -> subprocess.Popen:
    """Start ``command`` in a subprocess patched by ``spec`` (see :data:`FAULTY`)."""
    return subprocess.Popen(
        [sys.executable, "-c", RUN, json.dumps(spec), json.dumps(command)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # as torch_one_thread: the same sums
        text=True,
        **popen,
    )


def run_killed(spec: dict, command: list) -> None:
    """Run ``command`` patched by ``spec`` and check that it died at the moment asked."""
    proc = run_faulty(spec, command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, f"never reached {spec['kill']}: {err[-3000:]}"


@pytest.fixture(scope="module")
def clean(synth_clips: Path, ray_local, tmp_path_factory) -> Path:
    """An uninterrupted run: the dataset every faulty run must end up equal to. What its
    pipeline yielded, with the part files' bytes, is kept in ``../records.pkl`` for replays."""
    out = tmp_path_factory.mktemp("faults-clean") / "ds"
    records = []
    run_pipeline = extract_module.run_pipeline

    def recording(*args, **kwargs):
        for shard, stored in run_pipeline(*args, **kwargs):
            part = (out / stored.part).read_bytes() if stored.part else b""
            records.append((shard, stored, part))
            yield shard, stored

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extract_module, "run_pipeline", recording)
        result = extract(videos(synth_clips), out, CONFIG, QUIET)
    assert result.complete and result.errors == 0 and result.written == 9
    (out.parent / "records.pkl").write_bytes(pickle.dumps(records))
    return out


def replay(clean: Path, **spec) -> dict:
    return {"replay": str(clean.parent / "records.pkl"), **spec}


def assert_same_dataset(out: Path, clean: Path) -> None:
    """``out`` verifies (checksums, sample digests, no leftover temporary file) and holds
    exactly the samples of ``clean``."""
    report = verify_dataset(out, progress=False)
    assert report.ok, [str(p) for p in report.problems]
    expected = read_manifest(clean)
    assert report.content_digest == expected["content_digest"]  # from the files themselves
    manifest = read_manifest(out)
    for key in ("plan_fingerprint", "content_digest", "num_samples", "splits", "shards"):
        assert manifest[key] == expected[key], key
    assert read_failures(out) == read_failures(clean)


def sample_digests(directory: Path) -> dict[str, str]:
    """Sample id -> digest, from the done markers of a dataset directory."""
    out = {}
    for marker in directory.glob("shard-*.json"):
        out.update({sid: digest for sid, digest, _ in json.loads(marker.read_text())["samples"]})
    return out


# Processes ---------------------------------------------------------------------------------


def parent_of(pid: int) -> int | None:
    try:
        # The command name in /proc/PID/stat may hold spaces: the fields after it are fixed.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pids() -> Iterator[int]:
    return (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())


def busy_ray_workers(raylet: int) -> Iterator[int]:
    """The worker processes of the Ray node ``raylet`` (its pid) that are decoding videos:
    the parents of decord servers (a worker starts its server on its first decode, so one
    found within the watcher's 20 ms poll is found in its first task). Other Rays on the
    machine are not ours."""
    for pid in pids():
        if b"_decord_server" in command_line(pid):
            worker = parent_of(pid)
            if worker and parent_of(worker) == raylet:
                yield worker


def local_raylet() -> int:
    """The pid of the raylet of the Ray this process started (``ray_local``)."""
    (raylet,) = [
        pid
        for pid in pids()
        if parent_of(pid) == os.getpid() and b"raylet/raylet" in command_line(pid)
    ]
    return raylet


class Watcher(threading.Thread):
    """Polls ``find`` until it yields something, then calls ``act`` on it, once."""

    def __init__(self, find, act) -> None:
        super().__init__(daemon=True)
        self.find, self.act = find, act
        self.hit = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            found = next(iter(self.find()), None)
            if found is not None:
                self.act(found)
                self.hit = found
                return
            time.sleep(0.02)


# Workers and nodes -------------------------------------------------------------------------


def test_a_worker_killed_mid_task_loses_and_repeats_nothing(synth_clips, clean, tmp_path):
    # A Ray worker is SIGKILLed while it decodes; Ray runs its task again, and the driver
    # (which refuses a sample it already has) writes each sample exactly once.
    raylet = local_raylet()
    watcher = Watcher(lambda: busy_ray_workers(raylet), lambda pid: os.kill(pid, signal.SIGKILL))
    watcher.start()
    try:
        run = RunSettings(workers=2, batch_size=1, progress=False)
        result = extract(videos(synth_clips), tmp_path / "ds", CONFIG, run)
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.hit is not None, "no worker was killed"
    assert result.complete and result.errors == 0
    assert_same_dataset(tmp_path / "ds", clean)


NODE_REMOVED = """
import json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
sys.path.insert(0, "tests")
from test_faults import Watcher, busy_ray_workers
from test_pipeline import CONFIG
from pipelines.extract import RunSettings, extract

inputs, out = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
node = cluster.add_node(num_cpus=1)
state = {"nodes": len(cluster.list_all_nodes())}

def remove(worker):
    state["markers_before"] = len(list(Path(out).glob("shard-*.json")))
    cluster.remove_node(node)

# The second node goes while one of its workers decodes: mid-task, mid-run.
watcher = Watcher(lambda: busy_ray_workers(node.all_processes["raylet"][0].process.pid), remove)
watcher.start()
# Two tasks at once, whatever the cluster's CPU count reads as at the start: with one, Ray
# would keep every task on the head node, which has a CPU free between them.
run = RunSettings(address=cluster.address, workers=2, progress=False)
result = extract([inputs], out, CONFIG, run)
watcher.stop.set()
state.update(removed=watcher.hit is not None, complete=result.complete, errors=result.errors,
             alive=sum(n["Alive"] for n in ray.nodes()))
print(json.dumps(state))
ray.shutdown()
cluster.shutdown()
"""


def test_a_node_removed_mid_run_gives_the_same_dataset(synth_clips, clean, tmp_path):
    # A separate process: this session's local Ray cannot be joined to a second cluster.
    out = tmp_path / "ds"
    proc = subprocess.run(
        [sys.executable, "-c", NODE_REMOVED, videos(synth_clips)[0], str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["removed"], "the second node never ran a task"
    assert state["markers_before"] < 3  # removed before the last shard was written
    assert state == {**state, "nodes": 2, "complete": True, "errors": 0, "alive": 1}
    assert_same_dataset(out, clean)


# Killed runs -------------------------------------------------------------------------------

MOMENTS = {
    # After the first manifest (complete: false), before any work.
    "early": {"call": "replace", "name": "manifest.json", "when": "after", "nth": 1},
    # A shard's temporary file written, not yet synced to disk (the first shard to complete).
    "mid-shard": {"call": "fsync", "name": "shard-00000.h5", "when": "before", "nth": 1},
    # A shard renamed into place, its done marker not yet written.
    "shard-renamed": {"call": "replace", "name": "shard-00000.h5", "when": "after", "nth": 1},
    # The done marker's temporary file written, not yet renamed.
    "marker-rename": {"call": "replace", "name": "shard-00000.json", "when": "before", "nth": 1},
    # Every shard, done marker and failures.jsonl written, the final manifest not.
    "end": {"call": "replace", "name": "manifest.json", "when": "before", "nth": 2},
}


@pytest.mark.parametrize("moment", MOMENTS)
def test_killed_at_a_moment_then_rerun_gives_the_clean_dataset(
    moment, synth_clips, clean, tmp_path
):
    out = tmp_path / "ds"
    run_killed(
        replay(clean, kill=MOMENTS[moment]), ["cmpdata", *extract_argv(videos(synth_clips)[0], out)]
    )
    left = {p.name for p in out.iterdir()}
    assert ".lock" in left and read_manifest(out)["complete"] is False
    expected_left = {
        "early": not any(name.startswith(("shard-", ".shard-")) for name in left),
        "mid-shard": any(name.startswith(".shard-") and ".h5.tmp-" in name for name in left),
        "shard-renamed": "shard-00000.h5" in left and "shard-00000.json" not in left,
        "marker-rename": any(name.startswith(".shard-00000.json.tmp-") for name in left),
        "end": {f"shard-0000{i}.json" for i in range(3)} | {"failures.jsonl"} <= left,
    }
    assert expected_left[moment], sorted(left)
    # The killed run's lock died with it: the rerun takes it, cleans up and finishes.
    result = extract(videos(synth_clips), out, CONFIG, QUIET)
    assert result.complete and result.errors == 0
    if moment in ("early", "end"):
        assert result.computed == {"early": 9, "end": 0}[moment]  # none kept; all kept
    assert_same_dataset(out, clean)


def test_two_runs_at_once_the_second_refuses(synth_clips, clean, tmp_path, capsys):
    out = tmp_path / "ds"
    go = tmp_path / "go"
    argv = extract_argv(videos(synth_clips)[0], out)
    # The first run holds the lock and waits, mid-run, until the second has been refused.
    first = run_faulty(
        replay(clean, wait_for=str(go)),
        ["cmpdata", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.json").exists():  # written under the lock
            assert first.poll() is None and time.monotonic() < deadline, "the first run failed"
            time.sleep(0.02)
        with pytest.raises(CmpDataError, match="another cmpdata extract is writing"):
            extract(videos(synth_clips), out, CONFIG, QUIET)
        capsys.readouterr()
        assert cmpdata_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(out) in err and "another cmpdata extract" in err
        go.touch()
        assert first.wait(timeout=240) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert_same_dataset(out, clean)


# Full disk, read-only output ---------------------------------------------------------------


@cache
def can_mount_tmpfs() -> bool:
    """Whether this user may mount a tmpfs in a private mount namespace (root may)."""
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /tmp"], capture_output=True
    )
    return probe.returncode == 0


def run_script(script: str, *args: str, namespace: bool = False) -> dict:
    """Run a Python ``script``, with ``namespace`` under ``unshare -m`` (its mounts are its
    own and vanish with it). Returns the JSON value it prints last."""
    command = [sys.executable, "-c", script, *args]
    if namespace:
        if not can_mount_tmpfs():
            pytest.skip("needs unshare -m and mount (root)")
        command = ["unshare", "-m", *command]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Runs `cmpdata extract` (argv[3]) twice: first with the disk nearly full (argv[1]: "tmpfs":
# `--out` on a 96 KB tmpfs; "fsize": a 30 KB file-size limit), then with room again; prints
# what each run said and left.
DISK_FULL = (
    FAULTY
    + """
import contextlib, resource, subprocess
from pipelines.cli import main
from cmpdata.store.reports import verify_dataset

mode, argv = sys.argv[1], json.loads(sys.argv[3])
apply(json.loads(sys.argv[2]))
out = Path(argv[argv.index("--out") + 1])
limit = resource.getrlimit(resource.RLIMIT_FSIZE)
if mode == "tmpfs":
    out.parent.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(out.parent)], check=True)
else:
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, limit[1]))

def run():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()

full = run()
left = sorted(p.name for p in out.iterdir())
markers = [json.loads(m.read_text()) for m in out.glob("shard-*.json")]
whole = all((out / m["name"]).stat().st_size == m["bytes"] for m in markers)
if mode == "tmpfs":
    subprocess.run(["mount", "-o", "remount,size=8m", str(out.parent)], check=True)
else:
    resource.setrlimit(resource.RLIMIT_FSIZE, limit)
again = run()
report = verify_dataset(out, progress=False)
print(json.dumps({"full": full, "left": left, "whole": whole, "again": again,
                  "problems": [str(p) for p in report.problems], "digest": report.content_digest}))
"""
)


@pytest.mark.parametrize("mode", ["tmpfs", "fsize"])
def test_disk_full_is_a_clear_error_and_a_rerun_finishes(mode, synth_clips, clean, tmp_path):
    argv = extract_argv(videos(synth_clips)[0], tmp_path / "mnt" / "ds")
    got = run_script(
        DISK_FULL, mode, json.dumps(replay(clean)), json.dumps(argv), namespace=mode == "tmpfs"
    )
    reason = {"tmpfs": "No space left on device", "fsize": "File too large"}[mode]
    code, err = got["full"]
    # Exit 1: stopped part-way, what is done is kept (2 is for nothing done / bad usage).
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("cmpdata: error: ") and reason in err and "rerun" in err
    # No partial shard: no temporary file, and every shard present has its done marker.
    assert not [name for name in got["left"] if ".tmp-" in name]
    shards = [name for name in got["left"] if name.endswith(".h5")]
    assert all(name.replace(".h5", ".json") in got["left"] for name in shards)
    assert len(shards) < 3 and got["whole"]
    assert got["again"] == [0, ""] and got["problems"] == []
    assert got["digest"] == read_manifest(clean)["content_digest"]


READ_ONLY = """
import contextlib, io, json, subprocess, sys
from pathlib import Path
import pipelines.extract
from pipelines.cli import main

root, argv = Path(sys.argv[1]), json.loads(sys.argv[2])
root.mkdir(parents=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(root)], check=True)

def no_work(*args, **kwargs):
    raise AssertionError("work started before the output directory was checked")

pipelines.extract.find_sources = pipelines.extract.build_flow = no_work
results = []
for out in (root, root / "ds"):  # read-only; missing and not creatable
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([*argv, "--out", str(out)])
    results.append([code, err.getvalue()])
# The trainer refuses the same output folders before reading any data.
import cmpmodel.train
from cmpmodel.cli import main as train_main
cmpmodel.train.build_dataset = no_work
for out in (root, root / "run"):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = train_main(["train", "--data", str(root), "--out", str(out)])
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_read_only_output_is_refused_before_any_work(synth_clips, tmp_path):
    root = tmp_path / "ro"
    argv = ["extract", "--videos", videos(synth_clips)[0], "--quiet"]
    read_only, uncreatable, train_read_only, train_uncreatable = run_script(
        READ_ONLY, str(root), json.dumps(argv), namespace=True
    )
    for (code, err), words in [
        (read_only, f"{root}: not writable"),
        (uncreatable, f"{root}/ds: cannot be created: {root} is not writable"),
        (train_read_only, f"{root}: not writable"),
        (train_uncreatable, f"{root}/run: cannot be created: {root} is not writable"),
    ]:
        assert code == 2 and err.count("\n") == 1, err
        assert words in err and "Read-only file system" in err


# Inputs ------------------------------------------------------------------------------------


def test_a_hanging_decoder_is_abandoned_recorded_and_the_run_goes_on(
    synth_clips, clean, tmp_path, monkeypatch
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    # The clips with their descriptions, so that their samples carry the same exact flow.
    for clip in [*synth_clips.glob("*.mp4"), *synth_clips.glob("*.json")]:
        shutil.copy(clip, inputs / clip.name)
    plan_dataset = extract_module.plan_dataset

    def plan_then_hang(*args, **kwargs):
        # Probed fine, then it never delivers a byte: decoding it blocks for ever.
        plan = plan_dataset(*args, **kwargs)
        (inputs / "clip001.mp4").unlink()
        os.mkfifo(inputs / "clip001.mp4")
        return plan

    monkeypatch.setattr(extract_module, "plan_dataset", plan_then_hang)
    # Long enough for a healthy decoder to start on a loaded machine.
    config = dataclasses.replace(CONFIG, pairs=PairConfig(short_side=None, timeout=8))
    result = extract([str(inputs / "*.mp4")], tmp_path / "ds", config, QUIET)
    assert result.complete and result.errors == 0 and result.written == 6
    failures = read_failures(tmp_path / "ds")
    assert [(d.source_id, d.t0, d.stage) for d in failures] == [
        ("clip001.mp4", t, "decode") for t in (0, 10, 20)
    ]
    assert all("clip001.mp4" in d.reason and "no frame for 8 s" in d.reason for d in failures)
    assert read_manifest(tmp_path / "ds")["sources"]["clip001.mp4"] == {
        "planned": 3,
        "written": 0,
        "dropped": 3,
        "skipped": None,
        "decoder": "decord",
        "note": None,
    }
    # Every other sample is exactly the clean run's.
    written, expected = sample_digests(tmp_path / "ds"), sample_digests(clean)
    assert len(written) == 6 and all(expected[k] == v for k, v in written.items())
    assert verify_dataset(tmp_path / "ds", progress=False).ok


# One work item as a Ray worker runs it (decode, flow, guidance and encoding in one task, the
# encoded samples left in a part file), with the flows computed in the task ("cpu") or, as on
# the GPU path, by a flow actor that each batch goes to and comes back from ("gpu": here a
# pickle round trip each way, as through Ray's object store, one batch ahead); prints the
# process's peak resident memory (MB) before and after. argv: path, video, width, height,
# frames, pairs, stride, short side (0: keep), batch size.
PEAK_MEMORY = """
import json, pickle, sys, tempfile
from pathlib import Path
from cmpdata.config import ExtractConfig
from cmpdata.io.pairs import PairConfig, pair_indices
from cmpdata.records import VideoInfo
from cmpdata.io.sources import find_sources
from cmpdata.flow import build_flow
from pipelines.stages import WorkItem, flow_records, item_stage

path, video = sys.argv[1:3]
w, h, frames, n, stride, short, batch = map(int, sys.argv[3:])
config = ExtractConfig(pairs=PairConfig(gap=1, stride=stride, short_side=short or None),
                       jpeg_quality=10)
item = WorkItem(0, find_sources([video])[0], VideoInfo(w, h, frames),
                tuple(pair_indices(frames, 1, stride)[:n]))

def peak():
    # VmHWM: this process image's own high-water mark (ru_maxrss would also count the parent
    # it was forked from, before the exec).
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in lines if x.startswith("VmHWM:")).split()[1]) / 1024

class Actor:  # a FlowActor's handle, the object store a pickle each way
    def __init__(self):
        self.backend = build_flow("dis", preset="ultrafast")
        self.flows = self

    def remote(self, batch):
        return pickle.dumps(flow_records(pickle.loads(pickle.dumps(batch)), self.backend, False))

sys.modules["ray"] = type(sys)("ray")  # what the task imports for ray.get
sys.modules["ray"].get = pickle.loads
before = peak()
out = Path(tempfile.mkdtemp())
actor = Actor() if path == "gpu" else None
stored = [item_stage(item, config, {"preset": "ultrafast"}, batch, out, actor)[1]]
# The item's encoded samples, from the part file it left, and its dropped pairs.
parts = [pickle.loads((out / s.part).read_bytes()) for s in stored if s.part]
kinds = [type(r).__name__ for r in [*sum(parts, []), *(d for s in stored for d in s.dropped)]]
got = {"before": before, "after": peak(), "rows": len(kinds), "kinds": sorted(set(kinds))}
print(json.dumps(got))
"""


def make_video(path: Path, width: int, height: int, frames: int) -> Path:
    """An H.264 test pattern (moving) of ``frames`` frames, made by ffmpeg."""
    pattern = f"testsrc2=size={width}x{height}:rate=25"
    encode = f"-frames:v {frames} -c:v libx264 -preset ultrafast -pix_fmt yuv420p"
    command = [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", pattern, *encode.split()]
    subprocess.run([*command, str(path)], check=True, timeout=120)
    return path


def peak_memory(
    path: str,
    video: Path,
    size: tuple[int, int, int],
    counts: tuple[int, ...],
    stride: int,
    short_side: int,
    batch: int,
) -> list[dict]:
    """PEAK_MEMORY on ``path`` for each number of pairs in ``counts``, the processes side by
    side."""
    # A fixed threshold keeps glibc from serving large frames out of its heap, where a freed
    # frame stays resident: the peak then measures the frames alive, not the heap's history.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PEAK_MEMORY,
                *map(str, (path, video, *size, n, stride, short_side, batch)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for n in counts
    ]
    results = []
    for proc, n in zip(procs, counts, strict=True):
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        got = json.loads(out.strip().splitlines()[-1])
        assert got["rows"] == n and got["kinds"] == ["EncodedSample"]
        results.append(got)
    return results


@pytest.mark.parametrize(
    "size, counts, stride, short_side, batch, tolerance_mb",
    [
        # A long stream: 75, then 300 frames of 640 x 360, a pair every 5, frames kept as
        # decoded. Holding the item's frames would add 45 pairs x 2 x 0.66 MB = 59 MB
        # (measured: 61 MB; streamed: 2 MB).
        ((640, 360, 301), (15, 60), 5, 0, 4, 15),
        # 4K, resized to 416 px, one pair a batch: holding the pairs would add 8 x 2 x 0.9 MB
        # = 14 MB (streamed: under 0.1 MB on both paths). From 4 pairs on: the GPU
        # path's two batches in flight settle after its third pair (13 MB more than with 2).
        ((3840, 2160, 13), (4, 12), 1, 416, 1, 6),
    ],
    ids=["long-stream", "4K"],
)
@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_peak_memory_does_not_grow_with_the_input(
    path, size, counts, stride, short_side, batch, tolerance_mb, tmp_path
):
    video = make_video(tmp_path / "clip.mp4", *size)
    short, long = peak_memory(path, video, size, counts, stride, short_side, batch)
    growth = long["after"] - short["after"]
    assert growth < tolerance_mb, f"peak grew by {growth:.1f} MB: {short} -> {long}"


# Damaged shards ----------------------------------------------------------------------------


def blob_offsets(shard: Path) -> list[tuple[int, int]]:
    """``(offset, length)`` in the file of the samples' stored bytes: the raw data of the
    ``meta`` records, the ``data`` offsets and the ``data`` array (every sample's parts),
    where a flip damages content, not HDF5's own structures (a flip there can hang or crash
    the HDF5 library: only a checksum read before opening, as ``verify`` and
    ``skip_damaged`` do, is safe from those)."""
    with h5py.File(shard) as f:
        return [
            (f[name].id.get_offset(), f[name].id.get_storage_size())
            for name in ("meta", "data_offsets", "data")
        ]


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def read_all(shard: Path) -> list[str]:
    """Every sample of ``shard`` read (decoded) through ShardDataset; their digests."""
    dataset = ShardDataset(shard, split=None)
    try:
        samples = [dataset[i] for i in range(len(dataset))]
    finally:
        dataset.close()
    with ShardReader(shard) as reader:
        return [reader.encoded(i).digest() for i in range(len(samples))]


def test_a_flipped_byte_in_any_sample_is_an_error_never_a_wrong_sample(clean, tmp_path):
    original = clean / "shard-00001.h5"
    shard = tmp_path / original.name
    positions = [
        start + k for start, length in blob_offsets(original) for k in range(0, length, 211)
    ]
    assert len(positions) > 100
    for at in positions:
        shutil.copy(original, shard)
        flip(shard, at)
        with pytest.raises(ShardError) as error:
            read_all(shard)
        assert error.value.path == str(shard), at


def test_damaged_shards_are_named_and_skipped_unopened(clean, tmp_path, monkeypatch):
    out = Path(shutil.copytree(clean, tmp_path / "ds"))
    truncate(out / "shard-00000.h5")
    flip(out / "shard-00001.h5", blob_offsets(out / "shard-00001.h5")[-1][0] + 100)
    drop_dataset(out / "shard-00002.h5", "data")
    report = verify_dataset(out, progress=False)
    assert sorted({p.shard for p in report.problems}) == [f"shard-0000{i}.h5" for i in range(3)]
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "verify", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and all(f"shard-0000{i}.h5" in proc.stderr for i in range(3))
    with pytest.raises(ShardError, match=r"shard-00000\.h5: "):
        ShardDataset(out, split=None)

    # A byte flipped in HDF5's own metadata can hang or crash the HDF5 library: with
    # skip_damaged each shard's checksum is read first, and a damaged file is never opened.
    shutil.copy(clean / "shard-00000.h5", out / "shard-00000.h5")
    shutil.copy(clean / "shard-00002.h5", out / "shard-00002.h5")
    flip(out / "shard-00002.h5", 1000)
    opened = []
    real_file = h5py.File

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_file(path, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    with pytest.warns(UserWarning, match="skipping damaged shard") as warned:
        dataset = ShardDataset(out, split=None, skip_damaged=True)
    assert dataset.shards == [out / "shard-00000.h5"] and opened == ["shard-00000.h5"]
    assert [(p.name, reason.split(":")[0]) for p, reason in dataset.skipped] == [
        ("shard-00001.h5", "sha256 differs from the manifest's"),
        ("shard-00002.h5", "sha256 differs from the manifest's"),
    ]
    assert sum("skipping damaged shard" in str(w.message) for w in warned) == 2


def test_training_skips_damaged_shards_when_told_and_says_so(tmp_path, capsys):
    data = tmp_path / "data"
    make_dataset(data, shard_sizes=(4, 4, 4))  # 2 train samples a shard
    truncate(data / "shard-00000.h5")
    flip(data / "shard-00001.h5", blob_offsets(data / "shard-00001.h5")[-1][0] + 10)
    config = tmp_path / "run.yaml"
    config.write_text(
        "arch: tiny\ntiny_width: 8\ndecoder_width: 16\niters: 1\nbatch_size: 2\n"
        "crop: 32\nworkers: 0\nlr: 0.01\n"
    )
    argv = ["train", "--data", str(data), "--config", str(config)]
    capsys.readouterr()
    # Damaged data: exit 1, one line naming the shard and what to do.
    assert cmpmodel_main([*argv, "--out", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err
    assert "shard-00000.h5" in err and "--skip-damaged" in err and err.count("\n") == 1
    with pytest.warns(UserWarning, match="skipping damaged shard") as warned:
        code = cmpmodel_main([*argv, "--out", str(tmp_path / "run"), "--skip-damaged"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 1
    skipped = summary["skipped_shards"]
    assert [Path(s.split(": ")[0]).name for s in skipped] == ["shard-00000.h5", "shard-00001.h5"]
    assert "bytes, the manifest lists" in skipped[0] and "sha256" in skipped[1]
    said = [str(w.message) for w in warned if "skipping damaged shard" in str(w.message)]
    assert [m.split(": ")[0] for m in said] == [
        f"skipping damaged shard {data / 'shard-00000.h5'}",
        f"skipping damaged shard {data / 'shard-00001.h5'}",
    ]


# Training ----------------------------------------------------------------------------------


def test_trainer_killed_mid_checkpoint_keeps_the_last_one_and_resumes(tmp_path):
    data = write_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path / "run", iters=4, ckpt_every=2)
    # Killed half-way through writing its second checkpoint (step 4).
    moment = {"call": "torch.save", "name": "torch.save", "when": "before", "nth": 2}
    run_killed({"kill": moment}, ["train", dataclasses.asdict(config)])
    assert (tmp_path / "run" / ".checkpoint.pt.tmp").exists()  # the half-written file
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "run" / ".checkpoint.pt.tmp")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    summary = train(dataclasses.replace(config, resume=True))
    assert summary["step"] == 4
    reference = train(dataclasses.replace(config, out=str(tmp_path / "uninterrupted")))
    resumed = load_checkpoint(summary["checkpoint"])["model"]
    for key, value in load_checkpoint(reference["checkpoint"])["model"].items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)


# Configuration files and checkpoints never run code ----------------------------------------


class Payload:
    """Unpickling this runs ``touch <marker>``, as a hostile file would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_config_files_and_checkpoints_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil_yaml = tmp_path / "evil.yaml"
    evil_yaml.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    capsys.readouterr()
    argv = ["extract", "--videos", "v", "--out", str(tmp_path / "o")]
    assert cmpdata_main([*argv, "--config", str(evil_yaml)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cmpdata: error: {evil_yaml}: not valid YAML") and err.count("\n") == 1
    assert cmpmodel_main(["train", "--data", "d", "--config", str(evil_yaml)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cmpmodel: error: {evil_yaml}: not valid YAML") and err.count("\n") == 1
    assert not marker.exists()

    evil_checkpoint = tmp_path / "evil.pt"
    torch.save(
        {"model": Payload(marker), "model_config": {}, "config": {}, "step": 0}, evil_checkpoint
    )
    torch.load(evil_checkpoint, weights_only=False)  # the payload is live...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a readable checkpoint"):
        load_checkpoint(evil_checkpoint)  # ...and never run by the toolkit
    assert (
        cmpmodel_main(
            [
                "export-encoder",
                "--checkpoint",
                str(evil_checkpoint),
                "--out",
                str(tmp_path / "enc.pth"),
            ]
        )
        == 2
    )
    with pytest.raises(FlowWeightsError, match=r"evil\.pt"):
        build_flow("raft-small", weights=str(evil_checkpoint))
    assert not marker.exists()
