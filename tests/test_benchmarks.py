"""The benchmark kit's own logic: statistics, figures, the table, projections, data-wait
fractions, the GPU result's conversion, the runner's options and its handling of a failing
part. No benchmark runs here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import before, runner
from benchmarks.common import (
    figure,
    format_table,
    interleaved,
    measured,
    number,
    ratios,
    replicate,
    spread,
)
from benchmarks.loading import wait_fractions
from benchmarks.runner import (
    build_parser,
    checked,
    exit_status,
    gpu_figures,
    projections,
    saved_gpu,
)
from cmpdata.store.shards import EncodedSample


def test_spread_gives_median_quartiles_and_extremes():
    s = spread([4.0, 1.0, 3.0, 2.0])
    assert s == {"n": 4, "median": 2.5, "p25": 1.75, "p75": 3.25, "min": 1.0, "max": 4.0}
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(ValueError):
            spread(bad)


def test_measured_takes_the_named_statistic_and_keeps_the_spread():
    values = [1.0, 2.0, 9.0]
    assert measured("p", "x", values, "s")["value"] == 2.0
    assert measured("p", "x", values, "s", stat="mean")["value"] == 4.0
    row = measured("p", "x", values, "s", stat="max", key="p.x")
    assert (row["value"], row["spread"]["min"], row["key"]) == (9.0, 1.0, "p.x")
    with pytest.raises(ValueError, match="unknown stat"):
        measured("p", "x", values, "s", stat="mode")


def test_goals_are_judged_in_their_direction():
    assert figure("p", "ratio", 1.2, "x", goal=(">=", 1.0))["goal"]["met"]
    assert not figure("p", "ratio", 0.9, "x", goal=(">=", 1.0))["goal"]["met"]
    assert figure("p", "size", 17.0, "KB", goal=("<=", 18.0))["goal"]["met"]
    assert not figure("p", "size", 19.0, "KB", goal=("<=", 18.0))["goal"]["met"]
    with pytest.raises(ValueError):
        figure("p", "size", 19.0, "KB", goal=("<", 18.0))
    with pytest.raises(ValueError):
        figure("p", "skipped", None, "", goal=(">=", 1.0))


def test_ratios_pair_the_repeats():
    assert ratios([10.0, 30.0], [5.0, 10.0]) == [2.0, 3.0]
    with pytest.raises(ValueError):
        ratios([1.0], [1.0, 2.0])


def test_interleaved_runs_variants_in_turn_and_drops_the_warmup():
    calls: list[str] = []

    def variant(name: str):
        def run() -> float:
            calls.append(name)
            return float(len(calls))

        return run

    out = interleaved({"a": variant("a"), "b": variant("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3
    assert out == {"a": [3.0, 5.0], "b": [4.0, 6.0]}
    with pytest.raises(ValueError):
        interleaved({"a": variant("a")}, repeats=0)


def test_number_keeps_three_significant_digits():
    assert [number(x) for x in (241.3, 19.74, 1.234, 0.05893, 1234.5, 0.0, None)] == [
        "241",
        "19.7",
        "1.23",
        "0.0589",
        "1234",
        "0",
        "-",
    ]


def test_table_aligns_columns_groups_parts_and_states_goals():
    rows = [
        measured("flow", "dis medium speed", [20.0, 22.0, 30.0], "pairs/s"),
        figure("flow", "raft-small speed", 0.06, "pairs/s", note="random weights"),
        figure("extract", "2w / loop", 0.9, "x", goal=(">=", 1.0)),
        figure("gpu", "-", None, "", note="skipped: no CUDA device"),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["part", "figure", "value", "unit", "range", "(n)", "notes"]
    body = [line for line in lines[2:] if line]
    assert len(body) == 4 and lines[4] == "" and lines[6] == ""  # a blank line between parts
    assert "22.0" in body[0] and "20.0-30.0 (3)" in body[0]
    assert "goal >= 1.00: NOT met" in body[2]
    assert body[3].split()[:3] == ["gpu", "-", "-"] and "no CUDA device" in body[3]
    # every value ends in the same column
    values = ["22.0", "0.0600", "0.900"]
    ends = {line.index(v) + len(v) for line, v in zip(body[:3], values, strict=True)}
    assert len(ends) == 1


def test_projections_show_hours_and_the_arithmetic():
    rows = [figure("extract", "2w", 10.0, "pairs/s", key="extract.extract_2w.pairs_per_s")]
    out = projections(rows)
    yfcc = out["datasets"]["YFCC (1.26M pairs)"]["2 cores (extract 2w, whole runs)"]
    assert yfcc["hours"] == pytest.approx(1_260_000 / 10 / 3600)
    assert yfcc["arithmetic"] == "1,260,000 / 10.0 / 3600 = 35.0 h"
    assert out["per_core_pairs_per_s"] == 5.0
    assert len(out["datasets"]) == 3
    assert all(len(rows) == 1 for rows in out["datasets"].values())  # rates not measured: out


def test_wait_fractions_split_epoch_starts_from_the_steady_state():
    # (position in epoch, asked at s, waited s): steps of 1 s; epoch starts wait 0.5 s
    waits = [(1, 0.0, 0.5), (2, 1.0, 0.1), (3, 2.0, 0.1), (1, 3.0, 0.5), (2, 4.0, 0.1)]
    out = wait_fractions(waits)
    assert out["steady"] == pytest.approx(0.1)
    assert out["overall"] == pytest.approx((0.5 + 0.1 + 0.1 + 0.5) / 4)
    assert out["epoch_start_wait_s"] == [0.5, 0.5]
    with pytest.raises(ValueError):
        wait_fractions(waits[:1])
    with pytest.raises(ValueError, match="steady"):
        wait_fractions([(1, 0.0, 0.5), (1, 1.0, 0.5)])


GPU_RESULT = {
    "device": "NVIDIA H100",
    "machine": {"cpus": 16},
    "raft": [
        {
            "variant": "raft-small",
            "precision": "fp32",
            "batch_size": 1,
            "speed_up": 1.0,
            "pairs_per_s": {"median": 20.0, "min": 19.0, "max": 21.0},
        },
        {
            "variant": "raft-small",
            "precision": "fp16",
            "batch_size": 16,
            "speed_up": 4.0,
            "pairs_per_s": {"median": 80.0, "min": 78.0, "max": 81.0},
            "epe_px": 0.5,
        },
    ],
    "tuning": [
        {
            "variant": "raft-small",
            "precision": "fp16",
            "batch_size": 16,
            "tuning": "channels_last",
            "first_pass_s": 2.5,
            "pairs_per_s": {"median": 320.0, "min": 310.0, "max": 330.0},
            "over_untuned": 4.0,
        },
        {
            "variant": "raft-large",
            "precision": "fp16",
            "batch_size": 16,
            "tuning": "compile",
            "error": "BackendCompilerFailed: no compiler",
        },
    ],
    "pipeline": {
        "runs": {
            "raft-small fp16, 1 GPU actor": {
                "pairs": 100,
                "pairs_per_s": 40.0,
                "marginal_pairs_per_s": 150.0,
            },
            "dis medium, 16 CPU workers": {"pairs": 100, "pairs_per_s": 30.0},
        }
    },
    "train": {
        "arch": "resnet50",
        "batch_size": 64,
        "workers": 15,
        "steps": 150,
        "samples_per_s": {"median": 900.0, "min": 850.0, "max": 950.0},
        "wait": {"steady": 0.08, "overall": 0.2},
    },
}


def test_gpu_results_become_figures_and_feed_the_projection():
    rows = gpu_figures(GPU_RESULT, "gpu")
    assert [r["name"] for r in rows] == [
        "raft-small fp32, batch 1",
        "raft-small fp16, batch 16",
        "raft-small fp16, batch 16, channels_last",
        "raft-large fp16, batch 16, compile",
        "extract: raft-small fp16, 1 GPU actor",
        "extract: raft-small fp16, 1 GPU actor, marginal",
        "extract: raft-small fp16, 1 GPU actor, whole run / bare batched RAFT",
        "extract: dis medium, 16 CPU workers",
        "resnet50 training, 15 workers: samples/s",
        "resnet50 training, 15 workers: data wait",
    ]
    assert rows[1]["value"] == 80.0 and "EPE 0.500 px" in rows[1]["note"]
    assert rows[1]["spread"] == {"min": 78.0, "max": 81.0}
    # Issue 16's GPU goals: batched RAFT-small at 300 pairs/s (not batch 1), the whole run at
    # 85 % of the bare batched rate (40 / 80 here, on fewer pairs than the goal asks for),
    # ResNet-50 training at 800 samples/s, waiting at most 5 % of a step.
    goals = {r["name"]: r.get("goal") for r in rows}
    assert goals["raft-small fp32, batch 1"] is None
    assert goals["raft-small fp16, batch 16"] == {"op": ">=", "target": 300.0, "met": False}
    # A tuned row has the goal too, and says how it compares; a failed one says why. The
    # bare rate stays the untuned one (the pipeline runs untuned).
    assert goals["raft-small fp16, batch 16, channels_last"]["met"]
    assert rows[2]["note"] == "4.00x untuned; first pass 2.5 s"
    assert rows[3]["value"] is None and "BackendCompilerFailed" in rows[3]["note"]
    share = rows[6]
    assert share["value"] == 0.5 and not share["goal"]["met"] and "5000+" in share["note"]
    assert rows[8]["goal"] == {"op": ">=", "target": 800.0, "met": True}
    assert rows[9]["value"] == 0.08 and not rows[9]["goal"]["met"]
    yfcc = projections(rows)["datasets"]["YFCC (1.26M pairs)"]
    assert yfcc["1 GPU (extract, one GPU actor, whole run)"]["hours"] == pytest.approx(8.75)
    assert yfcc["1 GPU (extract, one GPU actor, marginal)"]["hours"] == pytest.approx(
        1_260_000 / 150 / 3600
    )
    assert len(yfcc) == 2  # the CPU rows of a GPU machine feed no projection
    skipped = gpu_figures({"raft": [], "pipeline": {"skipped": "no Ray"}}, "gpu")
    assert skipped[0]["value"] is None and "no Ray" in skipped[0]["note"]


def test_raft_tunings_run_keep_the_flow_and_a_failing_one_is_recorded():
    """The tuning part's code on this CPU (fp32, small frames, random weights): a row per
    variant and tuning with its speed-up over the untuned row given, a tuning that fails
    recorded rather than raised, and channels_last giving the flow the untuned network gives."""
    from benchmarks import gpu
    from cmpdata.flow import build_flow

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    pairs = [(frames[0], frames[1], None), (frames[2], frames[3], None)]
    untuned = [
        {
            "variant": "raft-small",
            "precision": "fp32",
            "batch_size": 2,
            "pairs_per_s": {"median": 2.0},
        }
    ]
    rows = gpu.tuning_figures(pairs, 1, 2, ("channels_last", "nonesuch"), untuned, "cpu")
    assert [(r["variant"], r["tuning"]) for r in rows] == [
        ("raft-small", "channels_last"),
        ("raft-small", "nonesuch"),
        ("raft-large", "channels_last"),
        ("raft-large", "nonesuch"),
    ]
    small, failed, large = rows[0], rows[1], rows[2]
    assert small["pairs_per_s"]["median"] > 0 and small["first_pass_s"] > 0
    assert small["over_untuned"] == pytest.approx(small["pairs_per_s"]["median"] / 2.0)
    assert "pairs_per_s" in large and "over_untuned" not in large  # no untuned row to compare
    assert failed["error"].startswith("ValueError: unknown tuning") and "pairs_per_s" not in failed
    flow = build_flow("raft-small", random_init=True, device="cpu")
    plain = flow(frames[:2], frames[2:])
    gpu.tune(flow, "channels_last")
    for a, b in zip(plain, flow(frames[:2], frames[2:]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)


def test_a_saved_gpu_result_is_labelled_with_its_machine(tmp_path):
    path = tmp_path / "gpu.json"
    assert saved_gpu(path) is None
    path.write_text(json.dumps({"skipped": "no CUDA device"}))
    assert saved_gpu(path) is None
    path.write_text(json.dumps(GPU_RESULT))
    saved = saved_gpu(path)
    assert saved["measured_on"] == {"device": "NVIDIA H100", "cpus": 16}
    assert {f["part"] for f in saved["figures"]} == {"gpu (saved: NVIDIA H100)"}
    path.write_text("[1, 2")
    with pytest.raises(ValueError, match=r"gpu\.json"):
        saved_gpu(path)


def test_replicate_cycles_samples_under_new_ids_in_the_train_split():
    base = [
        EncodedSample(
            f"clip{i}.mp4#000000-000003",
            f"clip{i}.mp4",
            0,
            3,
            "val",
            7,
            b"jpg",
            (4, 4),
            b"flow",
            b"",
            (0, 0, 4, 4),
            (1.0, 1.0),
            np.zeros((1, 2), np.float32),
            np.zeros((1, 2), np.float32),
        )
        for i in range(2)
    ]
    out = replicate(base, 5)
    assert len({s.sample_id for s in out}) == 5
    assert {s.split for s in out} == {"train"}
    assert [s.image for s in out] == [b"jpg"] * 5
    assert out[2].source_id == "clip0.mp4+1" and out[2].sample_id.startswith("clip0.mp4+1#")
    with pytest.raises(ValueError):
        replicate([], 3)


def test_runner_refuses_unknown_parts_and_missing_videos(tmp_path):
    parser = build_parser()
    for argv in (["nosuch"], ["--videos", str(tmp_path / "none.mp4")], ["--clips", "0"]):
        with pytest.raises(SystemExit) as stop:
            checked(parser, parser.parse_args(argv))
        assert stop.value.code == 2


def test_a_failing_part_is_reported_and_the_others_still_count(tmp_path, monkeypatch):
    def broken(bench):
        raise RuntimeError("no luck")

    def fine(bench):
        assert len(bench.clips) == 1
        return {"figures": [figure("flow", "speed", 2.0, "pairs/s")], "conditions": {}}

    monkeypatch.setattr(runner, "measure_function", {"decode": broken, "flow": fine}.get)
    out = tmp_path / "results.json"
    argv = ["decode", "flow", "--clips", "1", "--frames", "4", "--out", str(out)]
    results = runner.run(checked(build_parser(), build_parser().parse_args(argv)))
    assert exit_status(results) == 1
    assert results["parts"]["decode"]["error"] == "RuntimeError: no luck"
    written = json.loads(out.read_text())
    assert [(f["part"], f["value"]) for f in written["figures"]] == [
        ("decode", None),
        ("flow", 2.0),
    ]
    assert "FAILED" in written["figures"][0]["note"]
    assert written["machine"]["cores"] >= 1 and "numpy" in written["versions"]


def test_the_before_and_after_runs_report_their_tagged_lines_and_fail_loudly(tmp_path):
    # benchmarks.before parses only the lines its child scripts tag, whatever else a side
    # prints, and a side that fails stops the measurement with the end of its stderr.
    script = f"print('a warning'); print({before.TAG!r} + '[1, 2]'); print({before.TAG!r} + '3')"
    assert before.child(tmp_path, script, []) == [[1, 2], 3]
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        before.child(tmp_path, "1 / 0", [])
    assert before.non_flow({"probe": 1.0, "flow": 40.0, "encode": 2.5}) == 3.5
    with (
        pytest.raises(RuntimeError, match="cannot check out no-such-revision"),
        before.worktree("no-such-revision"),
    ):
        pass
