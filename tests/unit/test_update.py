"""The ES update, shaping, and ES actually optimising a synthetic objective."""

import numpy as np
import pytest
import torch
from torch import nn

import tiny
from hatchery.bench.openes import member_noise, openes_update
from hatchery.es import (
    EsUpdater,
    NoiseKey,
    NonFiniteUpdate,
    PopulationNoise,
    StepRule,
    es_gradient,
    find_targets,
    perturbed,
    shape_fitness,
)


def test_update_equals_explicit_sum_of_member_noise():
    tok = tiny.tokenizer()
    for kind in ("llama", "gpt2"):
        model = tiny.model(kind, len(tok))
        targets = find_targets(model)
        before = [t.logical_weight().clone() for t in targets]
        fitness = np.array([0.7, -0.2, 1.5, 0.1, -0.9, 0.4])
        lr, rank, seed, epoch = 0.01, 2, 5, 3
        EsUpdater(targets, seed, rank).apply(epoch, lr, fitness)
        for t, w0 in zip(targets, before):
            expected = w0 + lr / len(fitness) * sum(
                float(f) * member_noise(t, seed, epoch, i, rank) for i, f in enumerate(fitness))
            torch.testing.assert_close(t.logical_weight(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rule", [StepRule("sgd"), StepRule("sgd", weight_decay=0.1), StepRule("momentum"),
                                  StepRule("adam"), StepRule("sgd", anchor_decay=5.0),
                                  StepRule("adam", anchor_decay=5.0)])
def test_the_reported_norm_is_the_norm_of_the_weight_change(rule):
    model = tiny.model("llama", len(tiny.tokenizer()))
    targets = find_targets(model)
    updater = EsUpdater(targets, 1, 3, rule)
    for epoch in range(2):  # the second step moves from weights away from the start (the anchor pulls)
        before = [t.logical_weight().double().clone() for t in targets]
        norm = updater.apply(epoch, 0.02, [0.5, -1.0, 2.0, 0.3])
        change = sum(float((t.logical_weight().double() - w).pow(2).sum()) for t, w in zip(targets, before)) ** 0.5
        assert norm == pytest.approx(change, rel=1e-4)


def test_momentum_steps_along_the_bias_corrected_average_of_es_gradients():
    targets = find_targets(tiny.model("llama", len(tiny.tokenizer())))
    t, seed, rank, lr = targets[0], 4, 2, 0.01
    fitness = [[0.5, -1.0, 2.0, 0.3], [1.0, 0.2, -0.4, 0.9]]
    g0, g1 = (es_gradient(t, seed, epoch, rank, f) for epoch, f in enumerate(fitness))
    updater = EsUpdater(targets, seed, rank, StepRule("momentum", momentum=0.5))
    w0 = t.logical_weight().clone()
    updater.apply(0, lr, fitness[0])
    w1 = t.logical_weight().clone()
    torch.testing.assert_close(w1 - w0, lr * g0)  # the first step is SGD's
    updater.apply(1, lr, fitness[1])
    # m = 0.5 m + 0.5 g, divided by 1 - 0.5^2: g0 weighs 1/3, g1 2/3
    torch.testing.assert_close(t.logical_weight() - w1, lr * (g0 / 3 + 2 * g1 / 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_anchored_step_equals_its_formula(dtype):
    """W <- W + lr g - lr anchor_decay (W - W0), over three steps, against float64 arithmetic."""
    targets = find_targets(tiny.model("llama", len(tiny.tokenizer())).to(dtype))
    seed, rank, lr, decay = 2, 2, 0.05, 4.0
    # the middle step carries no signal (every pair tied): only the pull moves the weights
    fitness = [[0.5, -1.0, 2.0, 0.3], [0.0, 0.0, 0.0, 0.0], [-0.7, 0.1, 0.6, -1.2]]
    updater = EsUpdater(targets, seed, rank, StepRule("sgd", anchor_decay=decay))
    start = {t.name: updater.master[t.name].double().clone() for t in targets}
    assert all(torch.equal(updater.anchor[n].double(), w) for n, w in start.items())  # the anchor is exact
    expected = dict(start)
    for epoch, f in enumerate(fitness):
        updater.apply(epoch, lr, f)
        for t in targets:
            w = expected[t.name]
            expected[t.name] = w + lr * es_gradient(t, seed, epoch, rank, f).double() - lr * decay * (w - start[t.name])
    for t in targets:
        torch.testing.assert_close(updater.master[t.name].double(), expected[t.name], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(expected[t.name], start[t.name] + sum(  # the pull is there to see
            lr * es_gradient(t, seed, e, rank, f).double() for e, f in enumerate(fitness)), atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])  # the low-rank step and the dense one
def test_anchored_steps_replay_bit_identically_on_a_second_worker_and_from_a_checkpoint(tiny_llama_dir, tmp_path,
                                                                                       optimizer):
    """Two workers that load the start model and replay the same records, and a third that
    resumes from a checkpoint taken halfway, hold the same bytes: the anchor is the start
    model, not the weights the updater was handed at a resume."""
    from hatchery.core.model import load_model
    from reference import replay_twice_and_resume

    def worker() -> EsUpdater:
        return EsUpdater(find_targets(load_model(tiny_llama_dir).model), seed=3, rank=2,
                         rule=StepRule(optimizer, anchor_decay=2.0))

    fitness = [[1.0, -1.0, 0.5, 0.2], [0.3, 0.1, -2.0, 1.0], [-1.0, 1.0, 0.0, 0.4], [0.2, 0.9, -0.3, 0.0]]
    first, second, resumed = replay_twice_and_resume(worker, fitness, tmp_path)
    for a, b, c in zip(first.targets, second.targets, resumed.targets):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.weight, c.weight), a.name


def test_config_bounds_the_anchor_pull_to_the_whole_distance():
    from hatchery.core.config import ConfigError, parse_config

    assert parse_config({"es": {"lr": 0.01, "anchor_decay": 100.0}}).es.anchor_decay == 100.0
    for bad in (-1.0, 101.0):
        with pytest.raises(ConfigError, match="es.anchor_decay: must be >= 0 and at most 1 / lr = 100"):
            parse_config({"es": {"lr": 0.01, "anchor_decay": bad}})


@pytest.mark.parametrize("fitness", [np.zeros(8), np.full(8, 3.0)])
def test_zero_or_constant_rewards_give_zero_update(fitness):
    tok = tiny.tokenizer()
    model = tiny.model("qwen2", len(tok))
    targets = find_targets(model)
    before = [t.weight.clone() for t in targets]
    shaped = shape_fitness(np.tile(fitness[:, None], (1, 3)))
    assert not shaped.any()
    norm = EsUpdater(targets, 0, 1).apply(0, 0.1, shaped)
    assert norm == 0.0
    assert all(torch.equal(t.weight, w) for t, w in zip(targets, before))


def test_bf16_model_accumulates_updates_in_float32():
    tok = tiny.tokenizer()
    model = tiny.model("llama", len(tok)).to(torch.bfloat16)
    targets = find_targets(model)
    updater = EsUpdater(targets, 0, 1)
    start = updater.master[targets[0].name].clone()
    for _ in range(10):  # steps far below bf16 resolution still add up in the master copy
        updater.apply(0, 1e-6, [1.0, -1.0])
    assert not torch.equal(updater.master[targets[0].name], start)
    assert updater.master[targets[0].name].dtype == torch.float32


def test_shaping_methods():
    r = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    z = shape_fitness(r, "centered_zscore")
    assert z[2] > 0 and abs(z.sum()) < 1e-9
    assert shape_fitness(r, "centered_rank").tolist() == [0.0, -0.5, 0.5, 0.0]
    assert shape_fitness(r, "centered").tolist() == [0.0, -0.5, 0.5, 0.0]
    # Centring alone keeps the size of the reward differences; the z-score drops it.
    assert shape_fitness(r / 4, "centered").tolist() == [0.0, -0.125, 0.125, 0.0]
    assert np.allclose(shape_fitness(r / 4, "centered_zscore"), z)
    assert shape_fitness(r, "antithetic_sign").tolist() == [1.0, -1.0, 1.0, -1.0]
    zs = shape_fitness(r, "zscore")
    assert abs(zs.mean()) < 1e-9 and abs(zs.std() - 1) < 1e-9


def test_failed_samples_are_never_zero():
    r = np.array([[1.0, np.nan], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    dropped = shape_fitness(r, failed="drop_pair")
    assert dropped[0] == dropped[1] == 0 and dropped[2] > dropped[3]
    floored = shape_fitness(r, failed="population_min")
    assert floored.tolist() == shape_fitness(np.nan_to_num(r, nan=0.0)).tolist()  # min here is 0
    with pytest.raises(ValueError, match="even population"):
        shape_fitness(np.zeros((3, 2)))


def _synthetic_objective():
    """A linear layer that should map x to y; reward = -squared error, per row."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8, bias=False))
    x = torch.randn(32, 16)
    y = x @ torch.randn(8, 16).t()
    return model, x, y, find_targets(model, exclude_modules=[])


@pytest.mark.parametrize("rule", [StepRule("sgd"), StepRule("momentum"), StepRule("adam")])
def test_eggroll_improves_a_synthetic_objective(rule):
    model, x, y, targets = _synthetic_objective()
    pop, sigma, rank = 16, 0.1, 2
    lr = 0.05 if rule.optimizer == "adam" else 0.3
    updater = EsUpdater(targets, seed=1, rank=rank, rule=rule)

    def loss() -> float:
        return float(((model(x) - y) ** 2).mean())

    start = loss()
    for gen in range(60):
        noise = PopulationNoise(targets, NoiseKey(1, gen, rank), range(pop // 2))
        members = [m for m in range(pop) for _ in range(len(x))]
        with torch.no_grad(), perturbed(targets, noise, members, sigma):
            out = model(x.repeat(pop, 1).unsqueeze(1)).squeeze(1)
        rewards = -((out - y.repeat(pop, 1)) ** 2).mean(dim=1).view(pop, len(x))
        updater.apply(gen, lr, shape_fitness(rewards.numpy()))
    assert loss() < 0.6 * start


def test_openes_baseline_improves_a_synthetic_objective():
    from hatchery.bench.openes import materialised_member

    model, x, y, targets = _synthetic_objective()
    pop, sigma = 16, 0.1
    start = float(((model(x) - y) ** 2).mean())
    for gen in range(60):
        rewards = []
        for m in range(pop):  # one member at a time, weights perturbed in place
            with torch.no_grad(), materialised_member(targets, 2, gen, m, sigma):
                rewards.append(-float(((model(x) - y) ** 2).mean()))
        openes_update(targets, 2, gen, shape_fitness(np.array(rewards)[:, None]), 0.1)
    assert float(((model(x) - y) ** 2).mean()) < 0.6 * start


@pytest.mark.parametrize("shaping", ["centered_zscore", "centered_rank", "zscore", "antithetic_sign"])
def test_any_finite_rewards_shape_to_finite_fitness(shaping):
    """Scale-invariant shapings give rewards near float's limit the fitness of rewards of 1 (issue 24)."""
    unit = np.array([[1.0, 0.0], [0.0, 0.5], [1.0, 1.0], [0.25, 0.0]])
    for scale in (2.0**1000, 1e306, 1.7e308):
        shaped = shape_fitness(unit * scale, shaping)
        assert np.isfinite(shaped).all()
        np.testing.assert_allclose(shaped, shape_fitness(unit, shaping), rtol=1e-12)
    assert shape_fitness(unit * 2.0**1000, shaping).tolist() == shape_fitness(unit, shaping).tolist()  # exactly


def test_an_update_that_would_not_stay_finite_is_refused_and_changes_nothing():
    targets = find_targets(tiny.model("llama", len(tiny.tokenizer())))
    updater = EsUpdater(targets, seed=0, rank=1)
    before = [t.weight.clone() for t in targets]
    for fitness, cause in (([float("nan"), 0.0], "nan"), ([1e300, -1e300], "could reach")):
        with pytest.raises(NonFiniteUpdate, match=cause):
            updater.apply(0, 0.1, fitness)
    assert updater.steps == 0 and all(torch.equal(a, t.weight) for a, t in zip(before, targets))
    updater.apply(0, 0.1, [1.0, -1.0])  # an ordinary step still goes through
    assert updater.steps == 1
