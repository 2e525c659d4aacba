"""Outputs: deliver every alert to SIEMs at least once, through a bounded on-disk spool.

``Dispatcher(OutputsConfig)`` is the whole interface: ``start()``, ``emit(alert)``,
``close(timeout)``, ``metrics()``. See ``dispatcher.py`` for the delivery model and
``spool.py`` for the on-disk format. A config (the ``outputs:``/``spool:`` keys)::

    outputs:
      - type: file                      # JSON Lines, rotated at max_bytes
        path: /var/log/sentinel/alerts.jsonl
        fsync: batch                    # always | batch | never
      - type: syslog                    # RFC 5424; octet counting over tcp/tls
        name: siem
        transport: tls                  # udp | tcp | tls
        host: 127.0.0.1
        port: 6514
        format: cef                     # json | ecs | ocsf | cef
        tls: {ca_file: /etc/sentinel/ca.pem, cert_file: c.pem, key_file: c.key}
      - type: http
        name: elastic
        flavor: elasticsearch           # webhook | splunk_hec | elasticsearch
        format: ecs
        url: https://127.0.0.1:9200
        api_key: "..."
        batch: {max_count: 500, max_bytes: 1048576, max_wait: 1.0}
        retry: {initial_backoff: 0.5, max_backoff: 30}
    spool:
      dir: /var/lib/sentinel/spool
      max_bytes: 268435456
      full_policy: drop_oldest          # or block (emit waits for the slowest output)
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
