"""Per-row low-rank perturbations equal the materialised W + sigma E_i, row by row."""

import pytest
import torch

import tiny
from hatchery.bench.openes import materialised_member
from hatchery.es import NoiseKey, PopulationNoise, find_targets, perturbed
from hatchery.es.perturb import pair_groups

SIGMA = 0.05


def _setup(kind, rank, pairs=3):
    tok = tiny.tokenizer()
    model = tiny.model(kind, len(tok))
    targets = find_targets(model)
    key = NoiseKey(seed=11, epoch=2, rank=rank)
    return tok, model, targets, key, PopulationNoise(targets, key, list(range(pairs)))


LAYOUTS = {
    "any order": [0, 5, None, 1, 2, 3],  # rows gather their own factors; None is unperturbed
    "all pairs grouped": [0, 1, 2, 3, 4, 5],  # each pair's rows contiguous: factors read once per pair
    "some pairs grouped": [4, 5, 4, 5, 0, 1, 1, 0],
}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("rank", [1, 4])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mixed_batch_logits_match_materialised_members(kind, rank, layout):
    tok, model, targets, key, noise = _setup(kind, rank)
    members = LAYOUTS[layout]  # rows of one batch belong to different members
    ids = tok(["What is 3 + 4?"] * len(members), return_tensors="pt").input_ids
    with torch.no_grad(), perturbed(targets, noise, members, SIGMA):
        mixed = model(ids).logits
    for row, member in enumerate(members):
        if member is None:
            with torch.no_grad():
                expected = model(ids[row:row + 1]).logits[0]
        else:
            with torch.no_grad(), materialised_member(targets, key.seed, key.epoch, member, SIGMA, rank):
                expected = model(ids[row:row + 1]).logits[0]
        torch.testing.assert_close(mixed[row], expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        base = model(ids[:1]).logits[0]
    assert (mixed[0] - base).abs().max() > 1e-3, "the perturbation must change the logits"


def test_pair_groups_recognises_only_contiguous_equal_groups():
    assert pair_groups([0, 1, 0, 1, 6, 7, 7, 6]) == ([0, 3], 4)
    assert pair_groups([0, 1, 2]) is None  # pair 1 has one row, pair 0 two
    assert pair_groups([0, 2, 1, 3]) is None  # pair 0's rows are not contiguous
    assert pair_groups([0, None]) is None


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_targets_fed_one_input_share_one_projection(kind):
    """q, k and v see one input, as do gate and up: one B^T x serves them all, so a Llama
    block runs 4 projections for its 7 targets; o_proj, guessed a sibling of q, k and v,
    is split off once it is seen with its own input (as is GPT-2's attention c_proj).
    Every target also runs one batched matmul of its own, (x B) A^T."""
    tok, model, targets, key, noise = _setup(kind, rank=2)
    ids = tok(["What is 3 + 4?"] * 6, return_tensors="pt").input_ids

    def bmm_calls() -> int:
        with torch.no_grad(), torch.profiler.profile() as prof:
            model(ids)
        return sum(e.count for e in prof.key_averages() if e.key == "aten::bmm")

    plain = bmm_calls()
    with perturbed(targets, noise, list(range(6)), SIGMA):
        bmm_calls()  # the first forward finds which targets share an input
        assert bmm_calls() - plain == 4 * model.config.num_hidden_layers + len(targets)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_kv_cache_decoding_matches_materialised_members(kind):
    tok, model, targets, key, noise = _setup(kind, rank=2)
    members = [3, 0, 4]
    ids = tok(["What is 9 - 2?"] * len(members), return_tensors="pt").input_ids
    prefix, last = ids[:, :-1], ids[:, -1:]
    with torch.no_grad(), perturbed(targets, noise, members, SIGMA):
        cache = model(prefix, use_cache=True).past_key_values
        step = model(last, past_key_values=cache, use_cache=True).logits[:, -1]
        full = model(ids).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
    for row, member in enumerate(members):
        with torch.no_grad(), materialised_member(targets, key.seed, key.epoch, member, SIGMA, 2):
            expected = model(ids[row:row + 1]).logits[0, -1]
        torch.testing.assert_close(step[row], expected, atol=1e-4, rtol=1e-4)


def test_generate_rows_follow_their_members():
    tok, model, targets, key, noise = _setup("llama", rank=1)
    prompts = ["What is 1 + 2?", "What is 7 - 3?"]
    members = [0, 0, 1, 1]
    enc = tok(prompts * 2, return_tensors="pt", padding=True)
    with torch.no_grad(), perturbed(targets, noise, members, SIGMA):
        batched = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    for row, member in enumerate(members):
        one = tok([prompts[row % 2]], return_tensors="pt")
        with torch.no_grad(), materialised_member(targets, key.seed, key.epoch, member, SIGMA, 1):
            alone = model.generate(**one, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        assert batched[row, -6:].tolist() == alone[0, -6:].tolist()


def test_targets_skip_tied_embeddings_and_lm_head():
    tok = tiny.tokenizer()
    for kind in ("llama", "gpt2"):
        model = tiny.model(kind, len(tok))
        names = [t.name for t in find_targets(model)]
        assert names and not any("lm_head" in n or "embed" in n or "wte" in n for n in names)
    gpt2_targets = find_targets(tiny.model("gpt2", len(tok)))
    assert all(t.transposed for t in gpt2_targets)  # Conv1D
    with pytest.raises(ValueError, match="nothing to perturb"):
        find_targets(tiny.model("llama", len(tok)), target_modules=["no_such_module"])


def test_row_count_mismatch_is_refused():
    tok, model, targets, key, noise = _setup("llama", rank=1)
    ids = tok(["x"] * 3, return_tensors="pt").input_ids
    with pytest.raises(RuntimeError, match="member map has 2"), perturbed(targets, noise, [0, 1], SIGMA):
        model(ids)


def test_leaving_the_context_restores_every_layer_even_on_error():
    tok, model, targets, key, noise = _setup("llama", rank=1)
    ids = tok(["What is 3 + 4?"] * 2, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(ids).logits
    with pytest.raises(RuntimeError, match="member map has 3"), perturbed(targets, noise, [0, 1, 2], SIGMA):
        model(ids)
    assert all("forward" not in t.module.__dict__ for t in targets)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)


def test_a_layer_whose_forward_is_already_replaced_is_refused_untouched():
    """Another library's forward (accelerate's offloading hooks replace it) would be bypassed
    while perturbed and lost after, so perturbed() refuses and names the layer."""
    tok, model, targets, key, noise = _setup("llama", rank=1)
    wrapped = targets[3].module
    wrapped.forward = other_librarys_forward = wrapped.forward  # an instance attribute, as accelerate sets
    with pytest.raises(RuntimeError, match=targets[3].name.removesuffix(".weight") + ": its forward is already"):
        with perturbed(targets, noise, [0, 1], SIGMA):
            pass
    assert wrapped.forward is other_librarys_forward
    assert all("forward" not in t.module.__dict__ for t in targets if t.module is not wrapped)
    with perturbed(targets[:3], noise, [0, 1], SIGMA), pytest.raises(RuntimeError, match="already replaced"):
        with perturbed(targets[:3], noise, [0, 1], SIGMA):  # nesting would drop the outer perturbation
            pass


def test_bfloat16_weights_run_each_row_as_its_member_with_float32_factors_on_cpu():
    """Low-precision weights on a CPU: the factors and the correction are float32 (small bf16
    matmuls are slow there), the layer's output stays bf16, and each row is its own member
    to bf16's precision, far from any other member."""
    tok = tiny.tokenizer()
    model = tiny.model("llama", len(tok)).to(torch.bfloat16)
    targets = find_targets(model)
    key = NoiseKey(seed=11, epoch=2, rank=4)
    noise = PopulationNoise(targets, key, [0, 1])
    assert noise.dtype == torch.float32
    members = [0, 1, 2, 3]
    ids = tok(["What is 3 + 4?"] * len(members), return_tensors="pt").input_ids
    with torch.no_grad(), perturbed(targets, noise, members, SIGMA):
        mixed = model(ids).logits
    assert mixed.dtype == torch.bfloat16

    def alone(row: int, member: int) -> torch.Tensor:
        with torch.no_grad(), materialised_member(targets, key.seed, key.epoch, member, SIGMA, key.rank):
            return model(ids[row:row + 1]).logits[0].float()

    for row, member in enumerate(members):
        own, other = alone(row, member), alone(row, members[row - 1])
        torch.testing.assert_close(mixed[row].float(), own, atol=0.25, rtol=0)  # logits reach about 4.5
        assert (mixed[row].float() - other).abs().max() > 1.0


def test_factors_live_on_the_models_device_while_noise_is_drawn_on_the_cpu():
    """Checked with the model on the meta device (no data, only where tensors live): the factors
    follow the weights there, and their values are those drawn on the CPU, whatever the device."""
    model = tiny.model("llama", 300, seed=0)
    targets = find_targets(model, [".*"], ["lm_head"])
    on_cpu = PopulationNoise(targets, NoiseKey(0, 0, 2), [0, 1])
    model.to("meta")  # the same modules, their weights now on the meta device
    assert targets[0].weight.device.type == "meta"
    on_meta = PopulationNoise(targets, NoiseKey(0, 0, 2), [0, 1])
    name = targets[0].name
    assert on_meta.a_t[name].device.type == "meta" and on_cpu.a_t[name].device.type == "cpu"
    assert on_meta.a_t[name].shape == on_cpu.a_t[name].shape and on_meta.dtype == on_meta.a_t[name].dtype


def test_a_device_this_machine_lacks_is_refused_naming_what_it_has():
    from hatchery.core.model import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(ValueError, match="--device tpu: expected auto, cpu, cuda or cuda:N"):
        pick_device("tpu")
    with pytest.raises(ValueError, match="only cpu and cuda"):
        pick_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device cuda: this machine has no CUDA device \(torch "):
            pick_device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            pick_device(f"cuda:{torch.cuda.device_count()}")
