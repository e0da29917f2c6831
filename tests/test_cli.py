"""The xfit command line, run as a user would (in-process through main, and once as a subprocess)."""

import subprocess
import sys

import numpy as np
import pytest

import xfit
from xfit.cli import main

from .conftest import DATA


def test_pattern_writes_file_and_plot(tmp_path, capsys):
    out, png = tmp_path / "nmm.txt", tmp_path / "nmm.png"
    assert main(["pattern", str(DATA / "nmm.xyz"), "--q", "0.5:8:128", "-o", str(out), "--plot", str(png)]) == 0
    assert "C5H11NO, 18 atoms" in capsys.readouterr().out
    p = xfit.load_pattern(out)
    assert len(p) == 128 and p.kind == "total"
    from ase.io import read

    np.testing.assert_allclose(p.values, xfit.scattering(read(DATA / "nmm.xyz"), p.q), rtol=1e-9)
    assert png.stat().st_size > 10_000


def test_pattern_writes_the_kind_asked_for(tmp_path):
    from ase.io import read

    nmm = read(DATA / "nmm.xyz")
    for kind in ("elastic", "molecular", "inelastic"):
        out = tmp_path / f"{kind}.txt"
        assert main(["pattern", str(DATA / "nmm.xyz"), "--q", "0.5:8:64", "--kind", kind, "-o", str(out)]) == 0
        p = xfit.load_pattern(out)
        assert p.kind == kind
        np.testing.assert_allclose(p.values, xfit.scattering(nmm, p.q, kind=kind), rtol=1e-9, atol=1e-9)


def test_pattern_of_a_trajectory_with_noise(tmp_path):
    from ase.io import read, write

    frames = [read(DATA / "chd.xyz") for _ in range(3)]
    for k, frame in enumerate(frames):
        frame.positions[0] += 0.1 * k
    write(tmp_path / "traj.xyz", frames)
    out = tmp_path / "traj.h5"
    assert main(["pattern", str(tmp_path / "traj.xyz"), "--noise", "0.01", "--seed", "3", "-o", str(out)]) == 0
    patterns = xfit.load_patterns(out)
    assert len(patterns) == 3 and all(p.sigma is not None for p in patterns)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pattern", "missing.xyz"], "not found"),
        (["pattern", str(DATA / "nmm.xyz"), "--q", "0:90:10"], "beyond the form-factor"),
    ],
)
def test_errors_are_reported_not_raised(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_q_syntax_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pattern", str(DATA / "nmm.xyz"), "--q", "8:0.5"])
    assert exit_info.value.code == 2
    assert "QMIN:QMAX:NQ" in capsys.readouterr().err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "xfit.cli", "pattern", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "4 pi sin(theta)/lambda" in " ".join(result.stdout.split())  # argparse wraps lines


def test_retrieve_on_the_shipped_example(tmp_path, capsys):
    out, png = tmp_path / "result.xyz", tmp_path / "fit.png"
    argv = ["retrieve", str(DATA / "chd_traj001_t12.txt"), "--atoms", str(DATA / "chd.xyz"), "--free-pair", "0,5"]
    assert main([*argv, "--starts", "4", "--steps", "60", "-o", str(out), "--plot", str(png)]) == 0
    assert "chi2_red" in capsys.readouterr().out
    from ase.io import read

    result = read(out)
    assert len(result) == 14 and "chi2_reduced" in result.info
    assert png.stat().st_size > 10_000


def test_retrieve_a_time_series(tmp_path, capsys):
    out, png = tmp_path / "series.xyz", tmp_path / "course.png"
    argv = ["retrieve", str(DATA / "nmm_experiment.mat"), "--atoms", str(DATA / "nmm.xyz"), "--fraction", "0.057"]
    # Refinement, small: the series' reading, writing and plot are under test here; the CLI's posterior path is
    # test_retrieve_on_the_shipped_example's (the NMM posterior costs a minute of compilation).
    argv += ["--delays", "1:1.2", "--no-prior", "--starts", "2", "--steps", "20", "-o", str(out), "--plot", str(png)]
    assert main(argv) == 0
    from ase.io import read

    frames = read(out, index=":")
    assert len(frames) == 5 and frames[0].info["delay_ps"] == pytest.approx(1.0)
    assert png.stat().st_size > 10_000


def test_retrieve_errors(capsys):
    argv = ["retrieve", str(DATA / "nmm_experiment.mat"), "--atoms", str(DATA / "chd.xyz"), "--delays", "9:10"]
    assert main(argv) == 2
    assert "no pattern has a delay" in capsys.readouterr().err


def test_retrieve_delta_sm_with_a_prior_on_the_fraction(tmp_path, capsys):
    """--fraction F+-SD: an electron Delta sM file fitted with a Gaussian prior on the fraction (refinement, small:
    the option's path from the command line to the result file is under test; the prior's algebra in
    test_retrieve)."""
    from ase.io import read

    ground, frame = read(DATA / "chd.xyz"), read(DATA / "chd_traj001_t12_true.xyz")
    q = np.linspace(1.0, 10.0, 91)
    sm = [xfit.modified_scattering(a.numbers, a.positions, q, energy_kev=90.0) for a in (frame, ground)]
    delta = 0.15 * np.asarray(sm[0] - sm[1])
    pattern = xfit.Pattern(q, delta, np.full(len(q), 2e-3), kind="delta_sm", probe="electron", energy_kev=90.0)
    path, out = pattern.save(tmp_path / "delta.txt"), tmp_path / "out.h5"
    argv = ["retrieve", str(path), "--atoms", str(DATA / "chd.xyz"), "--no-prior", "--starts", "2", "--steps", "20"]
    assert main([*argv, "--fraction", "0.2+-0.05", "-o", str(out)]) == 0
    (result,) = xfit.load_results(out)
    assert result.info["fraction_fitted"] and 0 < result.parameters["fraction"] < 1
    # the fraction's standard deviation: in the table printed and in the results file, below the prior's own sd
    sigma = result.info["fraction_sigma"]
    assert 0 < sigma < 0.05 and f"{result.parameters['fraction']:.4g} +- {sigma:.2g}" in capsys.readouterr().out
    assert result.parameters["fraction"] != 0.2  # fitted, not fixed
    with pytest.raises(SystemExit):
        main([*argv, "--fraction", "0.2+-x"])
    assert "--fraction must look like 0.15, 0.15+-0.05 or shared" in capsys.readouterr().err


def test_retrieve_a_series_under_its_shared_fraction(tmp_path, capsys):
    """--fraction shared: a two-delay Delta sM series (one pump, f = 0.15) fitted pattern by pattern, then again
    under the series' one fraction from xfit.shared_fraction, printed; live mode refuses it (refinement, small)."""
    from ase.io import read

    ground, frame = read(DATA / "chd.xyz"), read(DATA / "chd_traj001_t12_true.xyz")
    q = np.linspace(1.0, 10.0, 91)
    sm = [xfit.modified_scattering(a.numbers, a.positions, q, energy_kev=90.0) for a in (frame, ground)]
    options = {"kind": "delta_sm", "probe": "electron", "energy_kev": 90.0}
    series = [
        xfit.Pattern(q, f * np.asarray(sm[0] - sm[1]), np.full(len(q), 2e-3), delay=t, **options)
        for t, f in ((0.5, 0.15), (1.0, 0.15))
    ]
    path, out = xfit.save_patterns(tmp_path / "series.h5", series), tmp_path / "out.h5"
    argv = ["retrieve", str(path), "--atoms", str(DATA / "chd.xyz"), "--no-prior", "--starts", "2", "--steps", "20"]
    assert main([*argv, "--fraction", "shared", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.startswith("shared excitation fraction:"))
    mean, sd = (float(v) for v in line.split(":")[1].split("(")[0].split("+-"))
    results = xfit.load_results(out)
    assert len(results) == 2 and all(r.info["fraction_fitted"] and "fraction_sigma" in r.info for r in results)
    assert 0 < mean < 1 and sd > 0
    watch = tmp_path / "watch"
    watch.mkdir()
    live = ["live", str(watch), "--atoms", str(DATA / "chd.xyz"), "-o", str(tmp_path / "live.h5")]
    assert main([*live, "--fraction", "shared", "--once"]) == 2
    assert "--fraction shared needs the whole series" in capsys.readouterr().err


def test_pool_prepare_train_and_retrieve_with_priors(tmp_path, capsys):
    """The prior workflow a user runs: prepare a pool, finish it, train, retrieve with/without/with a named prior."""
    pool = tmp_path / "ethanol.h5"
    argv = ["pool", "CCO", "--method", "wigner", "-n", "64", "--q", "0.2:8:128", "--forcefield", "mmff"]
    assert main([*argv, "--prepare-only", "-o", str(pool)]) == 0
    assert "prepared" in capsys.readouterr().out and xfit.pool_summary(pool)["n"] == 0
    assert main([*argv, "-o", str(pool)]) == 0
    assert xfit.pool_summary(pool)["n"] == 64
    prior = tmp_path / "prior"
    train = ["train", str(pool), "-o", str(prior), "--steps", "3", "--batch-size", "8", "--width", "16"]
    assert main([*train, "--blocks", "1", "--max-atoms", "12", "--hypotheses", "2", "--any-molecule"]) == 0
    assert "wrote" in capsys.readouterr().out and xfit.load_prior(prior).any_molecule_of == (1, 6, 8)
    ethanol = tmp_path / "ethanol.xyz"
    atoms = xfit.molecule("CCO", forcefield="mmff")
    atoms.write(ethanol)
    pattern = tmp_path / "ethanol.txt"
    assert main(["pattern", str(ethanol), "--q", "0.5:8:60", "-o", str(pattern)]) == 0
    retrieve = ["retrieve", str(pattern), "--atoms", str(ethanol), "--starts", "2", "--steps", "5"]
    for extra, shown in (
        ([], "prior: none"),
        (["--prior", str(prior)], f"prior: {prior}"),
        (["--prior", "broad"], "broad"),
    ):
        capsys.readouterr()
        assert main([*retrieve, *extra, "-o", str(tmp_path / "r.xyz")]) == 0
        assert shown in capsys.readouterr().out
    assert main([*retrieve, "--prior", str(tmp_path / "nowhere")]) == 2
    assert "not a prior" in capsys.readouterr().err


def _image_of_perturbed_chd(tmp_path, detector, *extra) -> tuple:
    """CHD 0.02 A per coordinate off the shipped structure, its image simulated by `xfit pattern --detector` on
    ``detector`` (written as a PONI file) into image.h5: (the structure, the PONI path, the image path)."""
    from ase.io import read, write

    truth = read(DATA / "chd.xyz")
    truth.positions += 0.02 * np.random.default_rng(1).standard_normal(truth.positions.shape)
    write(tmp_path / "truth.xyz", truth)
    poni = detector.to_poni(tmp_path / "geometry.poni")
    image = tmp_path / "image.h5"
    assert main(["pattern", str(tmp_path / "truth.xyz"), "--detector", str(poni), *extra, "-o", str(image)]) == 0
    return truth, poni, image


def test_retrieve_detector_images(tmp_path, capsys):
    # `xfit pattern --detector` writes an image that names its geometry and `xfit retrieve` reads it back as is; a
    # stack with a mask file goes through --detector, --index and --q-max. The refinement path (--no-prior): the
    # command line's plumbing, at a test's cost.
    import jax
    from ase.io import read

    detector = xfit.Detector.from_beam_center(distance_m=0.05, pixel_m=2.4e-3, shape=(40, 40), energy_kev=20.0)
    truth, poni, image = _image_of_perturbed_chd(tmp_path, detector, "--photons", "1e10")
    fast = ["--atoms", str(DATA / "chd.xyz"), "--no-prior", "--starts", "2", "--steps", "200"]
    assert main(["retrieve", str(image), *fast, "-o", str(tmp_path / "one.xyz")]) == 0
    out = capsys.readouterr().out
    assert "1 image(s), DetectorImage(40x40, total, 1600 valid pixels" in out
    assert "detector: 40 x 40 pixels at 50 mm" in out and "method: refinement" in out
    assert 0.5 < read(tmp_path / "one.xyz").info["chi2_reduced"] < 1.5

    counts = np.asarray(xfit.simulate_image(truth, detector, photons=1e10, key=jax.random.key(2)))
    second = counts.copy()
    second[10, 10] = np.nan
    np.save(tmp_path / "stack.npy", np.stack([counts, second]))
    beamstop = np.zeros(detector.shape, bool)
    beamstop[18:22, 18:22] = True
    np.save(tmp_path / "beamstop.npy", beamstop)
    argv = ["retrieve", str(tmp_path / "stack.npy"), "--detector", str(poni), "--mask", str(tmp_path / "beamstop.npy")]
    assert main([*argv, "--index", "1", "--q-max", "7", *fast, "-o", str(tmp_path / "two.xyz")]) == 0
    out = capsys.readouterr().out
    beyond = int(np.count_nonzero((detector.q() > 7) & ~beamstop))
    assert f"{1600 - 16 - beyond - 1} valid pixels, 1 invalid, {16 + beyond} masked" in out
    assert 0.5 < read(tmp_path / "two.xyz").info["chi2_reduced"] < 1.5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kind", "sm"], "unknown image kind 'sm'"),
        (["--energy-kev", "90"], "--energy-kev cannot be used with detector images"),
        (["--probe", "electron", "--kind", "total"], "an electron image measures elastic scattering"),
        (["--dataset", "frames"], "has no array 'frames'"),
    ],
)
def test_retrieve_image_errors(tmp_path, capsys, extra, message):
    detector = xfit.Detector.from_beam_center(distance_m=0.05, pixel_m=2.4e-3, shape=(40, 40), energy_kev=20.0)
    poni = detector.to_poni(tmp_path / "geometry.poni")
    np.savez(tmp_path / "image.npz", image=np.ones(detector.shape) + np.eye(40))
    argv = ["retrieve", str(tmp_path / "image.npz"), "--detector", str(poni), "--atoms", str(DATA / "chd.xyz")]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err


def test_image_options_without_a_detector_are_an_error(capsys):
    argv = ["retrieve", str(DATA / "chd_traj001_t12.txt"), "--atoms", str(DATA / "chd.xyz"), "--mask", "m.npy"]
    assert main(argv) == 2
    assert "--mask: for detector images only; give --detector GEOMETRY.poni" in capsys.readouterr().err


def test_electron_detector_image_from_the_command_line(tmp_path, capsys):
    # An electron instrument's PONI file holds the electrons' wavelength: `xfit pattern --probe electron` simulates
    # the image there, records kind and probe in the file, and `xfit retrieve` reads all of it back.
    import h5py
    from ase.io import read

    ued = xfit.Detector.from_beam_center(distance_m=3.0, pixel_m=0.9e-3, shape=(40, 40), electron_energy_kev=3000.0)
    _, poni, image = _image_of_perturbed_chd(tmp_path, ued, "--probe", "electron", "--photons", "1e9")
    assert "(electrons of 3000 keV)" in capsys.readouterr().out
    with h5py.File(image) as f:
        assert (f.attrs["kind"], f.attrs["probe"]) == ("elastic", "electron")
    fast = ["--atoms", str(DATA / "chd.xyz"), "--no-prior", "--starts", "2", "--steps", "200"]
    assert main(["retrieve", str(image), *fast, "-o", str(tmp_path / "ued.xyz")]) == 0
    out = capsys.readouterr().out
    assert "DetectorImage(40x40, elastic, electrons at 3000 keV, 1600 valid pixels" in out
    assert 0.5 < read(tmp_path / "ued.xyz").info["chi2_reduced"] < 1.5
    simulate = ["pattern", str(tmp_path / "truth.xyz"), "--detector", str(poni), "--probe", "electron"]
    assert main([*simulate, "--energy-kev", "90", "-o", str(tmp_path / "x.h5")]) == 2
    assert "does not match" in capsys.readouterr().err
