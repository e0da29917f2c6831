"""Inference: the likelihood of patterns given a structure, strategies (posterior sampling, refinement) and
``retrieve``, which orchestrates them into a ``Retrieval``.

Private implementation modules; the public names are re-exported from ``xfit``.
"""
