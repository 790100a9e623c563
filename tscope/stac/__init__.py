"""STAC search and loading: the data behind ``tscope fetch`` and ``tscope batch``.

``catalogs`` names the STAC APIs and how their collections and assets map onto tscope's band
common names; ``search`` finds items with pystac-client; ``load`` puts them onto an AOI grid with
odc-stac and writes one COG per scene; ``http`` holds the network policy (timeouts, retries,
truncation checks) shared by both; ``names`` turns remote ids into safe file names.
"""
