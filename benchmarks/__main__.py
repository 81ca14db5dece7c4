"""``python -m benchmarks [PART ...] [--videos FILE ...] [--quick]``: :mod:`benchmarks.runner`."""

from benchmarks.runner import main

main()
