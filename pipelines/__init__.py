"""Ray Data pipelines over the cmpdata stages: the only package that imports Ray."""
