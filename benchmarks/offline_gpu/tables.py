"""GPU machine: serve RDKit's graph keys/automorphisms and the xraydb/xraylib tables from BUNDLE/tables.pkl.

Import it before anything else uses xfit: ``XFIT_BUNDLE=bundle python -c "import tables; ..."``.
"""

import os
import pickle
from pathlib import Path

from prepare import graph_signature

from xfit.learn import _proposal
from xfit.physics import _elements

_TABLES = pickle.loads((Path(os.environ.get("XFIT_BUNDLE", "bundle")) / "tables.pkl").read_bytes())
_elements._waasmaier_kirfel_table = lambda: _TABLES["wk"]
_elements._compton_spline = lambda z: _TABLES["compton"][int(z)]


_proposal.graph_key = lambda atoms: _TABLES["graph"][graph_signature(atoms)][0]
_proposal.automorphisms = lambda atoms, limit=256: _TABLES["graph"][graph_signature(atoms)][1][:limit]
