"""Questions, traces, measures and the spectral backend."""
