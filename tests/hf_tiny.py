"""Tiny random Hugging Face BERT folders and labelled-text files for the text tests (no downloads).

The tokenizer is a WordPiece trained with ``tokenizers`` on the test's own texts; the model a BertConfig of
hidden 32, 4 layers, 2 heads with random weights, saved encoder-only (``BertModel``) like a sentence encoder.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

TOPICS = {
    "sport": "match goal team player win league coach score season cup",
    "tech": "software chip computer phone data network code device online app",
    "politics": "minister vote election party government law policy parliament debate tax",
}


def tiny_texts(n_per_label: int = 24, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) pairs: each text mostly its topic's words, a few words of the others."""
    rng = random.Random(seed)
    words = {k: v.split() for k, v in TOPICS.items()}
    everything = [w for ws in words.values() for w in ws]
    rows = []
    for label, ws in words.items():
        for _ in range(n_per_label):
            text = [rng.choice(ws) for _ in range(rng.randint(6, 14))] + [rng.choice(everything) for _ in range(2)]
            rng.shuffle(text)
            rows.append((" ".join(text), label))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def tiny_bert_folder(folder: Path, *, layers: int = 4, hidden: int = 32, heads: int = 2, seed: int = 0) -> Path:
    """An encoder-only random BERT with a trained WordPiece tokenizer, saved as a Hugging Face folder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials)
    tok.train_from_iterator([t for t, _ in tiny_texts()] + list(TOPICS.values()), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id),
                                                                                      ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    return folder
