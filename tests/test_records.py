import numpy as np
import pytest

from cmpdata.records import Dropped, FlowSample, FramePair, Guidance, make_sample_id
from cmpdata.registry import Registry
from cmpdata.seeding import sample_rng, sample_seed


def _frame(h=8, w=10):
    return np.zeros((h, w, 3), np.uint8)


def test_frame_pair_id_and_checks():
    pair = FramePair("a/b.mp4", 10, 13, _frame(), _frame())
    assert pair.sample_id == "a/b.mp4#000010-000013" == make_sample_id("a/b.mp4", 10, 13)
    assert pair.size == (8, 10)
    with pytest.raises(ValueError, match=r"\(8, 10, 3\) vs \(8, 11, 3\)"):
        FramePair("s", 0, 3, _frame(), _frame(8, 11))
    with pytest.raises(ValueError, match="uint8"):
        FramePair("s", 0, 3, _frame().astype(np.float32), _frame())
    with pytest.raises(ValueError, match="after"):
        FramePair("s", 3, 3, _frame(), _frame())


def test_flow_sample_checks_shapes():
    pair = FramePair("s", 0, 3, _frame(), _frame())
    FlowSample(pair, np.zeros((8, 10, 2), np.float32), np.ones((8, 10), bool))
    with pytest.raises(ValueError, match=r"\(8, 9\), expected \(8, 10\)"):
        FlowSample(pair, np.zeros((8, 9, 2), np.float32))
    with pytest.raises(ValueError, match="float32"):
        FlowSample(pair, np.zeros((8, 10, 2), np.float64))
    with pytest.raises(ValueError, match="bool"):
        FlowSample(pair, np.zeros((8, 10, 2), np.float32), np.ones((8, 10), np.uint8))


def test_guidance_checks():
    g = Guidance(np.zeros((3, 2), np.float32), np.ones((3, 2), np.float32))
    assert len(g) == 3
    with pytest.raises(ValueError, match="3 guidance points but 2 vectors"):
        Guidance(np.zeros((3, 2), np.float32), np.ones((2, 2), np.float32))


def test_dropped_sample_id():
    assert Dropped("v.mp4", 0, 3, "decode", "x").sample_id == "v.mp4#000000-000003"


def test_registry_refuses_duplicates_and_lists_choices():
    reg: Registry[int] = Registry("widget")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.names() == ["a", "b"] and "a" in reg and reg.get("b") == 2
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(3)
    with pytest.raises(ValueError, match="unknown widget 'c'; choose one of: a, b"):
        reg.get("c")


def test_sample_rng_depends_on_seed_id_and_epoch_only():
    draws = {
        key: sample_rng(*key).integers(0, 2**32, 4).tolist()
        for key in [(0, "x"), (1, "x"), (0, "y"), (0, "x", 1)]
    }
    assert len({tuple(v) for v in draws.values()}) == 4
    assert sample_rng(0, "x").integers(0, 2**32, 4).tolist() == draws[(0, "x")]
    assert 0 <= sample_seed(0, "x") < 2**63
