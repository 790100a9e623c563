"""Terra-CoT training data synthesis from label rasters and building footprints.

``labels`` turns label rasters (with a class table) and footprint polygons into
:class:`~tscope.geo.mask.Mask` objects on an image's grid; ``rle`` stores masks as COCO RLE;
``image`` renders the PNG the model sees; ``templates`` phrases questions and chains of thought;
``synth`` writes Terra-CoT samples and ``res`` stage-1 referring-segmentation pairs. Every number is
computed by :mod:`tscope.reason.measures`.
"""
