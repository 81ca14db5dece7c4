"""Dense optical flow backends behind one interface (see :mod:`cmpdata.flow.base`).

Importing this package registers every backend (``dis``, ``farneback``, ``raft-small``,
``raft-large``, ``liteflownet``); torch is only imported when a learned backend is built.
"""

from cmpdata.flow import dis, farneback, liteflownet, raft  # noqa: F401  (imported to register them)
from cmpdata.flow.base import FLOW_BACKENDS, FlowBackend, build_flow, register_flow, resize_flow
from cmpdata.flow.consistency import forward_backward

__all__ = [
    "FLOW_BACKENDS",
    "FlowBackend",
    "build_flow",
    "forward_backward",
    "register_flow",
    "resize_flow",
]
