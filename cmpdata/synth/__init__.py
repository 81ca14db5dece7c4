"""Inputs made for tests, benchmarks and the demo: synthetic clips with exact flow
(:mod:`~cmpdata.synth.clips`), clips whose frames show their index
(:mod:`~cmpdata.synth.indexclip`), the kinds of real input made from real camera clips
(:mod:`~cmpdata.synth.footage`), and flow error metrics (:mod:`~cmpdata.synth.metrics`)."""
