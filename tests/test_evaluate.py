"""cmpmodel.evaluate and cmpmodel.propagate: the baselines by hand, the EPE table, the
`cmpmodel eval / propagate` commands."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_train import tiny_config, write_dataset

from cmpdata.errors import CmpDataError
from cmpdata.store.dataset import ShardDataset
from cmpmodel.cli import main
from cmpmodel.evaluate import FAR_DISTANCE, METHODS, evaluate, format_table, idw_flow, nearest_flow
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
