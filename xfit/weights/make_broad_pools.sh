#!/usr/bin/env bash
# Pools of the broad prior (xfit/weights/broad): 32 small molecules from SMILES, none of them NMM, CHD or DT (those
# are held out to test retrieval on molecules the network never saw). MMFF94 for speed: Langevin MD at 1000 K
# (256 structures each, built here) and Wigner pools at 300 K and 1000 K (32768 structures each).
# Usage: bash xfit/weights/make_broad_pools.sh [POOL_DIR] [--prepare-only]
# With --prepare-only the Wigner pools hold only the MMFF minimum and Hessian (a few kB each; 6 min for all, the
# MD pools included, on 2 cores). Running the script again without it, on any machine, samples the structures and
# computes their patterns; that step needs neither RDKit nor the force field, so a GPU machine can do it.
set -euo pipefail
dir=${1:-broad_pools}
prepare=${2:-}
mkdir -p "$dir"
q=0.2:8:128
while read -r name smiles; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    if [[ ! -f "$dir/${name}_md.h5" || -z "$prepare" ]]; then
        xfit pool "$smiles" --method md -n 256 --temperature 1000 --forcefield mmff --q $q --seed 2 \
            -o "$dir/${name}_md.h5"
    fi
    for t in 300 1000; do
        xfit pool "$smiles" --method wigner -n 32768 --temperature $t --forcefield mmff --q $q --seed 3 $prepare \
            -o "$dir/${name}_wigner$t.h5"
    done
done <<'LIST'
ethanol CCO
propanol CCCO
isopropanol CC(C)O
ethylene_glycol OCCO
acetone CC(C)=O
acetic_acid CC(=O)O
methyl_acetate COC(C)=O
diethyl_ether CCOCC
thf C1CCOC1
tetrahydropyran C1CCOCC1
dioxane C1COCCO1
cyclohexanol OC1CCCCC1
cyclopentane C1CCCC1
cyclohexane C1CCCCC1
cyclopentene C1CC=CC1
cyclohexene C1CC=CCC1
cyclohexa14diene C1C=CCC=C1
butadiene C=CC=C
benzene c1ccccc1
toluene Cc1ccccc1
pyridine c1ccncc1
pyrrolidine C1CCNC1
piperidine C1CCNCC1
n_methylpiperidine CN1CCCCC1
morpholine C1COCCN1
trimethylamine CN(C)C
thiophene c1ccsc1
tetrahydrothiophene C1CCSC1
thiane C1CCSCC1
dithiolane C1CSSC1
dithiane13 C1CSCSC1
dimethyl_disulfide CSSC
LIST
