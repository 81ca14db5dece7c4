"""cmpmodel: the Conditional Motion Propagation network and its trainer."""

__version__ = "0.1.0"
