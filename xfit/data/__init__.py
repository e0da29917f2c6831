"""Data: the ``Pattern`` value, its readers and writers, difference signals and noise models.

Private implementation modules; the public names are re-exported from ``xfit``.
"""
