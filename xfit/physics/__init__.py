"""Physics: element tables with provenance, the IAM kernel, electron scattering, anisotropy, detector geometry.

Private implementation modules; the public names are re-exported from ``xfit``.
"""
