"""Geospatial core: grids, scenes, masks, writers."""
