"""CLIP BPE tokenisation with the ``tokenizers`` library, id for id as the reference.

The reference implementation tokenises with transformers' slow ``CLIPTokenizer`` over the
release's ``vocab.json``/``merges.txt``, without ``ftfy`` (not among its dependencies), so
its text clean-up is BERT's ``BasicTokenizer``: drop NUL, U+FFFD and control characters,
turn whitespace into spaces, put spaces around CJK ideographs, NFC-normalise, lower-case,
collapse runs of whitespace. :func:`clean_text` does exactly that; the BPE itself (the CLIP
split pattern, byte-level alphabet, ``</w>`` word ends) runs in ``tokenizers``.

Special tokens: ``<|startoftext|>`` (BOS) first, ``<|endoftext|>`` (EOS) last; EOS is
also the padding token. Text longer than the context is truncated with EOS kept last.
A batch is padded only to its longest member; the text encoder masks the padding, so
the embedding does not depend on it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def clean_text(text: str) -> str:
    """The reference's text clean-up (BERT ``BasicTokenizer`` as used by ``CLIPTokenizer``)."""
    out: list[str] = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD:
            continue
        if char in " \t\n\r" or unicodedata.category(char) == "Zs":
            out.append(" ")
        elif unicodedata.category(char).startswith("C"):
            continue
        elif _is_cjk(cp):
            out.append(f" {char} ")
        else:
            out.append(char)
    words = unicodedata.normalize("NFC", "".join(out)).split()
    return " ".join(" ".join(w.lower() for w in words).split())


@dataclass(frozen=True)
class TokenBatch:
    """Token ids and attention mask, ``int64`` of shape (batch, longest)."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]


class ClipTokenizer:
    """Tokenises text for the MedImageInsight text encoder."""

    def __init__(self, vocab: Path, merges: Path, context_length: int = 77) -> None:
        bpe = BPE.from_file(
            str(vocab),
            str(merges),
            unk_token=EOS,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(
            [AddedToken(BOS, normalized=False), AddedToken(EOS, normalized=False)]
        )
        self.bos_id = tok.token_to_id(BOS)
        self.eos_id = tok.token_to_id(EOS)
        if self.bos_id is None or self.eos_id is None:
            raise ValueError(f"{vocab} lacks the CLIP special tokens {BOS} and {EOS}")
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, self.bos_id), (EOS, self.eos_id)]
        )
        tok.enable_truncation(max_length=context_length)
        self.context_length = context_length
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self._tok = tok

    @classmethod
    def from_dir(cls, directory: Path, context_length: int = 77) -> ClipTokenizer:
        return cls(directory / "vocab.json", directory / "merges.txt", context_length)

    def ids(self, text: str) -> list[int]:
        """Token ids of one text, BOS and EOS included, truncated to the context length."""
        ids: list[int] = self._tok.encode(clean_text(text)).ids
        return ids

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise a batch, padding with EOS to its longest member."""
        encoded = [self.ids(t) for t in texts]
        longest = max((len(e) for e in encoded), default=0)
        ids = np.full((len(encoded), longest), self.eos_id, dtype=np.int64)
        mask = np.zeros((len(encoded), longest), dtype=np.int64)
        for row, seq in enumerate(encoded):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return TokenBatch(input_ids=ids, attention_mask=mask)
