from __future__ import annotations

import pytest
import torch

from nin_cli.model import block_stats, build_model
from nin_cli.overrides import load_config

PRESETS = [  # (overrides, image shape, classes, parameters from paper.md)
    (["model=nin_cifar10"], [3, 32, 32], 10, 966_986),
    (["model=nin_cifar10"], [3, 32, 32], 100, 984_356),
    (["model=nin_mnist"], [1, 28, 28], 10, 349_674),
    (["model=nin_svhn"], [3, 32, 32], 10, 1_986_026),
    (["model=nin_imagenet", "dataset.image_shape=[3,224,224]"], [3, 224, 224], 1000, 7_595_176),
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
    from nin_cli.schedule import build_optimizer

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


# ------------------------------------------------------------------------------------- the authors' dropout

DROPOUT_NET = ["model=nin_small", "model.dropout=0.5", "dataset=synthetic", "dataset.image_shape=[3,12,12]"]


def dropout_pair(dtype=torch.float64):
    """The same weights as an inverted-dropout and a classic-dropout network (float64: equalities to ~1e-12)."""
    inverted = build_model(load_config(DROPOUT_NET).model, load_config(DROPOUT_NET).head, [3, 12, 12], 10)
    cfg = load_config([*DROPOUT_NET, "model.dropout_style=classic"])
    classic = build_model(cfg.model, cfg.head, [3, 12, 12], 10)
    classic.load_state_dict(inverted.state_dict())
    return inverted.to(dtype), classic.to(dtype)


def after_dropout(net) -> list:
    """The layers right after a dropout: the first conv of every block that follows a block with dropout."""
    return [block.convs[0] for prev, block in zip(net.features, net.features[1:], strict=False)
            if any(type(m).__name__ == "Dropout" for m in prev.body)]


def test_classic_and_inverted_dropout_compute_the_same_function_at_test_time():
    """Classic dropout with the next layer's weights W/(1 − p) is inverted dropout with W, in eval mode exactly
    (p = 0.5: the scalings are powers of two), and each is the expectation of its own training-time output."""
    torch.manual_seed(0)  # the mean of 4000 masks is within 0.05 of the expectation only at ~3 sigma: ~0.7 % of
    # unseeded runs would fail on one of the 64 values
    inverted, classic = dropout_pair()
    assert len(after_dropout(classic)) == 2
    with torch.no_grad():
        for conv in after_dropout(classic):
            conv.weight.mul_(2.0)
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(classic.eval()(x), inverted.eval()(x), rtol=1e-13, atol=1e-15)
    from nin_cli.model import Dropout

    for layer in (Dropout(0.5, classic=True), Dropout(0.5)):
        h = torch.rand(64, dtype=torch.float64)
        mean = torch.stack([layer.train()(h) for _ in range(4000)]).mean(0)
        torch.testing.assert_close(mean, layer.eval()(h), rtol=0, atol=0.05)


def sgd_steps(net, lrs: dict, decays: dict, steps: int = 4) -> None:
    params = list(net.parameters())
    groups = [{"params": [p], "lr": lrs.get(id(p), 0.1), "weight_decay": decays.get(id(p), 1e-4 if p.ndim > 1
                                                                                      else 0.0)} for p in params]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(1)
    torch.manual_seed(0)  # the dropout masks: both forms draw the same ones from the same RNG
    net.train()
    for _ in range(steps):
        x = torch.randn(8, 3, 12, 12, generator=data, dtype=torch.float64)
        y = torch.randint(0, 10, (8,), generator=data)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def test_inverted_dropout_trains_as_classic_with_the_next_layer_at_2x_std_4x_lr_and_quarter_l2():
    """The issue's equivalence, checked in float64 over SGD steps with momentum: inverted dropout with weights W,
    lr η and L2 λ trains exactly as classic (authors') dropout with the next layer at 2W, 4η and λ/4."""
    inverted, classic = dropout_pair()
    start = inverted.features[1].convs[0].weight.detach().clone()
    with torch.no_grad():
        for conv in after_dropout(classic):
            conv.weight.mul_(2.0)
    sgd_steps(inverted, {}, {})
    scaled = {id(conv.weight) for conv in after_dropout(classic)}
    sgd_steps(classic, {i: 0.4 for i in scaled}, {i: 2.5e-5 for i in scaled})
    for (name, a), b in zip(inverted.named_parameters(), classic.parameters(), strict=True):
        expected = b / 2 if id(b) in scaled else b
        torch.testing.assert_close(a, expected, rtol=1e-10, atol=1e-12, msg=name)
    assert (inverted.features[1].convs[0].weight - start).abs().max() > 1e-4  # training moved it: not vacuous


def test_classic_dropout_does_not_rescale_while_training_and_scales_at_test():
    from nin_cli.model import Dropout

    x = torch.ones(10_000, dtype=torch.float64)
    classic, inverted = Dropout(0.3, classic=True), Dropout(0.3)
    torch.manual_seed(0)
    kept_classic = classic.train()(x)
    torch.manual_seed(0)
    kept_inverted = inverted.train()(x)
    assert set(kept_classic.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(kept_inverted, kept_classic / 0.7)  # the same mask from the same RNG
    torch.testing.assert_close(classic.eval()(x), x * 0.7)
    torch.testing.assert_close(inverted.eval()(x), x)
