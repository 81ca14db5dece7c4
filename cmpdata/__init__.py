"""cmpdata: the per-sample stages that turn videos into Conditional Motion Propagation data."""

__version__ = "0.1.0"
