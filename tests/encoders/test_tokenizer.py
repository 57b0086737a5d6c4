"""Tokenisation: exactly the reference ids, BOS/EOS, truncation, batch padding."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from indexer.encoders.tokenizer import ClipTokenizer, clean_text
from tests.conftest import has_module

PROMPTS = [
    "x-ray chest anteroposterior Atelectasis",
    "",
    "   ",
    "CT ABDOMEN, w/ contrast!!! (3.5mm)",
    "It's the patient's 2nd MRI; they'll re-check.",
    "Pneumothorax — left-sided, 12 cm²",
    "naïve Café ÉCOLE",
    "肺炎 胸部X线",
    "tab\tnew\nline\r",
    "<|endoftext|> inside",
    "A<|startoftext|>b",
    "\u00a0nbsp\u2003em\u200bzero-width",
    "emoji 🫁 lungs",
    "\x00null\x7fdel",
    "e\u0301 combining accent",
    "MRI T2 FLAIR 1.5T 3mm axial brain glioblastoma multiforme",
    " ".join(["pleural effusion"] * 60),  # over 77 tokens
    "x" * 500,
]


def random_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcXYZ019 .,;:'\"!?-()/\\\t\n<|>éü中文ßΣ🫁\u00a0_"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok(test_model_dir: Path) -> ClipTokenizer:
    return ClipTokenizer.from_dir(test_model_dir / "tokenizer")


@pytest.mark.skipif(not has_module("transformers"), reason="needs transformers (dev extra)")
def test_ids_identical_to_reference_tokenizer(tok: ClipTokenizer, test_model_dir: Path) -> None:
    # the reference: transformers' slow CLIPTokenizer, as MedImageInsights builds it
    from transformers import CLIPTokenizer

    if has_module("ftfy"):
        pytest.skip("ftfy changes the reference's clean-up; the reference does not depend on it")
    ref = CLIPTokenizer.from_pretrained(str(test_model_dir / "tokenizer"))
    ref.add_special_tokens({"cls_token": ref.eos_token})
    texts = PROMPTS + random_prompts(1500)
    mismatches = []
    for text in texts:
        enc = ref(text, padding="max_length", max_length=77, truncation=True)
        want = [i for i, m in zip(enc["input_ids"], enc["attention_mask"], strict=True) if m]
        if tok.ids(text) != want:
            mismatches.append(text)
    assert mismatches == [], f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]!r}"


def test_bos_eos_and_lowercase(tok: ClipTokenizer) -> None:
    ids = tok.ids("Chest X-Ray")
    assert ids[0] == tok.bos_id == 49406
    assert ids[-1] == tok.eos_id == 49407
    assert ids == tok.ids("chest   x-ray")
    assert tok.ids("") == [49406, 49407]


def test_truncation_keeps_eos_last(tok: ClipTokenizer) -> None:
    ids = tok.ids(" ".join(["effusion"] * 200))
    assert len(ids) == 77
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.eos_id not in ids[1:-1]


def test_batch_is_padded_to_its_longest_member_with_eos(tok: ClipTokenizer) -> None:
    batch = tok(["a", "left lower lobe consolidation"])
    longest = len(tok.ids("left lower lobe consolidation"))
    assert batch.input_ids.shape == (2, longest)
    assert batch.input_ids.dtype == np.int64
    assert batch.attention_mask[0].tolist() == [1, 1, 1] + [0] * (longest - 3)
    assert (batch.input_ids[0, 3:] == tok.eos_id).all()
    assert batch.attention_mask[1].all()


def test_clean_text_matches_basic_tokenizer_rules() -> None:
    assert clean_text("  A\tB\n") == "a b"
    assert clean_text("x\x00y\u200b") == "xy"  # NUL and format characters dropped
    assert clean_text("肺炎") == "肺 炎"  # CJK ideographs split
    assert clean_text("e\u0301") == "é"  # NFC
