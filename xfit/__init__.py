"""xfit: molecular geometry from gas-phase X-ray scattering patterns.

Conventions everywhere in the API: q = 4 pi sin(theta)/lambda in 1/A (theta is half the scattering angle),
positions in A, structures as ``ase.Atoms``.
"""

from xfit.chem._graph import MoleculeGraph as MoleculeGraph
from xfit.chem._metrics import dihedral as dihedral
from xfit.chem._metrics import puckering_amplitude as puckering_amplitude
from xfit.chem._metrics import relabelled as relabelled
from xfit.chem._metrics import rmsd as rmsd
from xfit.chem._molecules import bonds as bonds
from xfit.chem._molecules import molecule as molecule
from xfit.chem._pool import PoolSpec as PoolSpec
from xfit.chem._pool import build_pool as build_pool
from xfit.chem._pool import iterate_pool as iterate_pool
from xfit.chem._pool import pool_summary as pool_summary
from xfit.chem._structures import read_structures as read_structures
from xfit.data._image import DetectorImage as DetectorImage
from xfit.data._image import load_images as load_images
from xfit.data._noise import estimate_noise as estimate_noise
from xfit.data._pattern import Pattern as Pattern
from xfit.data._pattern import load_pattern as load_pattern
from xfit.data._pattern import load_patterns as load_patterns
from xfit.data._pattern import save_patterns as save_patterns
from xfit.data._results import load_results as load_results
from xfit.data._results import save_results as save_results
from xfit.data._signals import difference as difference
from xfit.data._signals import gaussian_noise as gaussian_noise
from xfit.data._signals import percent_difference as percent_difference
from xfit.data._signals import poisson_noise as poisson_noise
from xfit.infer._likelihood import Likelihood as Likelihood
from xfit.infer._posterior import Posterior as Posterior
from xfit.infer._refinement import Refinement as Refinement
from xfit.infer._restraints import Restraints as Restraints
from xfit.infer._restraints import covalent_restraints as covalent_restraints
from xfit.infer._result import Retrieval as Retrieval
from xfit.infer._result import Uncertainty as Uncertainty
from xfit.infer._retrieve import PriorFallbackWarning as PriorFallbackWarning
from xfit.infer._retrieve import retrieve as retrieve
from xfit.infer._retrieve import shared_fraction as shared_fraction
from xfit.learn._conformer import ConformerConfig as ConformerConfig
from xfit.learn._conformer import ConformerPrior as ConformerPrior
from xfit.learn._conformer import load_conformer_prior as load_conformer_prior
from xfit.learn._conformer_train import ConformerTrainConfig as ConformerTrainConfig
from xfit.learn._conformer_train import train_conformer_prior as train_conformer_prior
from xfit.learn._proposal import Prior as Prior
from xfit.learn._proposal import PriorConfig as PriorConfig
from xfit.learn._proposal import load_prior as load_prior
from xfit.learn._train import TrainConfig as TrainConfig
from xfit.learn._train import train as train
from xfit.physics._anisotropy import anisotropic_intensity as anisotropic_intensity
from xfit.physics._anisotropy import anisotropic_scattering as anisotropic_scattering
from xfit.physics._anisotropy import dipole_vector as dipole_vector
from xfit.physics._anisotropy import oriented_intensity as oriented_intensity
from xfit.physics._detector import Detector as Detector
from xfit.physics._detector import radial_average as radial_average
from xfit.physics._detector import simulate_image as simulate_image
from xfit.physics._electron import modified_scattering as modified_scattering
from xfit.physics._electron import pair_distribution as pair_distribution
from xfit.physics._elements import Q_MAX as Q_MAX
from xfit.physics._elements import compton_function as compton_function
from xfit.physics._elements import electron_form_factor as electron_form_factor
from xfit.physics._elements import electron_wavelength as electron_wavelength
from xfit.physics._elements import form_factor as form_factor
from xfit.physics._iam import KINDS as KINDS
from xfit.physics._iam import intensity as intensity
from xfit.physics._iam import scattering as scattering
from xfit.physics._qgrid import PerformanceWarning as PerformanceWarning
from xfit.physics._qgrid import QGrid as QGrid

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "Q_MAX",
    "ConformerConfig",
    "ConformerPrior",
    "ConformerTrainConfig",
    "Detector",
    "DetectorImage",
    "Likelihood",
    "MoleculeGraph",
    "Pattern",
    "PerformanceWarning",
    "PoolSpec",
    "Posterior",
    "Prior",
    "PriorConfig",
    "PriorFallbackWarning",
    "QGrid",
    "Refinement",
    "Restraints",
    "Retrieval",
    "TrainConfig",
    "Uncertainty",
    "__version__",
    "anisotropic_intensity",
    "anisotropic_scattering",
    "bonds",
    "build_pool",
    "compton_function",
    "covalent_restraints",
    "difference",
    "dihedral",
    "dipole_vector",
    "electron_form_factor",
    "electron_wavelength",
    "estimate_noise",
    "form_factor",
    "gaussian_noise",
    "intensity",
    "iterate_pool",
    "load_conformer_prior",
    "load_images",
    "load_pattern",
    "load_patterns",
    "load_prior",
    "load_results",
    "modified_scattering",
    "molecule",
    "oriented_intensity",
    "pair_distribution",
    "percent_difference",
    "poisson_noise",
    "pool_summary",
    "puckering_amplitude",
    "radial_average",
    "read_structures",
    "relabelled",
    "retrieve",
    "rmsd",
    "save_patterns",
    "save_results",
    "scattering",
    "shared_fraction",
    "simulate_image",
    "train",
    "train_conformer_prior",
]
