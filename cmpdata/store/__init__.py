"""The dataset on disk: the flow codec (:mod:`~cmpdata.store.codec`), the shard format
(:mod:`~cmpdata.store.shards`), ``manifest.json`` and ``failures.jsonl``
(:mod:`~cmpdata.store.manifest`), the directory's rules (:mod:`~cmpdata.store.directory`),
the torch Dataset (:mod:`~cmpdata.store.dataset`) and inspect / verify / show
(:mod:`~cmpdata.store.reports`). Nothing here knows how a dataset is planned or run."""
