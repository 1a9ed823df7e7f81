"""Tiny models built from configs and a byte-level BPE tokenizer trained in code.

Real transformers models and a real tokenizer, small enough for 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_CORPUS = [f"What is {a} {op} {b}? Reply with just the final number, nothing else. The answer is {a + b}."
           for a in range(10) for b in range(10) for op in "+-"]


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def config(kind: str, vocab_size: int, width: int = 1):
    """width scales Llama's hidden and intermediate sizes: width 2 has 4x the block parameters."""
    common = dict(vocab_size=vocab_size, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    if kind == "llama":
        return LlamaConfig(hidden_size=32 * width, intermediate_size=64 * width, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=True, **common)
    if kind == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, **common)
    if kind == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    raise ValueError(kind)


def model(kind: str, vocab_size: int, seed: int = 0, width: int = 1):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config(kind, vocab_size, width), dtype=torch.float32)
    with torch.no_grad():  # larger than default init so perturbations visibly change greedy outputs
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return m.eval()


def save(kind: str, folder: Path, seed: int = 0, width: int = 1) -> Path:
    tok = tokenizer()
    m = model(kind, len(tok), seed, width)
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
