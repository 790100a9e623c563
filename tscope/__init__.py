"""tscope: pixel-grounded reasoning over Earth-observation imagery.

The data path is one line: a scene is read into a :class:`~tscope.geo.scene.Scene`, a question is
parsed into a :class:`~tscope.reason.query.Query`, a backend turns both into a
:class:`~tscope.reason.trace.Trace` (reasoning steps bound to georeferenced masks, numbers, answer),
and the writers in :mod:`tscope.geo.writers` and :mod:`tscope.report` put it on disk.
"""

__version__ = "0.1.0"
