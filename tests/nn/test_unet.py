"""The diffusion UNet: shapes at every supported size, time conditioning, gradients, bf16, config round trip."""

import dataclasses
import json

import pytest
import torch

from diffvae.errors import DiffvaeError
from diffvae.nn import unet as unet_module
from diffvae.nn.unet import UNet, UNetConfig, attention, timestep_embedding

SMALL = UNetConfig(channels=16, channel_mult=(1, 2, 2), groups=8)


def perturbed(model: UNet, seed: int = 0) -> UNet:
    """The output conv starts at zero (so every other gradient is zero); give it small random weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.conv_out.weight.copy_(0.1 * torch.randn(model.conv_out.weight.shape, generator=generator))
        model.conv_out.bias.copy_(0.1 * torch.randn(model.conv_out.bias.shape, generator=generator))
    return model


@pytest.mark.parametrize("size", [8, 28, 32, 64, 7, 13])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_output_shape_matches_input_at_every_size(size, channels):
    torch.manual_seed(0)
    model = UNet(SMALL, channels, image_size=size)
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv


def test_out_channels_can_differ_from_in_channels():
    model = UNet(SMALL, 3, out_channels=6, image_size=32)
    assert model(torch.randn(2, 3, 32, 32), torch.tensor([1, 2])).shape == (2, 6, 32, 32)


def test_default_config_at_28_and_7_pixels():
    torch.manual_seed(0)
    for channels, size in [(1, 28), (4, 7)]:
        model = perturbed(UNet(UNetConfig(), channels, image_size=size))
        out = model(torch.randn(2, channels, size, size), torch.tensor([3, 700]))
        assert out.shape == (2, channels, size, size) and torch.isfinite(out).all()


def test_timestep_changes_the_output_and_float_matches_int():
    torch.manual_seed(0)
    model = perturbed(UNet(SMALL, 1, image_size=28)).eval()
    x = torch.randn(1, 1, 28, 28).expand(3, 1, 28, 28)
    with torch.no_grad():
        out = model(x, torch.tensor([5, 500, 5]))
        out_float = model(x, torch.tensor([5.0, 500.0, 5.0]))
    assert torch.allclose(out[0], out[2])
    assert (out[0] - out[1]).abs().max() > 1e-3 * out[0].abs().max()
    assert torch.allclose(out, out_float)


def test_examples_in_a_batch_do_not_interact():
    torch.manual_seed(0)
    model = perturbed(UNet(SMALL, 3, image_size=8)).eval()
    x, t = torch.randn(4, 3, 8, 8), torch.tensor([0, 10, 400, 999])
    with torch.no_grad():
        batched = model(x, t)
        one_by_one = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = perturbed(UNet(SMALL, 1, image_size=28))
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([10, 900]))
    out.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_bf16_autocast_forward_and_backward_track_fp32():
    torch.manual_seed(0)
    model = perturbed(UNet(SMALL, 1, image_size=28))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 900])
    reference = model(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    assert out.dtype == torch.bfloat16
    relative_error = (out.float() - reference).norm() / reference.norm()
    assert relative_error < 0.05
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_channels_last_input_gives_the_same_output():
    torch.manual_seed(0)
    model = perturbed(UNet(SMALL, 3, image_size=16)).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.allclose(model(x, t), model(x.contiguous(memory_format=torch.channels_last), t), atol=1e-5)


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 17, 999])
    for dim in (32, 64):
        expected = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        assert torch.allclose(timestep_embedding(t, dim), expected, atol=1e-5)
    odd = timestep_embedding(t.float(), 7)
    assert odd.shape == (4, 7) and torch.equal(odd[:, 6], torch.zeros(4))


@pytest.mark.parametrize("dense_limit", [256, 0])
def test_attention_matches_the_softmax_formula(monkeypatch, dense_limit):
    monkeypatch.setattr(unet_module, "DENSE_ATTENTION_MAX_POSITIONS", dense_limit)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / 8**0.5
    expected = torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), v)
    assert torch.allclose(attention(q, k, v), expected, atol=1e-10)


def test_same_parameter_count_and_flops_as_the_equivalent_diffusers_unet():
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    config = UNetConfig(channels=32)
    ours = UNet(config, 1, image_size=28)
    theirs = UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=32, attention_head_dim=64,
    )
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    x, t = torch.randn(1, 1, 28, 28), torch.tensor([3])
    counts = []
    for model in (ours, theirs):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x, t)
        counts.append(counter.get_flop_counts()["Global"].get(torch.ops.aten.convolution, 0))
    assert counts[0] == counts[1] > 0


def test_config_round_trips_through_json():
    config = UNetConfig(channels=32, channel_mult=(1, 2, 4), num_res_blocks=2, attention_levels=(1, -1), dropout=0.1)
    restored = UNetConfig(**json.loads(json.dumps(dataclasses.asdict(config))))
    assert restored == config
    assert isinstance(restored.channel_mult, tuple) and isinstance(restored.attention_levels, tuple)
    a, b = UNet(config, 3), UNet(restored, 3)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_attention_levels_select_where_attention_is():
    config = UNetConfig(channels=16, groups=8, channel_mult=(1, 2, 2), attention_levels=(0, -1))
    assert [config.attends_at(level) for level in range(3)] == [True, False, True]
    count = sum(isinstance(m, unet_module.Attention) for m in UNet(config, 1).modules())
    # down: 1 per attended level; up: 2 per attended level (num_res_blocks + 1); middle: 1
    assert count == 2 * 1 + 2 * 2 + 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": 20, "groups": 8},
        {"attention_levels": (3,)},
        {"channel_mult": ()},
        {"num_res_blocks": 0},
        {"dropout": 1.0},
    ],
)
def test_bad_config_raises_diffvae_error(kwargs):
    with pytest.raises(DiffvaeError):
        UNetConfig(**kwargs)


def test_bad_input_raises_diffvae_error():
    model = UNet(SMALL, 3, image_size=8)
    with pytest.raises(DiffvaeError, match="shape"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))
    with pytest.raises(DiffvaeError, match="timestep"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1]))


@pytest.mark.parametrize("kwargs", [dict(channels=8, channel_mult=(1,), groups=8), dict(channels=32, channel_mult=(1, 1), groups=32),
                                    dict(channels=1, channel_mult=(1,), groups=1)])
def test_one_channel_per_group_everywhere_is_refused(kwargs):
    """GroupNorm right after the embedding is added removes it exactly where a group is one channel: a network
    with one channel per group at every level cannot see t or the label (issue 27)."""
    with pytest.raises(DiffvaeError, match="cannot see t or the label"):
        UNetConfig(**kwargs)


def test_a_network_with_one_channel_per_group_at_some_levels_still_sees_t_and_the_label():
    """The default shape (level 0: one channel per group; deeper levels: two) — the embedding reaches the output."""
    torch.manual_seed(0)
    net = perturbed(UNet(UNetConfig(channels=8, channel_mult=(1, 2), groups=8, num_classes=3), 1, image_size=8))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        base = net(x, torch.tensor([3, 3]), torch.tensor([0, 0]))
        other_t = net(x, torch.tensor([40, 40]), torch.tensor([0, 0]))
        other_label = net(x, torch.tensor([3, 3]), torch.tensor([2, 2]))
    scale = base.abs().mean()
    assert (other_t - base).abs().mean() > 1e-3 * scale and (other_label - base).abs().mean() > 1e-3 * scale
