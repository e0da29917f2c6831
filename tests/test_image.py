"""Detector images retrieved pixel by pixel: the pixel model is simulate_image's, its gradient, invalid pixels
masked and counted, round trips (isotropic and photoselected) and bad input."""

from pathlib import Path

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xfit
from xfit.infer._likelihood import IMAGE_GRID, build_image_likelihood, model_and_parameters

DATA = Path(__file__).parent.parent / "examples" / "data"
NORMAL = ("normal", 0, 1, 2)  # CHD ring plane


@pytest.fixture(scope="module")
def chd():
    return ase.io.read(DATA / "chd.xyz")


@pytest.fixture(scope="module")
def detector():
    # 20 keV, 40 x 40 pixels of 2.4 mm at 5 cm: |q| up to about 9 1/A (q = 4 pi sin(theta)/lambda)
    return xfit.Detector.from_beam_center(distance_m=0.05, pixel_m=2.4e-3, shape=(40, 40), energy_kev=20.0)


def _model(image, atoms, n_grid=IMAGE_GRID, background=False):
    like = build_image_likelihood([image], atoms.numbers, background=background, dipole=image.dipole, n_grid=n_grid)
    y, w, i_ref, pixels = like.row(0)
    model, params = model_and_parameters(like.spec, jnp.asarray(atoms.positions), y, w, i_ref, pixels, like.grid)
    return np.asarray(model)[: image.n_valid], params, like


@pytest.mark.parametrize("dipole", [None, NORMAL])
def test_pixel_model_is_simulate_image(chd, detector, dipole):
    mu = None if dipole is None else np.asarray(xfit.dipole_vector(dipole, chd.positions))
    truth = xfit.simulate_image(chd, detector, dipole=mu, n_grid=IMAGE_GRID)
    image = xfit.DetectorImage(3.0 * truth, detector, sigma=1e-3 * truth, dipole=dipole)
    model, params, _ = _model(image, chd)
    np.testing.assert_allclose(model, 3.0 * truth[image.valid], rtol=1e-6)  # the cubic fill-in: measured 1e-7
    assert float(params["scale"]) == pytest.approx(3.0, rel=1e-7)
    if dipole is not None:  # the photoselected image is not the isotropic one
        iso = xfit.simulate_image(chd, detector, n_grid=IMAGE_GRID)
        assert np.max(np.abs(truth - iso) / iso) > 1e-3


def test_grid_interpolation_error(chd, detector):
    """The interpolated model against I(|q|) computed exactly at every pixel."""
    exact = xfit.scattering(chd, detector.q().ravel()).reshape(detector.shape)
    exact = exact * detector.polarization_factor() * detector.solid_angle()
    image = xfit.DetectorImage(exact, detector, sigma=1e-3 * exact)
    model, _, _ = _model(image, chd)
    assert np.max(np.abs(model - exact.ravel()) / exact.ravel()) < 3e-5  # measured 1.5e-5 (CHD, q <= 9 1/A)


def test_pixel_chi2_gradient(chd, detector):
    rng = np.random.default_rng(0)
    mu = np.asarray(xfit.dipole_vector(NORMAL, chd.positions))
    truth = xfit.simulate_image(chd, detector, dipole=mu)
    image = xfit.DetectorImage(
        truth * (1 + 1e-3 * rng.standard_normal(truth.shape)), detector, 1e-3 * truth, dipole=NORMAL
    )
    like = build_image_likelihood([image], chd.numbers, background=True, dipole=NORMAL)
    x = jnp.asarray(chd.positions + 0.05 * rng.standard_normal(chd.positions.shape))[None]
    chi2 = jax.jit(lambda v: like.chi2(v)[0])
    grad = np.asarray(jax.grad(chi2)(x))[0]
    step, fd = 1e-6, np.zeros(6)
    for k, (a, c) in enumerate([(0, 0), (0, 2), (3, 1), (5, 0), (9, 2), (13, 1)]):
        e = np.zeros(x.shape)
        e[0, a, c] = step
        fd[k] = (float(chi2(x + e)) - float(chi2(x - e))) / (2 * step)
        assert grad[a, c] == pytest.approx(fd[k], rel=1e-5, abs=1e-6 * np.max(np.abs(grad)))


def test_invalid_pixels_masked_counted_not_fitted(chd, detector):
    truth = xfit.simulate_image(chd, detector, photons=1e7, key=jax.random.key(1))
    bad = truth.copy()
    bad[3, 4], bad[10, 11], bad[20, 5] = np.nan, -5.0, np.inf
    mask = np.zeros(detector.shape, bool)
    mask[:2] = True  # pyFAI's convention: True = excluded
    image = xfit.DetectorImage(bad, detector, mask=mask)
    assert image.n_invalid == 3 and image.n_masked == 80
    assert image.n_valid == truth.size - 83
    assert not image.valid[3, 4] and not image.valid[0, 0]
    clean = xfit.DetectorImage(truth, detector, mask=mask | ~np.isfinite(bad) | (bad < 0))
    m_bad, p_bad, like_bad = _model(image, chd)
    assert p_bad["scale"] > 0
    m_clean, p_clean, _ = _model(clean, chd)
    assert float(p_bad["scale"]) == pytest.approx(float(p_clean["scale"]), rel=1e-12)
    assert np.all(np.isfinite(m_bad)) and np.all(np.isfinite(np.asarray(like_bad.y)))
    np.testing.assert_allclose(m_bad, m_clean, rtol=1e-12)
    assert like_bad.dof == truth.size - 83 - 1


def test_bad_input(chd, detector):
    with pytest.raises(ValueError, match="does not match its detector"):
        xfit.DetectorImage(np.ones((40, 41)), detector)
    truth = xfit.simulate_image(chd, detector)
    with pytest.raises(ValueError, match="mask shape"):
        xfit.DetectorImage(truth, detector, mask=np.zeros((3, 3), bool))
    image = xfit.DetectorImage(truth, detector, sigma=1e-3 * truth, dipole=("normal", 0, 1, 99))
    with pytest.raises(ValueError, match=r"atom\(s\) \[99\] that do not exist"):
        xfit.retrieve(image, chd, prior=None, n_starts=1, steps=1)
    with pytest.raises(ValueError, match="valid pixel"):
        xfit.DetectorImage(np.full((40, 40), np.nan), detector)
    with pytest.raises(ValueError, match="carries its own dipole"):
        xfit.retrieve(xfit.DetectorImage(truth, detector, 1e-3 * truth), chd, dipole=NORMAL, prior=None)


@pytest.mark.parametrize(("dipole", "gain"), [(None, 0.85), (NORMAL, 0.6)])
def test_round_trip(skeleton, detector, dipole, gain):
    # Photon-counted image (1e10 photons, Poisson sigma assumed) of the distorted CHD ring, one invalid pixel,
    # retrieved from a start 0.02 A per atom away (one start, no restraints, as the anisotropic pattern round trip
    # in test_anisotropic_retrieval.py, whose measured limits these are: from this start the isotropic curve alone
    # reaches 0.019 A, I0 + P2 0.011 A).
    ref, truth = skeleton
    start = truth.copy()
    start.positions += 0.02 * np.random.default_rng(2).standard_normal((6, 3))
    mu = None if dipole is None else np.asarray(xfit.dipole_vector(dipole, truth.positions))
    counts = xfit.simulate_image(truth, detector, dipole=mu, photons=1e10, key=jax.random.key(2))
    counts[5, 5] = np.nan
    image = xfit.DetectorImage(counts, detector, dipole=dipole)
    options = {"n_starts": 1, "steps": 400, "learning_rate": 0.005, "restraints": None, "prior": None}
    result = xfit.retrieve(image, start, reference=ref, dtype=jnp.float64, **options)
    assert result.info["n_invalid"] == 1 and result.info["n_pixels"] == counts.size - 1
    assert result.image is image
    assert result.pattern.q.shape == result.model.q.shape
    before, after = xfit.rmsd(start, truth), xfit.rmsd(result.atoms, truth)
    print(f"dipole {dipole}: RMSD start {before:.4f} A, retrieved {after:.4f} A, chi2_r {result.chi2_reduced:.3f}")
    assert after < gain * before
    assert result.chi2_reduced < 1.5


def test_batch_of_images_and_plot(skeleton, detector, tmp_path):
    # Two images with different invalid pixels (padded to one length), each retrieved by its own row and plotted.
    ref, truth = skeleton
    counts = xfit.simulate_image(truth, detector, photons=1e9, key=jax.random.key(3))
    second = counts.copy()
    second[7, 7], second[8, 8] = np.nan, -1.0
    images = [xfit.DetectorImage(counts, detector), xfit.DetectorImage(second, detector)]
    options = {"n_starts": 1, "steps": 20, "restraints": None, "prior": None}
    results = xfit.retrieve(images, ref, dtype=jnp.float64, **options)
    assert [r.info["n_invalid"] for r in results] == [0, 2]
    assert [r.info["n_pixels"] for r in results] == [counts.size, counts.size - 2]
    assert all(r.image is im for r, im in zip(results, images, strict=True))
    assert results[1].model.q.shape == results[1].pattern.q.shape
    results[1].plot(tmp_path / "fit.png")
    assert (tmp_path / "fit.png").stat().st_size > 0


def test_posterior_of_an_image(chd, detector):
    # The posterior's Laplace stage on ~1,600 pixel residuals: its Jacobian is taken in forward mode (one pass per
    # coordinate), not one backward pass per pixel (which ran out of memory on a 96 x 96 image).
    truth = ase.io.read(DATA / "chd_traj001_t12_true.xyz")  # C1-C6 stretched to 2.33 A
    counts = xfit.simulate_image(truth, detector, photons=1e10, key=jax.random.key(4))
    strategy = xfit.Posterior(xfit.load_conformer_prior("conformer"), n_prior=8, n_local=4, steps=250, draws=4)
    result = xfit.retrieve(xfit.DetectorImage(counts, detector), chd, strategy=strategy)
    assert result.info["method"] == "posterior"
    assert result.samples.shape[1:] == (len(chd), 3) and np.all(np.isfinite(result.samples))
    assert result.chi2_reduced < 3  # from the ground-state start (chi2_r > 70 after 60 steps); default sampler: 0.99
    assert 0 < result.uncertainty.distance(0, 5) < 0.5


def test_tempered_image_likelihood_weighs_each_pixel_by_its_own_q(chd, detector):
    # Likelihood.tempered multiplies each data point's weight by exp(-(q b)^2): for an image, q is the pixel's |q|.
    counts = xfit.simulate_image(chd, detector, photons=1e9, key=jax.random.key(1))
    image = xfit.DetectorImage(counts, detector)
    with jax.enable_x64(True):
        like = build_image_likelihood([image], chd.numbers, background=False, dipole=None)
        q_pixels = image.pixel_factors()["q"]
        np.testing.assert_allclose(np.asarray(like.point_q())[0, : len(q_pixels)], q_pixels, rtol=1e-12)
        tempered = like.tempered(0.2)
        expected = np.asarray(like.w) * np.exp(-((np.asarray(like.point_q()) * 0.2) ** 2))
        np.testing.assert_allclose(np.asarray(tempered.w), expected, rtol=1e-12)


def test_image_grid_that_the_stride_does_not_divide_is_an_error(chd, detector):
    truth = xfit.simulate_image(chd, detector)
    image = xfit.DetectorImage(truth, detector, sigma=1e-3 * truth)
    with pytest.raises(ValueError, match="n_grid must be 1 \\+ a multiple of 4"):
        build_image_likelihood([image], chd.numbers, background=False, dipole=None, n_grid=2048)


def test_images_with_other_invalid_pixels_or_distance_reuse_the_compiled_retrieval(chd, detector):
    # An image's pixels are padded to what its mask leaves, not to its valid pixels, and its model grid's q values
    # are run-time arrays: a series of images with different counts of NaN or negative pixels, or a detector moved
    # to another distance, runs the program compiled for the first image (~20 s each on a 2-core CPU before).
    from xfit.infer._refinement import refine

    truth = chd.copy()
    truth.positions += 0.02 * np.random.default_rng(5).standard_normal(truth.positions.shape)
    options = {"n_starts": 2, "steps": 200, "seed": 0, "prior": None}

    def image(det, n_bad, seed):
        counts = np.array(xfit.simulate_image(truth, det, photons=1e10, key=jax.random.key(seed)))
        bad = np.random.default_rng(seed).choice(counts.size, n_bad, replace=False)
        counts.flat[bad[::2]], counts.flat[bad[1::2]] = np.nan, -3.0
        return xfit.DetectorImage(counts, det)

    first = xfit.retrieve(image(detector, 0, 0), chd, **options)
    compiled = refine._cache_size()
    farther = xfit.Detector.from_beam_center(distance_m=0.055, pixel_m=2.4e-3, shape=(40, 40), energy_kev=20.0)
    assert farther.check_q_range() < detector.check_q_range() - 0.3  # a grid of other q values, same length
    others = [(detector, 5, 1), (detector, 12, 2), (farther, 3, 3)]
    results = [first] + [xfit.retrieve(image(d, n, s), chd, **options) for d, n, s in others]
    assert refine._cache_size() == compiled
    assert [r.info["n_invalid"] for r in results] == [0, 5, 12, 3]
    for r in results:  # each fitted on its own q: the farther detector's model on the nearer one's q would not fit
        assert 0.5 < r.chi2_reduced < 1.5  # dof counts the valid pixels, not the padding
        assert xfit.rmsd(r.atoms, truth, heavy_only=True) < xfit.rmsd(chd, truth, heavy_only=True)
        assert np.all(np.isfinite(r.model.values))


def test_load_images_reads_each_format_with_geometry_mask_and_sigma(chd, detector, tmp_path):
    import h5py

    fabio = pytest.importorskip("fabio")  # pyFAI's reader, in the test extra
    counts = np.asarray(xfit.simulate_image(chd, detector, photons=1e8, key=jax.random.key(0)))
    stack = np.stack([counts, 2 * counts])
    poni = detector.to_poni(tmp_path / "geometry.poni")
    np.save(tmp_path / "stack.npy", stack)
    images = xfit.load_images(tmp_path / "stack.npy", poni)
    assert len(images) == 2 and images[1].metadata == {"source": str(tmp_path / "stack.npy"), "frame": 1}
    np.testing.assert_array_equal(images[1].data, 2 * counts)
    np.testing.assert_allclose(images[0].detector.q(), detector.q(), rtol=1e-12)
    assert not images[0].pixel_sigma()[1]  # photon counts: Poisson, assumed

    beamstop = np.zeros(detector.shape, bool)
    beamstop[:3] = True
    np.savez(tmp_path / "one.npz", image=counts, sigma=0.01 * counts + 1, mask=beamstop)
    (image,) = xfit.load_images(tmp_path / "one.npz", detector)
    assert image.n_masked == 120 and image.pixel_sigma()[1]
    np.testing.assert_allclose(image.sigma, 0.01 * counts + 1)

    # NeXus layout, unsigned counts with the type's largest value on a gap pixel, the geometry named beside the
    # file, and a mask file or-ed with none in the file.
    raw = stack.astype(np.uint32)
    raw[:, 5, 6] = np.iinfo(np.uint32).max
    with h5py.File(tmp_path / "frames.nxs", "w") as f:
        f["entry/data/data"] = raw
        f.attrs["poni"] = "geometry.poni"
    column = np.zeros(detector.shape, np.uint8)
    column[:, 0] = 1
    np.save(tmp_path / "column.npy", column)
    images = xfit.load_images(tmp_path / "frames.nxs", mask=tmp_path / "column.npy")
    assert [(im.n_invalid, im.n_masked) for im in images] == [(1, 40), (1, 40)]
    assert not images[0].valid[5, 6] and images[0].data[7, 7] == raw[0, 7, 7]

    np.savetxt(tmp_path / "one.txt", counts)
    np.testing.assert_allclose(xfit.load_images(tmp_path / "one.txt", detector)[0].data, counts, rtol=1e-12)
    fabio.edfimage.EdfImage(data=counts.astype(np.float32)).write(str(tmp_path / "one.edf"))
    np.testing.assert_allclose(xfit.load_images(tmp_path / "one.edf", detector)[0].data, counts, rtol=1e-6)


def test_load_images_errors_name_the_file_and_the_problem(chd, detector, tmp_path):
    counts = np.asarray(xfit.simulate_image(chd, detector))
    np.savez(tmp_path / "two.npz", a=counts, b=counts)
    with pytest.raises(ValueError, match=r"several image-shaped arrays \(a, b\); name one"):
        xfit.load_images(tmp_path / "two.npz", detector)
    with pytest.raises(ValueError, match="has no array 'c'; it holds a, b"):
        xfit.load_images(tmp_path / "two.npz", detector, dataset="c")
    assert xfit.load_images(tmp_path / "two.npz", detector, dataset="b")[0].shape == (40, 40)
    np.save(tmp_path / "one.npy", counts)
    small = xfit.Detector.from_beam_center(distance_m=0.05, pixel_m=3.2e-3, shape=(30, 30), energy_kev=20.0)
    with pytest.raises(ValueError, match=r"one\.npy: its images are 40 x 40 pixels but the detector is 30 x 30"):
        xfit.load_images(tmp_path / "one.npy", small)
    with pytest.raises(ValueError, match=r"mask is \(3, 3\), not the images' \(40, 40\)"):
        xfit.load_images(tmp_path / "one.npy", detector, mask=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no detector geometry"):
        xfit.load_images(tmp_path / "one.npy")
    np.save(tmp_path / "curve.npy", counts[0])
    with pytest.raises(ValueError, match=r"one image \(n1, n2\) or a stack"):
        xfit.load_images(tmp_path / "curve.npy", detector)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        xfit.load_images(tmp_path / "missing.h5", detector)


@pytest.fixture(scope="module")
def ued():
    # MeV UED: 3 MeV electrons (lambda 0.0036 A), 40 x 40 pixels of 0.9 mm at 3 m: |q| up to 14.6 1/A
    return xfit.Detector.from_beam_center(distance_m=3.0, pixel_m=0.9e-3, shape=(40, 40), electron_energy_kev=3000.0)


def test_electron_image_is_the_solid_angle_times_the_electron_iam(chd, ued):
    from xfit.physics._elements import electron_wavelength

    assert ued.wavelength_angstrom == pytest.approx(electron_wavelength(3000.0), rel=1e-12)
    assert ued.electron_energy_kev == pytest.approx(3000.0, rel=1e-12)
    image = xfit.simulate_image(chd, ued, probe="electron", electron_model="kirkland")
    exact = xfit.scattering(chd, ued.q().ravel(), probe="electron", energy_kev=3000.0, electron_model="kirkland")
    expected = exact.reshape(ued.shape) * ued.solid_angle()  # no polarisation factor for electrons
    np.testing.assert_allclose(image, expected, rtol=2e-5)  # the 4096-point grid's linear interpolation
    pattern = xfit.radial_average(image, ued, kind="elastic", probe="electron")
    assert pattern.probe == "electron" and pattern.energy_kev == pytest.approx(3000.0)
    inner = pattern.q < 8
    exact_bins = xfit.scattering(chd, pattern.q[inner], probe="electron", energy_kev=3000.0, electron_model="kirkland")
    assert np.max(np.abs(pattern.values[inner] / exact_bins - 1)) < 0.02  # bin averages of a curved I(q)


@pytest.mark.parametrize("model", ["mott-bethe", "kirkland"])
def test_electron_pixel_model_is_simulate_image(chd, ued, model):
    truth = xfit.simulate_image(chd, ued, probe="electron", electron_model=model, n_grid=IMAGE_GRID)
    image = xfit.DetectorImage(truth, ued, sigma=1e-3 * truth, probe="electron")
    assert image.kind == "elastic"
    like = build_image_likelihood([image], chd.numbers, background=False, dipole=None, electron_model=model)
    y, w, i_ref, pixels = like.row(0)
    fit, params = model_and_parameters(like.spec, jnp.asarray(chd.positions), y, w, i_ref, pixels, like.grid)
    np.testing.assert_allclose(np.asarray(fit)[: image.n_valid], truth.ravel(), rtol=1e-6)
    # gamma^2 of 3 MeV electrons goes into the fitted scale (the likelihood computes at gamma = 1)
    from xfit.physics._elements import relativistic_factor

    assert float(params["scale"]) == pytest.approx(relativistic_factor(3000.0) ** 2, rel=1e-6)


def test_electron_image_round_trip_and_bad_input(chd, ued):
    truth = chd.copy()
    truth.positions += 0.02 * np.random.default_rng(5).standard_normal(truth.positions.shape)
    counts = xfit.simulate_image(truth, ued, photons=1e9, key=jax.random.key(0), probe="electron")
    counts[3, 4] = np.nan
    image = xfit.DetectorImage(counts, ued, probe="electron")
    assert "electrons at 3000 keV" in repr(image)
    result = xfit.retrieve(image, chd, prior=None, n_starts=2, steps=200, seed=0)
    assert result.pattern.probe == "electron" and result.info["n_invalid"] == 1
    assert 0.5 < result.chi2_reduced < 1.5
    assert xfit.rmsd(result.atoms, truth, heavy_only=True) < xfit.rmsd(chd, truth, heavy_only=True)
    with pytest.raises(ValueError, match="an electron image measures elastic scattering"):
        xfit.DetectorImage(counts, ued, probe="electron", kind="total")
    with pytest.raises(ValueError, match="unknown probe 'neutron'"):
        xfit.DetectorImage(counts, ued, probe="neutron")
    with pytest.raises(ValueError, match="share kind, probe and dipole"):
        xfit.retrieve([image, xfit.DetectorImage(counts, ued)], chd, prior=None)
    with pytest.raises(ValueError, match="exactly one of energy_kev=, wavelength_angstrom= or electron_energy_kev="):
        xfit.Detector.from_beam_center(distance_m=3.0, pixel_m=1e-3, shape=(4, 4), energy_kev=9, electron_energy_kev=90)
