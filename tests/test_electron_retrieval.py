"""Electron-diffraction retrieval: sM and Delta sM against an independent Mott-Bethe/Debye implementation, round
trips for every electron kind, the energy (relativistic factor) absorbed by the scale, bad input, files, CLI."""

import numpy as np
import pytest

import xfit
from xfit.cli import main
from xfit.infer._likelihood import build_likelihood
from xfit.physics._elements import relativistic_factor

Q = np.linspace(1.0, 10.0, 46)  # q = 4 pi sin(theta)/lambda in 1/A, a keV-UED range
RAMP = np.linspace(1.0, 2.0, len(Q))  # any pattern with signal: these tests are about the options
E = 90.0  # keV
F = 0.3  # excitation fraction


def _electron(atoms, kind, energy=E):
    return np.asarray(xfit.scattering(atoms, Q, kind=kind, probe="electron", energy_kev=energy))


def _signal(kind, ref, truth):
    """Noiseless electron signals of ``truth`` of every kind (against ``ref`` for differences)."""
    i_at = _electron(ref, "atomic")
    if kind == "sm":
        return 7.0 * Q * _electron(truth, "molecular") / i_at  # measured sM: arbitrary scale
    if kind == "delta_sm":
        return F * Q * (_electron(truth, "molecular") - _electron(ref, "molecular")) / i_at
    if kind == "percent_difference":
        return 100 * F * (_electron(truth, "elastic") - _electron(ref, "elastic")) / _electron(ref, "elastic")
    if kind == "difference":
        return F * (_electron(truth, "elastic") - _electron(ref, "elastic"))
    return 3.0 * _electron(truth, kind)  # elastic, molecular: scale 3


def _likelihood(pattern, ref, **options):
    options = {"fraction": None, "model_kind": "total", "background": False, "relative_sigma": 1e-3, **options}
    return build_likelihood([pattern], ref.numbers, ref.positions, **options)


# ------------------------------------------------------------------------------------- independent reference


def _mott_bethe_debye(numbers, positions, q):
    """(I_at, I_mol) from electron factors f_e(s) ~ (Z - f_x(s))/s^2, s = q/(4 pi), with xraydb's f_x, summed in
    NumPy. Z is the X-ray fit's own f_x(0) (differing from Z by ~3e-3 electrons for carbon, which the 1/s^2 would
    amplify at small s); the constant prefactor 1/(8 pi^2 a0) and gamma cancel in sM and Delta sM."""
    import xraydb

    s = q / (4 * np.pi)
    f = np.stack([(xraydb.f0(int(z), 0.0)[0] - np.asarray(xraydb.f0(int(z), s))) / s**2 for z in numbers])
    r = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    i, j = np.triu_indices(len(numbers), 1)
    sinc = np.sinc(q[None] * r[i, j][:, None] / np.pi)  # np.sinc(x) = sin(pi x)/(pi x)
    return np.sum(f**2, axis=0), 2 * np.sum(f[i] * f[j] * sinc, axis=0)


@pytest.mark.parametrize("energy", [E, None])
def test_sm_and_delta_sm_models_match_an_independent_mott_bethe_debye_sum(chd, energy):
    excited = chd.copy()
    excited.positions[0] += [0.0, 0.15, -0.1]
    i_at, i_mol = _mott_bethe_debye(chd.numbers, chd.positions, Q)
    _, i_mol_exc = _mott_bethe_debye(chd.numbers, excited.positions, Q)
    sm_ref, sm_exc = Q * i_mol / i_at, Q * i_mol_exc / i_at
    np.testing.assert_allclose(
        xfit.modified_scattering(chd.numbers, chd.positions, Q, energy_kev=E), sm_ref, rtol=1e-9, atol=1e-12
    )
    # The likelihood's models, with the nuisance parameter solved: exact data give the exact scale/fraction.
    sm = xfit.Pattern(Q, 2.5 * sm_exc, kind="sm", probe="electron", energy_kev=energy)
    model, params = _likelihood(sm, chd).model_and_parameters(excited.positions[None])
    n = len(Q)  # the likelihood's grid runs on to a multiple of 16 points, at weight 0
    np.testing.assert_allclose(model[0][:n], 2.5 * sm_exc, rtol=1e-9, atol=1e-12)
    assert float(params["scale"][0]) == pytest.approx(2.5, rel=1e-9)
    delta = xfit.Pattern(Q, F * (sm_exc - sm_ref), kind="delta_sm", probe="electron", energy_kev=energy)
    like = _likelihood(delta, chd)
    model, params = like.model_and_parameters(excited.positions[None])
    np.testing.assert_allclose(model[0][:n], F * (sm_exc - sm_ref), rtol=1e-9, atol=1e-12)
    assert float(params["fraction"][0]) == pytest.approx(F, rel=1e-9)
    assert float(like.chi2(chd.positions[None])[0]) > 1e3  # ... and the reference itself does not fit


def test_without_energy_the_scale_absorbs_the_relativistic_factor(skeleton):
    ref, truth = skeleton
    x = truth.positions[None]
    for kind, name, factor in (("elastic", "scale", relativistic_factor(E) ** 2), ("sm", "scale", 1.0)):
        with_energy = xfit.Pattern(Q, _signal(kind, ref, truth), kind=kind, probe="electron", energy_kev=E)
        without = with_energy.replace(energy_kev=None)
        a = float(_likelihood(with_energy, ref).model_and_parameters(x)[1][name][0])
        b = float(_likelihood(without, ref).model_and_parameters(x)[1][name][0])
        assert b == pytest.approx(a * factor, rel=1e-9)
        assert float(_likelihood(without, ref).chi2(x)[0]) < 1e-12  # the shape is exact without the energy
    # Kirkland's parametrisation needs no energy either: only gamma depends on it.
    kirkland = xfit.Pattern(Q, _signal("sm", ref, truth), kind="sm", probe="electron")
    assert float(_likelihood(kirkland, ref, electron_model="kirkland").chi2(x)[0]) > 0


# -------------------------------------------------------------------------------------------------- round trips


def _sorted_distances(atoms):
    d = atoms.get_all_distances()
    return np.sort(d[np.triu_indices(len(atoms), 1)])


@pytest.mark.parametrize(
    ("kind", "options", "parameter", "value"),
    [
        ("sm", {}, "scale", 7.0),
        ("delta_sm", {"fraction": F}, "fraction", F),
        ("elastic", {}, "scale", 3.0),
        ("molecular", {}, "scale", 3.0),
        ("percent_difference", {"fraction": F}, "fraction", F),
        ("difference", {"fraction": F}, "fraction_x_scale", F),
    ],
)
def test_round_trip_recovers_the_distances_of_each_electron_kind(skeleton, kind, options, parameter, value):
    # Identical atoms: the pattern fixes the multiset of distances, not which atom pair has which (so the
    # structure is compared by its sorted distances, not by RMSD). At q <= 10 1/A (resolution ~pi/q_max = 0.3 A)
    # 15 C-C distances are ill-conditioned and 400 Adam steps from one start go only part of the way: measured, the
    # largest sorted-distance error drops to 0.32-0.44 of the start's for every kind (0.6 leaves margin). A wrong
    # model (X-ray factors, a wrong I_at, a wrong reference) fits noiseless data neither to 1e-2 of the scale nor
    # 100x better than the start.
    ref, truth = skeleton
    start = truth.copy()
    start.positions += 0.04 * np.random.default_rng(2).standard_normal((6, 3))
    # A molecular intensity or a plain difference crosses zero: its noise is that of the intensities behind it (here
    # 1e-5 of I, on I_on and I_off for the difference), not a fraction of itself.
    sigma = {"molecular": 3e-5 * _electron(ref, "atomic"), "difference": np.sqrt(2) * 1e-5 * _electron(ref, "elastic")}
    sigma = sigma.get(kind)
    pattern = xfit.Pattern(Q, _signal(kind, ref, truth), sigma, kind=kind, probe="electron", energy_kev=E)
    result = xfit.retrieve(
        pattern, start, reference=ref, n_starts=1, steps=400, restraints=None, relative_sigma=1e-5, **options
    )
    before = np.abs(_sorted_distances(start) - _sorted_distances(truth)).max()
    after = np.abs(_sorted_distances(result.atoms) - _sorted_distances(truth)).max()
    assert after < 0.6 * before
    like = _likelihood(pattern, ref, relative_sigma=1e-5, **options)
    chi2_start = float(like.chi2(start.positions[None])[0])
    assert result.chi2_reduced * (len(Q) - (parameter == "scale")) < chi2_start / 100
    assert result.parameters[parameter] == pytest.approx(value, rel=1e-2)
    assert result.model.probe == "electron" and result.model.energy_kev == E


@pytest.mark.parametrize("kind", ["delta_sm", "percent_difference"])
def test_fitted_fraction_is_recovered_at_the_truth(skeleton, kind):
    ref, truth = skeleton
    pattern = xfit.Pattern(Q, _signal(kind, ref, truth), kind=kind, probe="electron")
    result = xfit.retrieve(pattern, truth, reference=ref, n_starts=1, steps=5, learning_rate=1e-5, restraints=None)
    assert result.parameters["fraction"] == pytest.approx(F, rel=1e-3)


# ----------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "options", "match"),
    [
        (lambda: xfit.Pattern(Q, RAMP, kind="total", probe="electron"), {}, "kind 'total' cannot"),
        (lambda: xfit.Pattern(Q, RAMP, kind="inelastic", probe="electron"), {}, "inelastic"),
        (lambda: xfit.Pattern(np.linspace(0, 10, 46), np.linspace(1, 2, 46), kind="sm", probe="electron"), {}, "q = 0"),
        (lambda: xfit.Pattern(Q, RAMP, kind="difference", probe="electron"), {"fraction": F}, "energy"),
        (lambda: xfit.Pattern(Q, RAMP, kind="sm", probe="electron"), {"electron_model": "x"}, "electron_"),
        (lambda: xfit.Pattern(Q, RAMP, kind="sm", probe="electron"), {"background": True}, "background"),
    ],
)
def test_retrieve_rejects_what_electrons_cannot_model(skeleton, make, options, match):
    ref, _ = skeleton
    with pytest.raises(ValueError, match=match):
        xfit.retrieve(make(), ref, steps=1, n_starts=1, **options)


def test_pattern_rejects_energy_on_x_rays_and_sm_kinds_without_electrons():
    with pytest.raises(ValueError, match="energy_kev is for probe='electron'"):
        xfit.Pattern(Q, np.ones_like(Q), energy_kev=90)
    with pytest.raises(ValueError, match="positive"):
        xfit.Pattern(Q, np.ones_like(Q), probe="electron", kind="elastic", energy_kev=0)
    with pytest.raises(ValueError, match="is for probe='electron'"):
        xfit.Pattern(Q, np.ones_like(Q), kind="sm")


def test_proposal_network_is_not_asked_about_electron_patterns(skeleton):
    ref, truth = skeleton
    pattern = xfit.Pattern(Q, _signal("elastic", ref, truth), kind="elastic", probe="electron")
    with pytest.raises(ValueError, match="trained on X-ray patterns"):
        xfit.retrieve(pattern, ref, prior="nmm_chd_dt", steps=1, n_starts=1)


# --------------------------------------------------------------------------------------------------- files, CLI


@pytest.mark.parametrize("suffix", [".txt", ".npz", ".h5"])
def test_energy_kev_survives_a_file_round_trip(tmp_path, suffix):
    pattern = xfit.Pattern(Q, np.sin(Q), np.full_like(Q, 0.01), kind="sm", probe="electron", energy_kev=3000.0)
    back = xfit.load_pattern(pattern.save(tmp_path / f"p{suffix}"))
    assert (back.kind, back.probe, back.energy_kev) == ("sm", "electron", 3000.0)
    np.testing.assert_allclose(back.values, pattern.values, rtol=1e-9)
    series = [pattern.replace(delay=t) for t in (0.0, 1.0)]
    if suffix != ".txt":
        assert [p.energy_kev for p in xfit.load_patterns(xfit.save_patterns(tmp_path / f"s{suffix}", series))] == [
            3000.0,
            3000.0,
        ]
    assert xfit.load_pattern(tmp_path / f"p{suffix}", energy_kev=90.0).energy_kev == 90.0


def test_cli_writes_an_sm_pattern_and_retrieves_from_it(tmp_path, capsys, skeleton):
    ref, truth = skeleton
    truth.write(tmp_path / "truth.xyz")
    ref.write(tmp_path / "ref.xyz")
    out = tmp_path / "dsm.txt"
    common = ["--probe", "electron", "--energy-kev", "90", "--q", "1:10:46"]
    options = ["--kind", "delta_sm", "--fraction", "0.3", "--reference", str(tmp_path / "ref.xyz"), "--noise", "1e-5"]
    assert main(["pattern", str(tmp_path / "truth.xyz"), *common, *options, "-o", str(out)]) == 0
    pattern = xfit.load_pattern(out)
    assert (pattern.kind, pattern.probe, pattern.energy_kev) == ("delta_sm", "electron", 90.0)
    np.testing.assert_allclose(pattern.values, _signal("delta_sm", ref, truth), atol=5 * pattern.sigma.max())
    argv = ["retrieve", str(out), "--atoms", str(tmp_path / "ref.xyz"), "--no-prior", "--no-restraints"]
    argv += ["--steps", "20", "--starts", "1", "--fraction", "0.3", "--electron-model", "kirkland"]
    assert main([*argv, "-o", str(tmp_path / "r.xyz"), "--plot", str(tmp_path / "fit.png")]) == 0
    assert "delta_sm, electron" in capsys.readouterr().out
    assert (tmp_path / "r.xyz").is_file() and (tmp_path / "fit.png").stat().st_size > 0
