"""The ``tscope`` command line: one module per command, shared options in :mod:`.options`."""
