from __future__ import annotations

import pytest
import torch

from nin_cli.config import load_config
from nin_cli.model import block_stats, build_model

PRESETS = [  # (overrides, image shape, classes, parameters from paper.md)
    (["model=nin_cifar10"], [3, 32, 32], 10, 966_986),
    (["model=nin_cifar10"], [3, 32, 32], 100, 984_356),
    (["model=nin_mnist"], [1, 28, 28], 10, 349_674),
    (["model=nin_svhn"], [3, 32, 32], 10, 1_986_026),
    (["model=nin_imagenet"], [3, 224, 224], 1000, 7_595_176),
]


def _net(overrides, shape, classes):
    cfg = load_config(overrides)
    return build_model(cfg.model, cfg.head, shape, classes), cfg


@pytest.mark.parametrize("overrides, shape, classes, params", PRESETS)
def test_paper_parameter_counts(overrides, shape, classes, params):
    net, _ = _net(overrides, shape, classes)
    assert sum(p.numel() for p in net.parameters()) == params


@pytest.mark.parametrize("overrides, shape", [(p[0], p[1]) for p in PRESETS[::2]] + [(["model=nin_small"], [1, 8, 8])]
                         + [(["head=fc"], [3, 32, 32]), (["head=fc_dropout", "head.hidden=[32]"], [3, 32, 32]),
                            (["model.batch_norm=true", "model.final_relu=false"], [3, 32, 32])])
def test_forward_backward_odd_classes_every_parameter_gets_a_gradient(overrides, shape):
    net, _ = _net(overrides, shape, 7)
    x = torch.randn(2, *shape)
    logits = net(x)
    assert logits.shape == (2, 7)
    logits.logsumexp(1).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_pooling_rounds_up_like_the_paper():
    net, _ = _net([], [3, 32, 32], 10)
    stats = block_stats(net, [3, 32, 32])
    assert [s.output_shape for s in stats[:3]] == [[96, 16, 16], [192, 8, 8], [10, 8, 8]]


def test_flops_match_the_paper_derivation():
    net, _ = _net([], [3, 32, 32], 10)
    flops = sum(s.flops_forward for s in block_stats(net, [3, 32, 32]))
    assert abs(flops / 0.445e9 - 1) < 0.01


def test_micro_depth_changes_every_block():
    net, _ = _net(["model.micro_depth=3"], [3, 32, 32], 10)
    names = [name for name, _ in net.named_layers()]
    assert names.count("conv1") == 1 and len([n for n in names if n.startswith("cccp")]) == 9
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_paper_init_and_per_layer_overrides():
    torch.manual_seed(0)
    net, _ = _net(["+model.init_std_overrides={conv1: 0.001, cccp1: 0.01}"], [3, 32, 32], 100)
    layers = dict(net.named_layers())
    assert abs(layers["conv1"].weight.std().item() - 0.001) < 2e-4
    assert abs(layers["cccp1"].weight.std().item() - 0.01) < 1e-3
    assert abs(layers["conv2"].weight.std().item() - 0.05) < 2e-3
    assert all(m.bias.abs().sum() == 0 for m in layers.values())


def test_final_relu_is_configurable():
    with_relu, _ = _net([], [3, 32, 32], 10)
    without, _ = _net(["model.final_relu=false"], [3, 32, 32], 10)
    last_block = lambda n: list(n.features[-1].body)  # noqa: E731
    assert isinstance(last_block(with_relu)[-1], torch.nn.ReLU)
    assert not any(isinstance(m, torch.nn.ReLU) for m in last_block(without)[-1:])


def test_overfits_one_batch():
    from nin_cli.train import build_optimizer

    torch.manual_seed(0)
    net, cfg = _net(["model=nin_small", "model.dropout=0", "optim=adamw", "optim.lr=3e-3"], [3, 16, 16], 10)
    optimizer = build_optimizer(net, cfg.optim)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    assert (net(x).argmax(1) == y).float().mean().item() >= 0.99


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_cpu_dropout_matches_nn_dropout_in_law(p):
    from nin_cli.model import Dropout

    torch.manual_seed(0)
    x = torch.ones(64, 32, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = Dropout(p)(x)
    kept = out != 0
    assert out.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.005)  # 524k draws: 5 sigma is ~0.0035
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # gradient: the same scaled mask
    assert torch.equal(Dropout(p).eval()(x), x)
    assert not Dropout(1.0)(x).any() and torch.equal(Dropout(0.0)(x), x)
