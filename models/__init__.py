"""Declarative definitions shipped with tscope (installed as ``tscope.rules``).

``spectral.toml`` holds the index rules of the spectral backend, ``classes.toml`` the class
vocabulary and synonyms, ``sensors.toml`` the band-order presets.
"""
