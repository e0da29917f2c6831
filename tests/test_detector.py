"""Detector geometry, images and radial averages, checked against pyFAI's own geometry and integration."""

import jax
import numpy as np
import pytest

import xfit
from xfit.physics._detector import Detector, radial_average, simulate_image

pyFAI = pytest.importorskip("pyFAI")


@pytest.fixture(scope="module")
def tilted():
    return Detector.from_beam_center(
        distance_m=0.08,
        pixel_m=100e-6,
        shape=(300, 400),
        beam_center_px=(140.2, 210.7),
        energy_kev=9.5,
        tilt_deg=(3.0, -2.0, 10.0),
        polarization=0.95,
    )


def test_geometry_matches_pyfai(tilted):
    ai = tilted.to_pyfai()
    shape = tilted.shape
    np.testing.assert_allclose(tilted.two_theta(), ai.center_array(shape, unit="2th_rad"), atol=1e-6)
    np.testing.assert_allclose(tilted.q(), ai.center_array(shape, unit="q_A^-1"), rtol=1e-5, atol=1e-6)
    chi = ai.center_array(shape, unit="chi_rad")
    assert np.max(np.abs(np.angle(np.exp(1j * (chi - tilted.chi()))))) < 1e-4
    np.testing.assert_allclose(tilted.polarization_factor(), ai.polarization(shape, factor=0.95), atol=1e-6)
    ratio = tilted.solid_angle() / ai.solidAngleArray(shape)  # pyFAI normalises to the PONI pixel
    assert np.std(ratio) < 1e-6 * np.mean(ratio)
    assert np.mean(ratio) == pytest.approx(tilted.pixel1 * tilted.pixel2 / tilted.distance**2, rel=1e-6)


def test_q_vectors_lie_on_the_ewald_sphere(tilted):
    k = 2 * np.pi / tilted.wavelength_angstrom
    qv = tilted.q_vectors()
    np.testing.assert_allclose(np.linalg.norm(qv + np.array([0.0, 0.0, k]), axis=-1), k, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(qv, axis=-1), tilted.q(), rtol=1e-10)


def test_poni_round_trips_through_pyfai(tmp_path, tilted):
    path = tilted.to_poni(tmp_path / "mine.poni")
    ai = pyFAI.load(str(path))
    assert ai.dist == pytest.approx(tilted.distance) and ai.rot3 == pytest.approx(tilted.rot3)
    ai.write(str(tmp_path / "theirs.poni"))
    back = Detector.from_poni(tmp_path / "theirs.poni", shape=tilted.shape, polarization=0.95)
    np.testing.assert_allclose(back.q(), tilted.q(), rtol=1e-10)


def test_radial_average_recovers_the_pattern_and_agrees_with_pyfai(chd):
    detector = Detector.from_beam_center(distance_m=0.06, pixel_m=150e-6, shape=(400, 400), energy_kev=12.0)
    image = simulate_image(chd, detector)
    pattern = radial_average(image, detector, n_bins=150)
    np.testing.assert_allclose(pattern.values, xfit.scattering(chd, pattern.q), rtol=2e-3)
    ai = detector.to_pyfai()
    result = ai.integrate1d(
        image,
        150,
        unit="q_A^-1",
        correctSolidAngle=True,
        polarization_factor=0.99,
        method=("no", "histogram", "cython"),
    )
    reference = xfit.scattering(chd, result.radial)
    scale = np.median(result.intensity / reference)  # pyFAI's solid angle is relative to the PONI pixel
    np.testing.assert_allclose(result.intensity / scale, reference, rtol=5e-3)


def test_photoselected_image_follows_p2_of_the_q_vector(nmm):
    detector = Detector.from_beam_center(distance_m=0.07, pixel_m=200e-6, shape=(201, 201), energy_kev=9.5)
    dipole, eps = np.array([0.2, 0.1, 1.0]), np.array([0.0, 1.0, 0.0])
    image = simulate_image(nmm, detector, kind="elastic", dipole=dipole, pump_polarization=eps)
    corrected = image / (detector.polarization_factor() * detector.solid_angle())
    q, qv = detector.q(), detector.q_vectors()
    i0, i2 = xfit.anisotropic_scattering(nmm, q.ravel(), dipole)
    cos = (qv @ eps) / np.maximum(np.linalg.norm(qv, axis=-1), 1e-300)  # the beam-centre pixel has q = 0
    expected = (i0 + i2 * 0.5 * (3 * cos.ravel() ** 2 - 1)).reshape(q.shape)
    np.testing.assert_allclose(corrected, expected, rtol=1e-4)
    assert np.ptp(corrected[100, :] / expected[100, :]) < 1e-3


def test_photon_noise_and_bad_input(chd):
    detector = Detector.from_beam_center(distance_m=0.06, pixel_m=300e-6, shape=(100, 100), energy_kev=12.0)
    a = simulate_image(chd, detector, photons=1e6, key=jax.random.key(1))
    b = simulate_image(chd, detector, photons=1e6, key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert a.sum() == pytest.approx(1e6, rel=0.01) and np.all(a == np.round(a))
    with pytest.raises(ValueError, match="explicit PRNG key"):
        simulate_image(chd, detector, photons=1e6)
    far = Detector.from_beam_center(distance_m=0.01, pixel_m=1e-3, shape=(200, 200), wavelength_angstrom=0.1)
    with pytest.raises(ValueError, match="beyond the form-factor tables"):
        simulate_image(chd, far)
    with pytest.raises(ValueError, match="photon energy must be positive"):
        Detector.from_beam_center(distance_m=0.1, pixel_m=1e-4, shape=(10, 10), energy_kev=-1.0)
    with pytest.raises(ValueError, match="zero length"):
        simulate_image(chd, detector, dipole=[0, 0, 0])
    with pytest.raises(ValueError, match="does not match the detector"):
        radial_average(np.ones((5, 5)), detector)


def test_cli_detector_image(tmp_path, capsys):
    from xfit.cli import main

    from .conftest import DATA

    poni = Detector.from_beam_center(distance_m=0.07, pixel_m=400e-6, shape=(128, 128), energy_kev=9.5).to_poni(
        tmp_path / "geometry.poni"
    )
    argv = ["pattern", str(DATA / "nmm.xyz"), "--detector", str(poni), "--dipole", "0,0,1"]
    assert main([*argv, "--plot", str(tmp_path / "image.png"), "-o", str(tmp_path / "image.h5")]) == 0
    assert "128 x 128 detector" in capsys.readouterr().out
    assert (tmp_path / "image.png").stat().st_size > 10_000
    assert (
        main(
            [
                "pattern",
                str(DATA / "chd.xyz"),
                "--probe",
                "electron",
                "--energy-kev",
                "90",
                "-o",
                str(tmp_path / "ued.txt"),
            ]
        )
        == 0
    )
    assert xfit.load_pattern(tmp_path / "ued.txt").probe == "electron"
    assert main(["pattern", str(DATA / "chd.xyz"), "--probe", "electron"]) == 2


def test_radial_average_by_pyfai_matches_xfit(chd):
    detector = Detector.from_beam_center(distance_m=0.06, pixel_m=150e-6, shape=(400, 400), energy_kev=12.0)
    image = simulate_image(chd, detector, photons=1e8, key=jax.random.key(0))
    ours = radial_average(image, detector, n_bins=100)
    theirs = radial_average(image, detector, n_bins=100, method="pyfai")
    ratio = ours.values / np.interp(ours.q, theirs.q, theirs.values)
    assert np.all(np.abs(np.percentile(ratio, [5, 95]) - 1) < 3e-3)  # measured 0.9994..1.0007
    sigma_ratio = ours.sigma / np.interp(ours.q, theirs.q, theirs.sigma)
    assert abs(np.median(sigma_ratio) - 1) < 0.02  # measured 1.0015
