"""Tiny random causal LMs (Llama, GPT-2) with a byte-level BPE tokenizer trained on the test's own text, and
small text corpora in each input format (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the match team player won a goal in the league and the coach said the season was good "
         "a new phone chip runs software on the network and the data code app is online "
         "the minister said the party vote on tax policy in parliament was a debate").split()

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_docs(n: int = 40, seed: int = 0) -> list[str]:
    """Documents of 30-60 words, each a random walk over a fixed bigram-ish order (learnable)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        i = rng.randrange(len(WORDS))
        words = []
        for _ in range(rng.randint(30, 60)):
            words.append(WORDS[i])
            i = (i + (1 if rng.random() < 0.8 else rng.randint(2, 5))) % len(WORDS)
        docs.append(" ".join(words) + ".")
    return docs


def write_text_folder(folder: Path, docs: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (folder / f"{i:03d}.txt").write_text(d)
    return folder


def write_pairs(path: Path, docs: list[str]) -> Path:
    with open(path, "w") as fh:
        for d in docs:
            w = d.split()
            fh.write(json.dumps({"prompt": " ".join(w[:8]), "response": " ".join(w[8:])}) + "\n")
    return path


def tiny_tokenizer(folder: Path, chat_template: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
    trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tiny_docs(60, seed=1), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", model_max_length=128)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return fast


def tiny_llama_folder(folder: Path, *, layers: int = 4, hidden: int = 32, seed: int = 0,
                      chat_template: bool = False) -> Path:
    """A random LlamaForCausalLM (hidden 32, 4 layers, 4 heads, 2 KV heads) with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer(folder, chat_template)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return folder


def tiny_gpt2_folder(folder: Path, *, layers: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=4, n_positions=128,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(str(folder))
    return folder


def teach(folder: Path, docs: list[str], steps: int = 60) -> Path:
    """A few quick CE steps so the tiny teacher is better than random (saved back in place)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    ids = tok(" ".join(docs))["input_ids"]
    x = torch.tensor(ids[: (len(ids) // 32) * 32]).view(-1, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for s in range(steps):
        b = x[torch.randint(0, len(x), (8,), generator=torch.Generator().manual_seed(s))]
        loss = model(input_ids=b, labels=b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(str(folder))
    return folder


def lm_pipeline(root: Path, section: dict | None = None, **top) -> Path:
    """A causal-lm pipeline file over a tiny taught Llama teacher and a 60-document corpus under ``root``;
    ``section`` entries replace the ``causal_lm`` defaults below by key, ``top`` the top-level sections."""
    import yaml

    docs = tiny_docs(60)
    write_text_folder(root / "corpus", docs)
    teach(tiny_llama_folder(root / "teacher"), docs, steps=40)
    base = {
        "data": {"path": "corpus", "max_seq_len": 32, "max_eval_sequences": 8},
        "teacher": {"model": "teacher"},
        "student": {"num_layers": 2},
        "distill": {"seeds": [0, 1], "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3}},
        "eval": {"prompts": 3, "prompt_tokens": 8, "new_tokens": 8},
        "export": {"parity_sequences": 2, "parity_new_tokens": 6},
        "bench": {"prompt_tokens": 8, "decode_tokens": 4, "rounds": 3, "batch_sizes": [1], "bootstrap": 200},
    }
    base.update(section or {})
    pipeline = root / "lm.yaml"
    pipeline.write_text(yaml.safe_dump({"version": 1, "name": "lm-tiny", "task": "causal-lm", "causal_lm": base,
                                        **top}))
    return pipeline
