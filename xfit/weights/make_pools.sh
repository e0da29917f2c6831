#!/usr/bin/env bash
# Builds the training pools of the shipped prior (xfit/weights/nmm_chd_dt): xfit's own samplers on GFN2-xTB,
# never ../shared/reference data. Usage: bash xfit/weights/make_pools.sh [POOL_DIR]
# About 25 min on 2 cores (run the three molecules in parallel to use more).
# Since 2026-12-06 (commit f563db0) a sweep keeps every bond of the molecule. The NMM and DT sweep pools built before
# held other molecules: NMM's oxygen and a hydrogen moved in all 768 frames (the torsion was pulled from -160 to +60
# deg in one window), and a hydrogen moved from a carbon to a sulfur in 398 of DT's 1536 (each window started from
# the previous window's last thermal frame, so a shift carried on). The shipped priors (xfit/weights/conformer,
# xfit/weights/nmm_chd_dt) were trained on those pools.
# Since 2026-12-06 (commit 2671904) Wigner pools redraw the samples whose rectilinear normal modes stretch a bond past
# 1.5 x its covalent radii sum: at 1000 K, 1,078 of NMM's 65,536, 52 of CHD's, 4 of DT's; at 300 K, 1 of NMM's.
set -euo pipefail
dir=${1:-pools}
mkdir -p "$dir"
q=0.2:8:128
# molecule, sweep range (A or deg), sweep temperature (K), sweep size, MD size
for spec in "CHD 1.45:6.0 800 3072 1024" "DT 2.0:4.6 800 1536 512" "NMM 60:180 600 768 512"; do
    set -- $spec
    m=$1; name=$(echo "$m" | tr '[:upper:]' '[:lower:]')
    xfit pool "$m" --method sweep -n "$4" --range "$2" --temperature "$3" --q $q --seed 1 -o "$dir/${name}_sweep.h5"
    xfit pool "$m" --method md -n "$5" --temperature 1000 --q $q --seed 2 -o "$dir/${name}_md.h5"
    xfit pool "$m" --method wigner -n 65536 --temperature 300 --q $q --seed 3 -o "$dir/${name}_wigner300.h5"
    xfit pool "$m" --method wigner -n 65536 --temperature 1000 --q $q --seed 4 -o "$dir/${name}_wigner1000.h5"
done
