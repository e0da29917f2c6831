"""Regenerate kirkland.json: Kirkland's electron scattering factor parametrisation, as abTEM ships it.

Source: abTEM (https://abtem.github.io; PyPI package ``abtem``), file ``abtem/parametrizations/data/kirkland.json``,
which tabulates E. J. Kirkland, Advanced Computing in Electron Microscopy, 2nd ed. (Springer 2010), Appendix C:
f_e(k) = sum_i a_i / (b_i + k^2) + c_i exp(-d_i k^2) in A, with k = 2 sin(theta)/lambda in 1/A; each element's
entry is [[a1, a2, a3], [b1, b2, b3], [c1, c2, c3], [d1, d2, d3]].

The file is read without importing abTEM (whose dependencies are heavy): from an installed abtem package, or from
an abtem wheel given on the command line. Usage (from the repository root):

    pip download --no-deps abtem -d /tmp/abtem && python xfit/physics/tables/make_kirkland.py /tmp/abtem/abtem-*.whl
    python xfit/physics/tables/make_kirkland.py            # with abtem installed
"""

import datetime
import importlib.util
import json
import os
import sys
import zipfile
from pathlib import Path

MEMBER = "abtem/parametrizations/data/kirkland.json"


def read_source(argv) -> tuple[dict, str]:
    if argv:
        wheel = Path(argv[0])
        with zipfile.ZipFile(wheel) as archive:
            return json.loads(archive.read(MEMBER)), wheel.name
    spec = importlib.util.find_spec("abtem")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("abtem is not installed; pass the path of an abtem wheel")
    path = Path(next(iter(spec.submodule_search_locations))) / "parametrizations" / "data" / "kirkland.json"
    return json.loads(path.read_text()), f"abtem installed at {path.parent}"


def main(argv) -> None:
    table, source = read_source(argv)
    out = {
        "_provenance": {
            "what": "Kirkland electron scattering factors f_e(k) = sum a/(b + k^2) + c exp(-d k^2), A; k = 2 s",
            "reference": "E. J. Kirkland, Advanced Computing in Electron Microscopy, 2nd ed., Springer (2010), App. C",
            "source": f"{MEMBER} from {source}",
            "generated": datetime.date.today().isoformat(),
            "generator": "xfit/physics/tables/make_kirkland.py",
        },
        **{symbol: table[symbol] for symbol in table},
    }
    target = Path(__file__).with_name("kirkland.json")
    tmp = target.with_suffix(".part")
    tmp.write_text(json.dumps(out, indent=0))
    os.replace(tmp, target)
    print(f"wrote {target}: {len(table)} elements")


if __name__ == "__main__":
    main(sys.argv[1:])
