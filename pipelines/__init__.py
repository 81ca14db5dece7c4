"""Everything that runs on Ray, and the ``cmpdata`` command: the stages in Ray workers
(:mod:`~pipelines.stages`), the extraction driver (:mod:`~pipelines.extract`), the paper's
dataset recipes (:mod:`~pipelines.recipe`), the demo (:mod:`~pipelines.demo`) and the command
line (:mod:`~pipelines.cli`). The only package that imports Ray."""
