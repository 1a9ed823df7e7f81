"""Batched generation: a shared-prefix cache per member and the task's early stop
give the completions each member would give alone, on real tiny models."""

import threading

import pytest
import torch

import tiny
from hatchery.bench.openes import materialised_member
from hatchery.core.model import (
    GenerationInterrupted,
    LoadedModel,
    RowGroups,
    _SharedGumbel,
    common_prefix_length,
    format_prompts,
    generate,
)
from hatchery.core.stop_rules import first_integer_settled, stop_rule
from hatchery.es import NoiseKey, PopulationNoise, find_targets, perturbed
from reward_svc.graders import first_integer

SIGMA = 0.05
NEW_TOKENS = 6
# Different lengths after the shared "What is ", so rows are padded between prefix and suffix.
PROMPTS = ["What is 1 + 2?", "What is 17 - 3? Reply with just the final number.", "What is 9 - 9? Reply."]


def _alone(lm: LoadedModel, prompt: str) -> str:
    """Plain Hugging Face generate() of one unpadded row: the reference."""
    text = format_prompts(lm.tokenizer, [prompt], chat_template=True)[0]
    ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    return lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_members_sharing_a_prefix_cache_answer_as_they_would_alone(kind):
    tok = tiny.tokenizer()
    lm = LoadedModel(tiny.model(kind, len(tok)), tok)
    targets = find_targets(lm.model)
    key = NoiseKey(seed=5, epoch=1, rank=2)
    members = [0, 1, 2, 3]
    noise = PopulationNoise(targets, key, [0, 1])

    def as_members(rows_per_member: int):
        return perturbed(targets, noise, [m for m in members for _ in range(rows_per_member)], SIGMA)

    batched = generate(lm, PROMPTS * len(members), NEW_TOKENS, groups=RowGroups(len(PROMPTS), as_members)).texts
    expected = []
    for member in members:
        with materialised_member(targets, key.seed, key.epoch, member, SIGMA, key.rank):
            expected += [_alone(lm, p) for p in PROMPTS]
    assert batched == expected
    assert len(set(batched)) > len(PROMPTS)  # the members did answer differently
    assert generate(lm, PROMPTS, NEW_TOKENS).texts == [_alone(lm, p) for p in PROMPTS]  # unperturbed, one group


def test_shared_sampling_noise_gives_every_group_the_same_draw():
    """With a sampling seed, groups with the same weights sample the same tokens for a
    prompt, a rerun samples them again, and another seed samples others."""
    tok = tiny.tokenizer()
    lm = LoadedModel(tiny.model("llama", len(tok)), tok)

    def sample(seed: int) -> list[str]:
        return generate(lm, PROMPTS * 3, NEW_TOKENS, temperature=1.0, groups=RowGroups(len(PROMPTS)),
                        sampling_seed=seed).texts

    drawn = sample(7)
    assert drawn[:3] == drawn[3:6] == drawn[6:]
    assert sample(7) == drawn
    assert sample(8) != drawn
    assert drawn[:3] != generate(lm, PROMPTS, NEW_TOKENS).texts  # sampled, not greedy


def test_shared_gumbel_noise_samples_the_tempered_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]] * 2)
    temperature, draws = 0.5, 4000
    picks = torch.stack([_SharedGumbel(temperature, seed, 1, 0)(torch.zeros(2, 0), logits).argmax(dim=1)
                         for seed in range(draws)])
    assert torch.equal(picks[:, 0], picks[:, 1])  # two rows of one prompt: one draw
    frequencies = torch.bincount(picks[:, 0], minlength=3) / draws
    assert torch.allclose(frequencies, torch.softmax(logits[0] / temperature, dim=0), atol=0.02)


def test_common_prefix_leaves_every_row_a_token_of_its_own():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert common_prefix_length([[7, 8], [7, 8]]) == 1
    assert common_prefix_length([[1, 2], [3, 2]]) == 0


def test_first_integer_stop_keeps_every_grade_and_saves_tokens():
    tok = tiny.tokenizer()
    lm = LoadedModel(tiny.model("llama", len(tok)), tok)
    with torch.no_grad():  # tied embeddings: larger digit rows make the random model write digits
        digits = [i for t, i in tok.get_vocab().items() if any(c.isdigit() for c in t)]
        lm.model.get_input_embeddings().weight[digits] *= 1.5
    prompts = [f"What is {a} + {b}?" for a in range(4) for b in range(4)]
    full = generate(lm, prompts, NEW_TOKENS)
    stopped = generate(lm, prompts, NEW_TOKENS, settled=stop_rule("first_integer"))
    for whole, short in zip(full.texts, stopped.texts):
        assert whole.startswith(short)
        assert short == whole or first_integer_settled(short)
        for reference in ("0", "1", "2", "3", "4", "5", "6"):
            assert first_integer("", short, reference, {}) == first_integer("", whole, reference, {})
    assert stopped.new_tokens < full.new_tokens  # some rows did stop early


def test_bad_stop_rule_and_groups_are_refused():
    tok = tiny.tokenizer()
    lm = LoadedModel(tiny.model("llama", len(tok)), tok)
    with pytest.raises(ValueError, match="unknown stop rule 'first_word'"):
        stop_rule("first_word")
    with pytest.raises(ValueError, match="3 prompts do not split into groups of 2 rows"):
        generate(lm, PROMPTS, NEW_TOKENS, groups=RowGroups(2))
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty once tokenized"):  # found by the RPC fuzzer
        generate(lm, ["a", ""], NEW_TOKENS, chat_template=False)


def test_an_interrupt_ends_generation_at_the_next_token_and_raises():
    tok = tiny.tokenizer()
    lm = LoadedModel(tiny.model("llama", len(tok)), tok)
    interrupt, forwards = threading.Event(), []

    def count_and_interrupt_at_the_third(*_):
        forwards.append(1)
        if len(forwards) == 3 and arm:
            interrupt.set()

    hook = lm.model.register_forward_hook(count_and_interrupt_at_the_third)
    try:
        arm = False
        generate(lm, PROMPTS, 30, interrupt=interrupt)
        whole = len(forwards)
        forwards.clear()
        arm = True
        with pytest.raises(GenerationInterrupted, match="stopped after 3 forward passes"):
            generate(lm, PROMPTS, 30, interrupt=interrupt)
    finally:
        hook.remove()
    assert whole > 20  # unset, the rows run on (the tiny model's rows end by length, not EOS)
    assert len(forwards) == 3  # the shared prefix, the rows' prompts, one decode step: then it stopped
