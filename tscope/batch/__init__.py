"""Resumable batch runs over many AOIs on Dask: fetch -> stack -> ask per AOI (see :mod:`.run`)."""
