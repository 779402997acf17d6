"""resvae-eval's FID (resvae/cli/fid.py): torchmetrics' FrechetInceptionDistance on a small,
fixed feature module (no download), checked against an independent Fréchet distance; the
Inception weights' cache and the one-line error without them; the real Inception network only
where its weights are already cached."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from resvae.cli import evaluate, fid
from resvae.cli.scores import EvaluationError
from tests.helpers.models import SmallFeatures
from tests.helpers.processes import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeModel:
    """A 'model' whose prior samples are skewed uniform noise (or given images), recording them."""

    def __init__(self, images: torch.Tensor | None = None, power: float = 2.0) -> None:
        self.images, self.power, self.drawn = images, power, []
        self.device = torch.device("cpu")

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        assert temperature == 1.0
        if self.images is not None:
            start = sum(x.shape[0] for x in self.drawn)
            out = self.images[start : start + n].float() / 255
        else:
            out = torch.rand((n, 3, 8, 8), generator=generator) ** self.power
        self.drawn.append(out)
        return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with scipy's matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def real_images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def test_fid_matches_an_independent_frechet_distance() -> None:
    real, model, features = real_images(150), FakeModel(), SmallFeatures()
    result = fid.sample_fid(model, real, 120, batch_size=50, seed=3, feature=features)
    assert (result["fid_samples"], result["fid_real_images"]) == (120, 120)  # the first 120 real images
    assert result["fid_feature"] == "SmallFeatures/8"
    samples = torch.cat(model.drawn)
    assert samples.shape == (120, 3, 8, 8) and [x.shape[0] for x in model.drawn] == [50, 50, 20]
    with torch.no_grad():
        a = features(real[:120]).numpy()
        b = features(fid.to_uint8(samples)).numpy()
    expected = frechet_distance(a, b)
    assert expected > 1e-3  # the two sets differ
    assert result["fid"] == pytest.approx(expected, rel=1e-6)
    # the seed picks the samples; the same seed the same number
    again = fid.sample_fid(FakeModel(), real, 120, batch_size=50, seed=3, feature=features)
    other = fid.sample_fid(FakeModel(), real, 120, batch_size=50, seed=4, feature=features)
    assert again == result and other["fid"] != result["fid"]


def test_fid_of_a_set_with_itself_is_near_zero() -> None:
    real = real_images(100)
    result = fid.sample_fid(FakeModel(images=real), real, 100, batch_size=30, feature=SmallFeatures())
    assert abs(result["fid"]) < 1e-6
    assert (result["fid_samples"], result["fid_real_images"]) == (100, 100)
    # more samples than the split holds: all its images, and both counts stated
    more = fid.sample_fid(FakeModel(), real, 160, batch_size=64, feature=SmallFeatures())
    assert (more["fid_samples"], more["fid_real_images"]) == (160, 100)


def test_samples_round_like_a_png_and_bad_inputs_fail() -> None:
    x = torch.tensor([0.0, 0.5 / 255, 0.49, 1.0, 1.2, -0.1])
    assert fid.to_uint8(x).tolist() == [0, 1, 125, 255, 255, 0]
    with pytest.raises(ValueError, match="at least 2 samples and 2 real images"):
        fid.sample_fid(FakeModel(), real_images(1), 10, batch_size=5, feature=SmallFeatures())
    nan_model = FakeModel(images=real_images(10))
    nan_model.sample = lambda n, t, generator=None: torch.full((n, 3, 8, 8), float("nan"))  # type: ignore[method-assign]
    with pytest.raises(EvaluationError, match="prior samples 0..4 are not finite"):
        fid.sample_fid(nan_model, real_images(10), 10, batch_size=5, feature=SmallFeatures())


# ---------------------------------------------------------------------------------- the weights
def test_the_weights_are_cached_under_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    path = fid.inception_weights_path()
    assert path == tmp_path / "th" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert fid.inception_url().endswith("/" + path.name)
    # a cached file is used as it is: nothing is downloaded
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cached")
    monkeypatch.setattr(fid, "download", lambda url, dest: pytest.fail("downloaded a cached file"))
    assert fid.inception_weights() == path
    # a file that is no plain state dict is refused with one line
    with pytest.raises(fid.InceptionWeightsError, match="cannot be read .*delete the file"):
        fid.inception_metric((3, 32, 32))


def offline(url: str, dest: Path) -> None:
    raise urllib.error.URLError(OSError(-2, "Name or service not known"))


def test_offline_without_cached_weights_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(fid, "download", offline)  # no network in tests, whatever the machine has
    path = fid.inception_weights_path()
    with pytest.raises(fid.InceptionWeightsError) as err:
        fid.inception_weights()
    assert f"not cached at {path}; run once with internet, or copy the file there" in str(err.value)
    # resvae-eval stops before evaluating anything: one line, exit 2, nothing written over
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"never read")
    (run / "eval.json").write_text('{"kept": true}')
    assert evaluate.main([str(run), "--fid", "100", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert line.startswith("resvae-eval: error: FID needs the Inception weights (https://")
    assert "Name or service not known" in line and f"(not cached at {path}; run once with internet" in line
    assert captured.out == "" and json.loads((run / "eval.json").read_text()) == {"kept": True}
    assert not path.exists()
    assert evaluate.main([str(run), "--fid", "1", "--device", "cpu"]) == 2
    assert "FID needs at least 2 samples" in one_error_line(capsys.readouterr().err)


def test_inception_path_with_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real code path (the cache file, its safe load, torch-fidelity's network on uint8 images
    resized to 299 x 299) on a weights file of a randomly initialised network, at its 64-d
    features (fast): only the trained weights are missing."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(fid, "download", offline)
    with monkeypatch.context() as m:  # the network, initialised at random instead of downloaded
        m.setattr(tf, "load_state_dict_from_url", lambda *args, **kwargs: {})
        m.setattr(tf.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        torch.manual_seed(0)
        net = tf.FeatureExtractorInceptionV3(fid.INCEPTION_NAME, ["64"])
    path = fid.inception_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    real = real_images(6)
    result = fid.sample_fid(FakeModel(power=4.0), real, 6, batch_size=4, feature=64)
    assert result["fid_feature"] == "inception-v3-compat/64" and result["fid"] > 1e-6
    same = fid.sample_fid(FakeModel(images=real), real, 6, batch_size=4, feature=64)
    assert abs(same["fid"]) < 1e-6 * result["fid"]


def test_the_real_inception_network_where_its_weights_are_cached() -> None:
    path = fid.inception_weights_path()
    if not path.is_file():
        pytest.skip(
            f"the Inception weights are not cached at {path} (tests never download them; "
            "run `resvae-eval RUN --fid N` once with internet)"
        )
    real = real_images(24)
    metric, name = fid.inception_metric((3, 8, 8))
    assert name == f"{fid.INCEPTION_NAME}/2048" and metric.real_features_sum.numel() == 2048
    result = fid.sample_fid(FakeModel(), real, 24, batch_size=12)
    assert result["fid_feature"] == name and result["fid"] > 1.0
    same = fid.sample_fid(FakeModel(images=real), real, 24, batch_size=12)
    assert abs(same["fid"]) < 1e-2 * result["fid"]
