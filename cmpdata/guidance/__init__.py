"""Guidance samplers: where on a flow the sparse guidance vectors are taken (see ``base``).

Importing this package registers every strategy in :data:`GUIDANCE_SAMPLERS`.
"""

from cmpdata.guidance.base import (
    GUIDANCE_SAMPLERS,
    GuidanceConfig,
    GuidanceSampler,
    GuidanceStrategy,
    build_sampler,
    guidance_pixels,
    rasterize,
    register_strategy,
)
from cmpdata.guidance.gradnms import GradNMS
from cmpdata.guidance.grid import Grid
from cmpdata.guidance.uniform import Uniform
from cmpdata.guidance.watershed import Watershed

__all__ = [
    "GUIDANCE_SAMPLERS",
    "GradNMS",
    "Grid",
    "GuidanceConfig",
    "GuidanceSampler",
    "GuidanceStrategy",
    "Uniform",
    "Watershed",
    "build_sampler",
    "guidance_pixels",
    "rasterize",
    "register_strategy",
]
