"""Learning: the conformer prior (denoising score model), the proposal network, and their training loops.

Private implementation modules; the public names are re-exported from ``xfit``.
"""
