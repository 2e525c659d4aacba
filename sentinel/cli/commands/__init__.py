"""One module per ``sentinel`` subcommand; see :mod:`sentinel.cli`."""
