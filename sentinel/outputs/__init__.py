"""Outputs: deliver every alert to SIEMs at least once, through a bounded on-disk spool.

``Dispatcher(OutputsConfig)`` is the whole interface: ``start()``, ``emit(alert)``,
``close(timeout)``, ``metrics()``. See ``dispatcher.py`` for the delivery model.
"""

from sentinel.outputs.config import OutputConfig, OutputsConfig, SpoolConfig
from sentinel.outputs.dispatcher import Dispatcher, OutputSetupError
from sentinel.outputs.spool import SpoolError

__all__ = [
    "Dispatcher",
    "OutputConfig",
    "OutputSetupError",
    "OutputsConfig",
    "SpoolConfig",
    "SpoolError",
]
