"""The configuration of an extraction: everything that decides what a dataset contains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cmpdata.errors import ConfigError
from cmpdata.filters import FilterConfig
from cmpdata.flow import FLOW_BACKENDS
from cmpdata.guidance import GuidanceConfig
from cmpdata.io.pairs import PairConfig
from cmpdata.store.codec import FlowCodec

MAX_SHORT_SIDE = 4096  # px: a pair's frames and flow at 16:9 already take ~400 MB


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides a dataset's content. Execution settings (workers, GPUs, batch
    size, cluster address, decoder, timeouts) are not here: they may change between runs."""

    pairs: PairConfig = field(default_factory=PairConfig)
    flow: str = "dis"  # flow backend name (cmpdata.flow.FLOW_BACKENDS)
    flow_options: dict[str, Any] = field(default_factory=dict)  # backend settings, e.g. preset
    consistency: bool = False  # forward-backward validity mask (twice the flow work)
    filters: FilterConfig = field(default_factory=FilterConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    codec: FlowCodec = field(default_factory=FlowCodec)
    seed: int = 0  # global seed of the guidance draws
    val_fraction: float = 0.02  # share of sources (not pairs) in the validation split
    shard_size: int = 1000  # planned samples per shard
    jpeg_quality: int = 95  # JPEG quality of the stored first frames

    def __post_init__(self) -> None:
        least = FLOW_BACKENDS.get(self.flow).min_side
        side = self.pairs.short_side
        if side is not None and not least <= side <= MAX_SHORT_SIDE:
            raise ConfigError(
                f"short_side must be in {least}..{MAX_SHORT_SIDE} px for flow {self.flow!r} "
                f"(or 0 to keep the decoded size), got {side}"
            )
        if side is None and self.pairs.min_side < least:
            raise ConfigError(
                f"min_side must be >= {least} px for flow {self.flow!r} when frames keep their "
                f"decoded size, got {self.pairs.min_side}"
            )
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1], got {self.val_fraction}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be at least 1, got {self.shard_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    def to_dict(self) -> dict[str, Any]:
        """The content-defining settings as JSON-ready data (what the fingerprint hashes)."""
        data = dataclasses.asdict(self)
        # How frames are decoded and how long we wait is execution, not content.
        for key in ("decoder", "timeout"):
            data["pairs"].pop(key)
        data["guidance"]["strategies"] = list(self.guidance.strategies)
        return data
