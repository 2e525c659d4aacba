"""The application: how the parts are wired into a live run (Falco's ``app/`` is the model).

:mod:`.run` is ``sentinel run``/``capture`` as a list of named steps; :mod:`.sensor` is the
sensor with its in-kernel prefilter, one object the run, the tests and the benchmarks share.
"""
