"""Chemistry: molecules (RDKit), the molecular graph, force fields (tblite, MMFF), samplers and structure pools.

Private implementation modules; the public names are re-exported from ``xfit``.
"""
