"""Recipes for the paper's datasets: loading, deterministic selection, plan, build, errors.

The dataset trees come from test_layouts (synthetic frames laid out like each download).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_layouts import ReversedScandir, make_trees

from cmpdata.errors import CmpDataError
from cmpdata.store.manifest import read_manifest
from pipelines.cli import main
from pipelines.extract import RunSettings, extract, flow_identity
from pipelines.recipe import (
    RECIPE_FILE,
    even_caps,
    format_plan,
    list_recipes,
    load_recipe,
    plan_recipe,
    scaled_targets,
)

FINGERPRINT = re.compile(r"^plan fingerprint: ([0-9a-f]{64})$", re.M)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_trees(tmp_path_factory.mktemp("recipes"))


def roots_of(trees: dict[str, Path], youtube: str = "videos") -> dict[str, Path]:
    return {
        "yfcc": trees["yfcc"],
        "youtube": trees[youtube],
        "vip": trees["vip"],
        "mpii": trees["mpii"],
    }


def root_args(roots: dict[str, Path]) -> list[str]:
    return [arg for name, path in roots.items() for arg in ("--root", f"{name}={path}")]


def plan_of(name: str, roots: dict[str, Path], limit: int | None = None):
    recipe = load_recipe(name)
    return plan_recipe(recipe, roots, flow_identity(recipe.config), limit, progress=False)


def table_row(output: str, dataset: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.startswith(dataset + " "))


def test_shipped_recipes_are_the_papers_three_sets():
    recipes = {r.name: r for r in list_recipes()}
    assert {k: r.target for k, r in recipes.items()} == {
        "cmp-1.26m": 1_260_000,
        "cmp-3.22m": 3_220_000,
        "cmp-4.57m": 4_570_000,
    }
    assert [d.name for d in recipes["cmp-4.57m"].datasets] == ["yfcc", "youtube", "vip", "mpii"]
    for recipe in recipes.values():
        assert recipe.config.pairs.short_side == 416 and recipe.config.pairs.gap == 3
        assert recipe.config.guidance.strategies == ("watershed", "grid")
        assert recipe.notes  # every recipe says what it assumes
    youtube = recipes["cmp-3.22m"].datasets[1]
    assert [lay.name for lay in youtube.layouts] == ["youtube-vos", "videos"]


@given(
    st.dictionaries(
        st.text("abcdef", min_size=1, max_size=4), st.integers(0, 40), min_size=1, max_size=12
    ),
    st.integers(1, 200),
)
def test_even_caps_fill_the_target_as_evenly_as_the_sources_allow(counts, target):
    caps = even_caps(counts, target)
    assert sum(caps.values()) == min(target, sum(counts.values()))
    assert all(0 <= caps[k] <= counts[k] for k in counts)
    # A source gets fewer than another only when it has no more to give.
    top = max(caps.values())
    assert all(caps[k] >= top - 1 or caps[k] == counts[k] for k in counts)
    assert even_caps(dict(reversed(list(counts.items()))), target) == caps


def test_limit_shares_the_pairs_in_proportion_to_the_targets():
    recipe = load_recipe("cmp-4.57m")
    assert scaled_targets(recipe, None) == {d.name: d.target for d in recipe.datasets}
    scaled = scaled_targets(recipe, 100)
    assert sum(scaled.values()) == 100
    # 27.57, 42.89, 7.66, 21.88: the 3 left after the whole parts go to the largest remainders.
    assert scaled == {"yfcc": 27, "youtube": 43, "vip": 8, "mpii": 22}


@pytest.mark.parametrize(
    ("recipe", "youtube", "rows"),
    [
        # dataset: videos, frames, sources, skipped, candidates, target, planned, shortfall
        ("cmp-1.26m", None, {"yfcc": "3 21 3 1 12 1,260,000 12 1,259,988"}),
        ("cmp-3.22m", "youtube-vos", {"youtube": "2 11 2 0 2 1,960,000 2 1,959,998"}),
        (
            "cmp-4.57m",
            "videos",
            {
                "youtube": "3 48 2 1 6 1,960,000 6 1,959,994",
                "vip": "2 17 3 0 8 350,000 8 349,992",
                "mpii": "3 15 2 0 9 1,000,000 9 999,991",
            },
        ),
    ],
)
def test_plan_prints_counts_shortfall_estimates_and_fingerprint(
    trees, capsys, recipe, youtube, rows
):
    roots = {
        k: v
        for k, v in roots_of(trees, youtube or "videos").items()
        if k in [d.name for d in load_recipe(recipe).datasets]
    }
    assert main(["recipe", "plan", recipe, *root_args(roots), "--cores", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    for dataset, expected in rows.items():
        assert " ".join(table_row(out, dataset)[2:]) == expected
    assert "missing: 1 (UnsupVideo_Frames/0/bbb_0004.jpg)" in out or "yfcc" not in roots
    assert re.search(r"disk: [\d,]+ pairs x [\d,]+ px x 0.286 bytes/px", out)
    assert re.search(r"time: .* on one core, .* on 2 cores", out)
    assert FINGERPRINT.search(out).group(1) == plan_of(recipe, roots).plan.fingerprint


def test_selection_is_deterministic_and_spread_evenly(trees, monkeypatch):
    roots = roots_of(trees)
    first = plan_of("cmp-4.57m", roots, limit=12)
    monkeypatch.setattr(os, "scandir", ReversedScandir)
    again = plan_of("cmp-4.57m", roots, limit=12)
    assert again.plan.fingerprint == first.plan.fingerprint
    assert again.plan.samples == first.plan.samples
    assert plan_of("cmp-4.57m", roots, limit=11).plan.fingerprint != first.plan.fingerprint
    ids = [s.source_id for s in first.plan.samples]
    assert ids == sorted(ids)
    # yfcc's 3 pairs of 12 candidates: one from each usable source, and within a source the
    # kept pairs spread over it (aaa's candidates start at frames 0..4).
    yfcc = [(s.source_id, s.t0, s.t1) for s in first.plan.samples if s.source_id[:4] == "yfcc"]
    assert [x[0] for x in yfcc] == ["yfcc/0/aaa", "yfcc/0/bbb@bbb_0005", "yfcc/1/ccc"]
    full = plan_of("cmp-1.26m", {"yfcc": trees["yfcc"]})
    aaa = [(s.t0, s.t1) for s in full.plan.samples if s.source_id == "yfcc/0/aaa"]
    assert aaa == [(t, t + 3) for t in range(5)]
    assert all(s.split in ("train", "val") for s in first.plan.samples)


def test_build_matches_the_plan_and_workers_do_not_change_the_content(trees, ray_local, tmp_path):
    roots = roots_of(trees)
    planned = plan_of("cmp-4.57m", roots, limit=8)
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        code = main(
            [
                "recipe",
                "build",
                "cmp-4.57m",
                *root_args(roots),
                "--limit",
                "8",
                "--out",
                str(out),
                "--workers",
                str(workers),
                "--quiet",
            ]
        )
        assert code == 0
        manifest = read_manifest(out)
        assert manifest["plan_fingerprint"] == planned.plan.fingerprint
        assert manifest["complete"] and manifest["num_planned"] == 8
        record = json.loads((out / RECIPE_FILE).read_text())
        assert record["plan_fingerprint"] == planned.plan.fingerprint
        assert {k: v["planned"] for k, v in record["datasets"].items()} == {
            "yfcc": 2,
            "youtube": 3,
            "vip": 1,
            "mpii": 2,
        }
        digests.append(manifest["content_digest"])
    assert digests[0] == digests[1]


def test_extract_refuses_a_plan_made_with_other_settings(trees, tmp_path):
    planned = plan_of("cmp-1.26m", {"yfcc": trees["yfcc"]})
    other = dataclasses.replace(planned.recipe.config, seed=1)
    with pytest.raises(CmpDataError, match="plan given was made with another configuration"):
        extract([], tmp_path / "ds", other, RunSettings(progress=False), plan=planned.plan)


def test_user_recipe_file_works_the_same_way(trees, tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nprocessing:\n  pairs: {gap: 2, short_side: null}\n"
        "datasets:\n  people: {layout: mpii, target: 4, stride: 3}\n"
    )
    assert main(["recipe", "plan", str(path), "--root", f"people={trees['mpii']}", "--quiet"]) == 0
    out = capsys.readouterr().out
    # Sequences of 8 and 7 frames (and an empty one) at gap 2, stride 3: 2 + 2 candidates.
    assert " ".join(table_row(out, "people")[2:]) == "3 15 2 0 4 4 4 0"
    recipe = load_recipe(path)
    planned = plan_recipe(recipe, {"people": trees["mpii"]}, flow_identity(recipe.config))
    assert [(s.t0, s.t1) for s in planned.plan.samples] == [(0, 2), (3, 5)] * 2
    assert "frames stored at 6,144 px a pair" in format_plan(planned)  # 64 x 96, not resized


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("datasets: {a: {layout: mpii}}", r"datasets.a: missing key 'target'"),
        ("datasets: {a: {layout: mpii, target: 0}}", r"datasets.a.target must be a whole number"),
        ("datasets: {a: {layout: mpii, target: 5, frames: x}}", r"unknown keys \['frames'\]"),
        ("datasets: {a: {layout: nope, target: 5}}", r"unknown dataset layout 'nope'"),
        (
            "processing: {pairs: {stride: 5}}\ndatasets: {a: {layout: mpii, target: 5}}",
            r"\['stride'\] are not processing settings in a recipe",
        ),
        ("processing: {seeds: 3}\ndatasets: {a: {layout: mpii, target: 5}}", r"seeds"),
        ("datasets: [", r"not valid YAML"),
        ("name: x", r"no 'datasets'"),
    ],
)
def test_malformed_recipe_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CmpDataError, match=message) as error:
        load_recipe(path)
    assert str(path) in str(error.value)


def test_recipe_list(capsys):
    assert main(["recipe", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"cmp-4\.57m\s+4,570,000 pairs\s+\(yfcc 1,260,000, youtube 1,960,000, "
        r"vip 350,000, mpii 1,000,000\)",
        out,
    )


def test_bad_roots_exit_2_naming_what_was_expected_where(trees, tmp_path, capsys):
    def fails(*args: str) -> str:
        assert main(["recipe", "plan", *args, "--quiet"]) == 2
        return capsys.readouterr().err

    nowhere = tmp_path / "nowhere"
    err = fails("cmp-1.26m", "--root", f"yfcc={nowhere}")
    assert f"{nowhere}: no such directory; expected yfcc: UnsupVideo_Frames/" in err
    err = fails("cmp-1.26m", "--root", f"yfcc={trees['vip']}")
    assert f"{trees['vip']}: not a recognised layout; expected yfcc: UnsupVideo_Frames/" in err
    assert "needs --root youtube=PATH: the folder holding youtube-vos (train/JPEGImages" in fails(
        "cmp-3.22m", "--root", f"yfcc={trees['yfcc']}"
    )
    assert "has no dataset ['kinetics']" in fails("cmp-1.26m", "--root", f"kinetics={nowhere}")
    assert "expected NAME=PATH" in fails("cmp-1.26m", "--root", str(nowhere))
    assert "unknown recipe 'cmp-9m'; choose one of: cmp-1.26m, cmp-3.22m, cmp-4.57m" in fails(
        "cmp-9m"
    )
    copy = shutil.copytree(trees["yfcc"], tmp_path / "yfcc")
    (copy / "lists" / "train.txt").unlink()
    err = fails("cmp-1.26m", "--root", f"yfcc={copy}")
    assert f"{copy / 'lists' / 'train.txt'}: missing; expected a list file of frame names" in err
    empty = tmp_path / "mpii"
    (empty / "1" / "000000001").mkdir(parents=True)
    recipe = tmp_path / "m.yaml"
    recipe.write_text("datasets: {mpii: {layout: mpii, target: 5}}")
    err = fails(str(recipe), "--root", f"mpii={empty}")
    assert f"{empty}: no frames found; expected numbered batch folders" in err
