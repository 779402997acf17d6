"""Tests of resvae.nn.keras2018, the replica of the reference study's Keras ResNet-VAE network.

The parameter totals are those printed by the Keras summaries of the study's executed notebooks
(vae-cifar10-depth{0,1,2,3}.nbconvert.ipynb for depths 28, 40, 70, 100): model_1 is the encoder
with the z_mean / z_log_var heads, model_2 the decoder. Full-width networks are built on the meta
device (no memory, no compute); everything else runs on CPU at a tiny width.
"""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resvae.data import SyntheticDataModule
from resvae.models import Keras2018VAE
from resvae.nn.keras2018 import (
    KERAS2018_BLOCKS,
    Keras2018Config,
    Keras2018Net,
    keras_parameter_count,
)
from tests.helpers.models import cpu_trainer

# depth: (total, encoder incl. latent heads, decoder, trainable) from the notebooks' summaries
KERAS_SUMMARIES = {
    28: (26_815_683, 18_507_072, 8_308_611, 26_773_187),
    40: (29_624_003, 19_911_232, 9_712_771, 29_572_291),
    70: (43_762_627, 26_980_544, 16_782_083, 43_681_731),
    100: (57_901_251, 34_049_856, 23_851_395, 57_791_171),
}

TINY = dict(width=2, head_units=16, latent_dim=4)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(seed: int = 0, **kwargs: object) -> Keras2018Net:
    torch.manual_seed(seed)
    return Keras2018Net(Keras2018Config(**{**TINY, **kwargs}))  # type: ignore[arg-type]


def encoder_count(net: Keras2018Net) -> int:
    return sum(keras_parameter_count(m) for m in (net.encoder, net.z_mean, net.z_log_var))


@pytest.mark.parametrize("depth", sorted(KERAS_SUMMARIES))
def test_keras_parameter_totals(depth: int) -> None:
    total, enc, dec, trainable = KERAS_SUMMARIES[depth]
    with torch.device("meta"):
        net = Keras2018Net(Keras2018Config(depth=depth))
    assert net.cfg.blocks == KERAS2018_BLOCKS[depth]
    assert keras_parameter_count(net) == total
    assert encoder_count(net) == enc
    assert keras_parameter_count(net.decoder) == dec
    assert sum(p.numel() for p in net.parameters()) == trainable  # Keras' "Trainable params"


def test_depth28_split_and_layer_counts() -> None:
    with torch.device("meta"):
        net = Keras2018Net()
    assert encoder_count(net) == 18_507_072 and keras_parameter_count(net.decoder) == 8_308_611
    # individual rows of the depth-28 summaries
    assert keras_parameter_count(net.encoder.layer1[0].conv1) == 256  # res2a_branch2a
    assert keras_parameter_count(net.encoder.layer1[0].bn1) == 256  # bn2a_branch2a
    assert keras_parameter_count(net.encoder.fc) == 2_098_176  # enc_conv_9
    assert keras_parameter_count(net.z_mean) == 4_194_560  # dense_1
    assert keras_parameter_count(net.decoder.fc) == 263_168  # enc_conv_10
    assert keras_parameter_count(net.decoder.layer4[0].shortcut[0]) == 2_099_200  # res15a_branch1
    assert keras_parameter_count(net.decoder.out) == 6_147  # x_decoded


def test_buffers_counted_on_meta_as_on_cpu() -> None:
    with torch.device("meta"):
        meta = tiny_net()
    cpu = tiny_net()
    assert all(b.is_meta for b in meta.buffers())
    running = sum(b.numel() for n, b in cpu.named_buffers() if "running_" in n)
    tracked = sum(b.numel() for n, b in cpu.named_buffers() if n.endswith("num_batches_tracked"))
    assert running > 0 and tracked > 0
    n_params = sum(p.numel() for p in cpu.parameters())
    assert keras_parameter_count(cpu) == keras_parameter_count(meta) == n_params + running


def test_shapes_and_output_range() -> None:
    net = tiny_net()
    x = torch.rand(3, 3, 32, 32)
    code = net.encode(x)
    assert net.latent_shape == (4,) and code.shape == (3, 8)
    logits = net.decode(code[:, :4])
    assert logits.shape == (3, 3, 32, 32)
    p = torch.sigmoid(logits)
    assert ((p >= 0) & (p <= 1)).all()
    feats = net.stage_features(x)
    assert [tuple(f.shape) for f in feats] == [(3, 8, 32, 32), (3, 16, 16, 16), (3, 32, 8, 8), (3, 64, 4, 4)]
    # decoder stages run 4 -> 4 -> 8 -> 16 -> 32 px and widen like the encoder's
    h = torch.rand(3, 1, 4, 4)
    sizes = []
    for stage in net.decoder.stages():
        h = stage(h)
        sizes.append(tuple(h.shape[1:]))
    assert sizes == [(8, 4, 4), (16, 8, 8), (32, 16, 16), (64, 32, 32)]


def test_keras_batchnorm_and_init() -> None:
    net = tiny_net()
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 2 * 4 * 4 + 2  # 4 BNs per conv_block, two head BNs
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            fan_sum = m.weight[0].numel() + m.weight[:, 0].numel()  # k*k*(cin + cout)
            assert m.weight.abs().max() <= math.sqrt(6 / fan_sum)  # glorot_uniform bound
            assert (m.bias == 0).all()


def test_conv_block_stride_on_first_1x1() -> None:
    net = tiny_net()
    for enc_stage, dec_stage, stride in zip(net.encoder.stages(), net.decoder.stages(), (1, 2, 2, 2)):
        for block, transpose in ((enc_stage[0], False), (dec_stage[0], True)):
            kind = nn.ConvTranspose2d if transpose else nn.Conv2d
            for conv in (block.conv1, block.shortcut[0]):
                assert type(conv) is kind and conv.kernel_size == (1, 1) and conv.stride == (stride, stride)
            assert type(block.conv2) is nn.Conv2d and block.conv2.stride == (1, 1)
            assert block.conv2.kernel_size == (3, 3) and block.conv3.stride == (1, 1)
    # Keras' stride-2 1x1 Conv2DTranspose: input pixel i lands on output 2i, odd positions get the bias
    up = net.decoder.layer2[0].conv1
    x = torch.randn(2, up.in_channels, 4, 4)
    y = up(x)
    assert y.shape[-2:] == (8, 8)
    torch.testing.assert_close(y[..., ::2, ::2], F.conv2d(x, up.weight.transpose(0, 1), up.bias))
    assert torch.equal(y[..., 1::2, :], up.bias.view(1, -1, 1, 1).expand_as(y[..., 1::2, :]))


def test_l2_penalty_matches_hand_computation() -> None:
    net = tiny_net()
    with torch.no_grad():
        for p in (*net.z_mean.parameters(), *net.z_log_var.parameters()):
            p.uniform_(-1, 1)
    wm, bm, wv, bv = net.z_mean.weight, net.z_mean.bias, net.z_log_var.weight, net.z_log_var.bias
    expected = 0.01 * ((wm**2).sum() + (bm**2).sum()) + 0.1 * ((wv**2).sum() + (bv**2).sum())
    torch.testing.assert_close(net.l2_penalty(), expected)


def test_bad_depth_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"depth 50 is not one of the study's depths 28, 40, 70, 100"):
        Keras2018Config(depth=50)
    assert Keras2018Config(depth=None, blocks=(2, 2, 2, 2)).depth == 52
    with pytest.raises(ValueError, match=r"has depth 52 but depth=28"):
        Keras2018Config(blocks=(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"blocks must be 4 positive integers"):
        Keras2018Config(depth=None, blocks=(1, 0, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError) as err:
        Keras2018Config(width=0, head_units=24, bn_eps=0.0)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 3 and all(s in str(err.value) for s in ("width", "head_units", "bn_eps"))


def keras_loss(net: Keras2018Net, x: torch.Tensor) -> torch.Tensor:
    """The notebook's vae_loss plus the regularisers, with its sampling z = mu + exp(logvar) * eps."""
    mu, logvar = net.encode(x).chunk(2, dim=1)
    z = mu + torch.exp(logvar) * torch.randn_like(mu)
    logits = net.decode(z)
    xent = 3072 * F.binary_cross_entropy_with_logits(logits, x)  # 3072 * mean BCE per image
    kl = (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)).mean()
    return xent + kl + net.l2_penalty()


def test_adam_on_fixed_batch_lowers_keras_loss() -> None:
    net = tiny_net(seed=1)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = keras_loss(net, x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5, losses


# ------------------------------------------------------------------------------ model=keras2018


def tiny_model(**kwargs) -> Keras2018VAE:
    # width 4 / head 32: a 1-channel decoder input (width 2, head 16) trips a CPU kernel bug of torch
    arch = Keras2018Config(width=4, head_units=32, latent_dim=8)
    return Keras2018VAE(arch=arch, optimizer=partial(torch.optim.Adam, lr=1e-3), **kwargs)


def test_keras_loss_is_3072_mean_clipped_bce_plus_kl_plus_l2() -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()  # eval: BatchNorm uses running statistics, the forward is repeatable
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(1)
    terms = model.objective(model.to_input(x))
    torch.manual_seed(1)
    net, x01 = model.net, x.float() / 255
    mu, logvar = net.encode(x01).chunk(2, dim=1)
    logits = net.decode(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
    p = torch.sigmoid(logits).clamp(1e-7, 1 - 1e-7)  # Keras clips probabilities by K.epsilon()
    bce = -(x01 * p.log() + (1 - x01) * (1 - p).log())
    recon = 3072 * bce.flatten(1).mean(1)
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)
    torch.testing.assert_close(terms.recon, recon, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(terms.kl, kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms.loss, recon + kl + net.l2_penalty(), rtol=1e-5, atol=1e-3)
    assert not model.bpd_is_likelihood  # Bernoulli cross-entropy plus L2: not a code length


def test_keras_sampling_switch_uses_exp_logvar_as_the_std() -> None:
    mu, logvar = torch.zeros(2000, 8), torch.full((2000, 8), 0.5)
    plain, quirk = tiny_model().objective, tiny_model(keras_sampling=True).objective
    assert plain.reparameterize(mu, logvar).std().item() == pytest.approx(math.exp(0.25), rel=0.05)
    assert quirk.reparameterize(mu, logvar).std().item() == pytest.approx(math.exp(0.5), rel=0.05)


def test_the_lightning_module_trains_it_and_the_loss_falls(one_thread) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    data = SyntheticDataModule(train_size=80, test_size=8, batch_size=16, val_size=16, flip=False)
    trainer = cpu_trainer(max_epochs=6, limit_val_batches=0, num_sanity_val_steps=0)
    losses = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            losses.append(pl_module.step.means.compute()["loss"].item())

    trainer.callbacks.append(Record())
    trainer.fit(model, datamodule=data)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.95 * losses[0], losses


def test_model_keras2018_composes_and_refuses_switches_that_do_not_apply() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from hydra.utils import instantiate

    from resvae.run.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train", overrides=["model=keras2018", "model.arch.width=4", "model.arch.head_units=32"]
        )
        model = instantiate(cfg.model, _convert_="all")
        assert isinstance(model, Keras2018VAE) and model.arch.network == "keras2018"
        for switch in ("model.arch.preact=false", "model.likelihood=gaussian", "model.beta=2"):
            with pytest.raises(ConfigCompositionException, match=switch.split("=")[0].rsplit(".", 1)[1]):
                compose("train", overrides=["model=keras2018", switch])
        cfg = compose("train", overrides=["model=keras2018", "+model.likelihood=gaussian"])
        with pytest.raises(Exception, match="likelihood"):
            instantiate(cfg.model, _convert_="all")


def test_seed_depth_sweep_runs_the_study_network_with_its_protocol() -> None:
    from hydra import compose, initialize_config_dir

    from resvae.run.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=seed_depth_sweep"], return_hydra_config=True)
    assert cfg.model._target_ == "resvae.models.Keras2018VAE" and cfg.protocol == "keras2018"
    assert (
        cfg.model.arch.width == 64 and cfg.model.arch.latent_dim == 256 and cfg.model.arch.head_units == 1024
    )
    assert cfg.data.batch_size == 25 and cfg.data.val_source == "test" and cfg.data.flip is False
    opt, sched = cfg.model.optimizer, cfg.model.scheduler
    assert opt._target_ == "torch.optim.Adam" and opt.lr == 1e-3 and opt.eps == 1e-7
    assert (
        sched.factor == 0.5
        and sched.patience == 25
        and sched.min_lr == 1e-6
        and sched.threshold_mode == "abs"
    )
    assert sched._target_ == "resvae.models.schedulers.KerasReduceLROnPlateau"  # Keras 2.1's count
    # Keras 2.1's patience 50 (it stopped at the 51st epoch without improvement; Lightning at the 51st)
    assert cfg.callbacks.early_stopping.patience == 51 and cfg.callbacks.early_stopping.min_delta == 0.1
    assert cfg.model.keras_sampling is True and cfg.test_weights == "last"  # its sampling, its weights
    assert cfg.trainer.max_epochs == 1000 and cfg.trainer.precision == "32-true"
    assert cfg.model.train_step.grad_clip is None and cfg.matmul_precision == "highest"
    assert cfg.hydra.sweeper.params["model.arch.depth"] == "28,40,70,100"


def test_a_checkpoint_of_it_loads_back(tmp_path) -> None:
    from resvae.models.loading import load_model

    model = tiny_model()
    trainer = cpu_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=SyntheticDataModule(train_size=32, test_size=8, batch_size=16, val_size=8))
    trainer.save_checkpoint(tmp_path / "k.ckpt")
    loaded = load_model(tmp_path / "k.ckpt")
    assert isinstance(loaded, Keras2018VAE)
    z = torch.randn(3, 8)
    torch.testing.assert_close(loaded.inference.decode(z), model.inference.decode(z))
