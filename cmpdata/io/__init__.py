"""Where frames come from: finding sources (:mod:`~cmpdata.io.sources`) and the source
datasets' layouts (:mod:`~cmpdata.io.layouts`), ffmpeg (:mod:`~cmpdata.io.media`), the
decoders in killable child processes (:mod:`~cmpdata.io.decoders`) and exact frame pairs
(:mod:`~cmpdata.io.pairs`). Imports point one way: media <- decoders <- sources <- pairs."""
