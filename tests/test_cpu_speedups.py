"""The CPU training tricks keep what they replace: FastCpuDropout is dropout (same expectation, same
gradient rule), and applying it swaps exactly the model's dropout modules."""

import torch
from torch import nn

from mmxattn.training.cpu_speedups import FastCpuDropout as Dropout, apply_cpu_speedups


def test_dropout_keeps_one_minus_p_of_units_scaled_and_is_identity_in_eval():
    torch.manual_seed(0)
    drop = Dropout(0.25)
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005  # 200,000 draws: ±0.005 is > 5 standard deviations
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # the gradient passes exactly through the kept units
    assert torch.equal(drop.eval()(x), x)


def test_dropout_keeps_the_expectation_where_p_is_not_a_multiple_of_its_resolution():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = Dropout(0.1)(x)  # p is rounded to 3277 / 32768; the scale follows the rounded p
    assert abs(y.mean().item() - 1.0) < 0.002  # 10^6 draws: the standard deviation of the mean is 0.0003
    assert abs((y == 0).float().mean().item() - 0.1) < 0.0015
    assert Dropout(0.1)(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_apply_swaps_every_dropout_and_nothing_else():
    from mmxattn.decoder import TransformerDecoder

    decoder = TransformerDecoder(vocab_size=20, d_model=16, num_layers=2, num_heads=2, ffn_dim=32, dropout=0.2)
    state = decoder.state_dict()
    dropouts = sum(type(m) is nn.Dropout for m in decoder.modules())
    assert apply_cpu_speedups(decoder) == dropouts > 0
    assert not any(type(m) is nn.Dropout for m in decoder.modules())
    assert all(m.p == 0.2 for m in decoder.modules() if isinstance(m, Dropout))
    assert decoder.state_dict().keys() == state.keys()
