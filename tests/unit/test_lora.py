"""ES in LoRA space: members run their own adapters row by row, as PEFT runs one adapter;
the step equals its formula; replays and resumes hold the same bytes."""

import copy

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

import tiny
from hatchery.es import NoiseKey, NonFiniteUpdate, PopulationNoise, StepRule, find_targets
from hatchery.es.lora import LoraUpdater, lora_gradient
from hatchery.es.noise import low_rank_factors, pair_sign

SEED, RANK, ALPHA, SIGMA = 7, 4, 8.0, 0.3
FITNESS = [[1.0, -1.0, 0.5, 0.2, -0.3, 0.9], [0.3, 0.1, -2.0, 1.0, 0.0, 0.0]]


def _trained(kind: str, rule: StepRule | None = None):
    """A tiny model, its start weights, and an updater two steps along (so B is not zero)."""
    tok = tiny.tokenizer()
    model = tiny.model(kind, len(tok))
    start = copy.deepcopy(model)
    updater = LoraUpdater(find_targets(model), SEED, RANK, ALPHA, rule)
    for epoch, f in enumerate(FITNESS):
        updater.apply(epoch, 0.5, f)
    return tok, model, start, updater


def _member_adapter(updater: LoraUpdater, epoch: int, member: int | None) -> dict[str, dict[str, torch.Tensor]]:
    """Member `member`'s adapter under noise epoch `epoch` (None: the current one), formed explicitly."""
    adapters = {}
    for t in updater.targets:
        a, b = updater.adapter[t.name]["lora_A"], updater.adapter[t.name]["lora_B"]
        if member is not None:
            eps_b, eps_a_t = low_rank_factors(SEED, epoch, member // 2, t.name, t.out_features, t.in_features, RANK)
            # the noise on A in units of A's own scale, 1/sqrt(in)
            a = a + pair_sign(member) * SIGMA / t.in_features ** 0.5 * eps_a_t.t()
            b = b + pair_sign(member) * SIGMA * eps_b
        adapters[t.name] = {"lora_A": a, "lora_B": b}
    return adapters


def _peft_model(start, updater: LoraUpdater, adapter: dict[str, dict[str, torch.Tensor]], kind: str):
    """The start model with `adapter` loaded into a real PEFT LoRA layer per target."""
    names = [t.name.removesuffix(".weight") for t in updater.targets]
    peft = get_peft_model(copy.deepcopy(start), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=names,
                                                           lora_dropout=0.0, fan_in_fan_out=kind == "gpt2"))
    modules = dict(peft.base_model.model.named_modules())
    with torch.no_grad():
        for name, parts in adapter.items():
            layer = modules[name.removesuffix(".weight")]
            layer.lora_A["default"].weight.copy_(parts["lora_A"])
            layer.lora_B["default"].weight.copy_(parts["lora_B"])
    return peft.eval()


def test_the_start_model_is_unchanged_and_b_starts_at_zero():
    tok = tiny.tokenizer()
    model = tiny.model("llama", len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    updater = LoraUpdater(find_targets(model), SEED, RANK, ALPHA)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for t in updater.targets:
        a, b = updater.adapter[t.name]["lora_A"], updater.adapter[t.name]["lora_B"]
        assert not b.any() and a.abs().max() <= 1 / t.in_features ** 0.5 and a.std() > 0
    again = LoraUpdater(find_targets(tiny.model("llama", len(tok))), SEED, RANK, ALPHA)
    assert all(torch.equal(updater.adapter[n]["lora_A"], again.adapter[n]["lora_A"]) for n in updater.adapter)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("members", [[0, 1, 2, 3, 4, 5], [5, None, 0, 3], [2, 3, 2, 3, 0, 1, 0, 1]],
                         ids=["grouped", "any order", "two rows per member"])
def test_rows_run_their_members_adapters_as_peft_runs_one(kind, members):
    tok, model, start, updater = _trained(kind)
    epoch = 2
    noise = PopulationNoise(updater.targets, NoiseKey(SEED, epoch, RANK), [0, 1, 2])
    ids = tok(["What is 3 + 4?"] * len(members), return_tensors="pt").input_ids
    with torch.no_grad(), updater.perturbed(noise, members, SIGMA):
        mixed = model(ids).logits
    for row, member in enumerate(members):
        with torch.no_grad():
            expected = _peft_model(start, updater, _member_adapter(updater, epoch, member), kind)(ids[row:row + 1])
        torch.testing.assert_close(mixed[row], expected.logits[0], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert (mixed[0] - model(ids[:1]).logits[0]).abs().max() > 1e-3, "the member's noise must change the logits"


def test_generate_with_the_kv_cache_runs_each_row_as_its_members_adapter():
    tok, model, start, updater = _trained("llama")
    members = [1, 0, 4, None]
    noise = PopulationNoise(updater.targets, NoiseKey(SEED, 0, RANK), [0, 2])
    enc = tok(["What is 9 - 2?"] * len(members), return_tensors="pt")
    with torch.no_grad(), updater.perturbed(noise, members, SIGMA):
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)
        cache = model(enc.input_ids[:, :-1], use_cache=True).past_key_values
        step = model(enc.input_ids[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]
    for row, member in enumerate(members):
        peft = _peft_model(start, updater, _member_adapter(updater, 0, member), "llama")
        with torch.no_grad():
            alone = peft.generate(**{k: v[row:row + 1] for k, v in enc.items()}, max_new_tokens=6, do_sample=False,
                                  pad_token_id=0)
            expected = peft(enc.input_ids[row:row + 1]).logits[0, -1]
        assert torch.equal(out[row], alone[0]), f"row {row} (member {member})"
        torch.testing.assert_close(step[row], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rule", [StepRule("sgd"), StepRule("sgd", weight_decay=0.2)])
def test_the_step_equals_its_formula(rule):
    tok = tiny.tokenizer()
    model = tiny.model("gpt2", len(tok))
    start = {t.name: t.logical_weight().clone() for t in find_targets(model)}
    updater = LoraUpdater(find_targets(model), SEED, RANK, ALPHA, rule)
    adapter = {n: {p: m.clone().double() for p, m in parts.items()} for n, parts in updater.adapter.items()}
    lr = 0.5
    for epoch, f in enumerate(FITNESS):
        norm = updater.apply(epoch, lr, f)
        change_sq = 0.0
        for t in updater.targets:
            step = {"lora_A": torch.zeros(RANK, t.in_features, dtype=torch.float64),
                    "lora_B": torch.zeros(t.out_features, RANK, dtype=torch.float64)}
            for member, fit in enumerate(f):  # (1/N) sum_i f_i eps_i, member by member
                eps_b, eps_a_t = low_rank_factors(SEED, epoch, member // 2, t.name, t.out_features,
                                                  t.in_features, RANK)
                step["lora_A"] += pair_sign(member) * fit / len(f) * eps_a_t.t().double()
                step["lora_B"] += pair_sign(member) * fit / len(f) * eps_b.double()
            parts = adapter[t.name]
            before = parts["lora_B"] @ parts["lora_A"]
            step["lora_A"] /= t.in_features ** 0.5  # A moves in units of its own scale
            for p in parts:
                parts[p] = parts[p] + lr * step[p] - lr * rule.weight_decay * parts[p]
                torch.testing.assert_close(updater.adapter[t.name][p].double(), parts[p], atol=1e-6, rtol=1e-6)
            product = parts["lora_B"] @ parts["lora_A"]
            change_sq += float(((product - before) * ALPHA / RANK).pow(2).sum())
            torch.testing.assert_close(t.logical_weight().double(), start[t.name].double() + ALPHA / RANK * product,
                                       atol=1e-6, rtol=1e-6)
        assert norm == pytest.approx(change_sq ** 0.5, rel=1e-5)


def test_tied_fitness_moves_nothing_and_a_step_that_would_not_stay_finite_is_refused():
    tok, model, start, updater = _trained("llama")
    target = updater.targets[0]
    assert lora_gradient(target, SEED, 0, RANK, [0.4, 0.4, -1.0, -1.0]) is None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert updater.apply(3, 0.5, [0.4, 0.4, -1.0, -1.0]) == 0.0
    with pytest.raises(NonFiniteUpdate, match="finite"):
        updater.apply(4, 0.5, [1e300, -1e300, 0.0, 0.0])
    with pytest.raises(NonFiniteUpdate, match="nan"):
        updater.apply(4, 0.5, [float("nan"), 0.0, 0.0, 0.0])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_replays_and_a_resume_from_a_checkpoint_hold_the_same_bytes(tiny_llama_dir, tmp_path, optimizer):
    """Two workers that load the start model and replay the same records, and a third that
    resumes from a checkpoint taken halfway, hold the same adapter and weights."""
    from hatchery.core.model import load_model
    from reference import replay_twice_and_resume

    def worker() -> LoraUpdater:
        return LoraUpdater(find_targets(load_model(tiny_llama_dir).model), SEED, RANK, ALPHA, StepRule(optimizer))

    fitness = FITNESS + [[-1.0, 1.0, 0.0, 0.4, 0.2, 0.1], [0.2, 0.9, -0.3, 0.0, 1.0, -1.0]]
    first, second, resumed = replay_twice_and_resume(worker, fitness, tmp_path)
    for a, b, c in zip(first.targets, second.targets, resumed.targets):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.weight, c.weight), a.name
    assert all(torch.equal(first.state_dict()[k], resumed.state_dict()[k]) for k in first.state_dict())


def test_a_weights_space_checkpoint_is_refused_naming_the_space():
    tok, model, start, updater = _trained("llama")
    state = {f"master/{t.name}": t.logical_weight().clone() for t in updater.targets}
    with pytest.raises(ValueError, match="weights-space"):
        updater.load_state_dict(state, 2)


def test_an_anchored_step_is_refused_in_lora_space():
    tok = tiny.tokenizer()
    with pytest.raises(ValueError, match="anchor_decay"):
        LoraUpdater(find_targets(tiny.model("llama", len(tok))), SEED, RANK, ALPHA, StepRule(anchor_decay=1.0))


def test_bf16_weights_hold_the_start_plus_the_adapter_rounded_once():
    tok = tiny.tokenizer()
    model = tiny.model("llama", len(tok)).to(torch.bfloat16)
    start = {t.name: t.logical_weight().clone() for t in find_targets(model)}
    updater = LoraUpdater(find_targets(model), SEED, RANK, ALPHA)
    for epoch, f in enumerate(FITNESS):
        updater.apply(epoch, 0.5, f)
    for t in updater.targets:
        parts = updater.adapter[t.name]
        expected = (start[t.name].float() + ALPHA / RANK * parts["lora_B"] @ parts["lora_A"]).to(torch.bfloat16)
        assert torch.equal(t.logical_weight(), expected), t.name
    assert np.isfinite([float(p.abs().max()) for parts in updater.adapter.values() for p in parts.values()]).all()


def test_the_config_names_what_is_wrong_with_a_lora_space(tmp_path):
    from hatchery.core.config import ConfigError, parse_config

    lora = parse_config({"es": {"space": "lora"}}).es
    assert (lora.lora_rank, lora.sigma, lora.lr) == (8, 0.05, 0.05)  # lora space's own step defaults
    assert parse_config({"es": {"space": "lora", "sigma": 0.02}}).es.sigma == 0.02
    assert parse_config({}).es.sigma == 0.012
    for es, named in [({"space": "adapter"}, "es.space"), ({"space": "lora", "lora_rank": 0}, "es.lora_rank"),
                      ({"space": "lora", "lora_alpha": 0}, "es.lora_alpha"),
                      ({"space": "lora", "anchor_decay": 1.0}, "es.anchor_decay")]:
        with pytest.raises(ConfigError, match=named):
            parse_config({"es": es})
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="model.adapter: must be a LoRA adapter to train it in lora space"):
        parse_config({"es": {"space": "lora"}, "model": {"adapter": str(adapter)}})


def test_a_worker_refuses_a_space_it_does_not_know_and_reads_none_as_weights():
    from hatchery.core.config import parse_config
    from hatchery.es import EsUpdater
    from hatchery.service.settings import es_settings, make_updater

    targets = find_targets(tiny.model("llama", len(tiny.tokenizer())))
    settings = es_settings(parse_config({"es": {"space": "lora", "lora_rank": 4}}))
    assert isinstance(make_updater(targets, settings), LoraUpdater) and make_updater(targets, settings).rank == 4
    settings.space = ""  # an older optimizer's settings
    assert isinstance(make_updater(targets, settings), EsUpdater)
    settings.space = "ortho"
    with pytest.raises(ValueError, match="'ortho' is not one this version knows"):
        make_updater(targets, settings)
