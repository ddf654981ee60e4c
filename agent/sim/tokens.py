"""The simulated tokenizer: deterministic, self-consistent token ids, prompts and generations.

Text is split with ``\\w+|[^\\w\\s]``; a chat prompt adds a fixed template (BOS, 4 tokens around
each message, 3 for the reply header), so counts differ from a naive count of the text, as on
real servers. A generation of N tokens is exactly N pieces (a word with a leading space each),
chosen deterministically from the prompt.
"""

from __future__ import annotations

import hashlib
import random
import re
import struct
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

__all__ = [
    "EMBEDDING_DIM",
    "MAX_MODEL_LEN",
    "VOCAB_SIZE",
    "PrefixCache",
    "count_tokens",
    "embed_vector",
    "encode",
    "generate_pieces",
    "piece_id",
    "render_chat",
    "render_prompt",
    "tokenize",
]

MAX_MODEL_LEN: Final = 8192
EMBEDDING_DIM: Final = 16
VOCAB_SIZE: Final = 32000

_TOKEN_RE: Final = re.compile(r"\w+|[^\w\s]")
_BOS, _START, _SEP, _END = 1, 2, 3, 4
_ROLE_IDS: Final = {"system": 5, "developer": 5, "user": 6, "assistant": 7, "tool": 8}
_FIRST_WORD_ID: Final = 256
_WORDS: Final = (
    "the", "sky", "is", "blue", "because", "light", "scatters", "in", "air", "and", "water",
    "river", "model", "token", "stream", "server", "quiet", "bright", "small", "large", "over",
    "under", "every", "morning", "evening", "story", "answer", "question", "reason", "simple",
    "clear", "moves", "grows", "falls", "rises", "through", "with", "from", "into", "near",
    "mountain", "valley", "forest", "ocean", "cloud", "signal", "number", "pattern",
)  # fmt: skip


def tokenize(text: str) -> list[str]:
    """The simulator's tokenizer: words and single punctuation marks."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Tokens in plain text, without BOS or template tokens."""
    return len(tokenize(text))


def piece_id(piece: str) -> int:
    """The token id of one word or punctuation mark."""
    return _FIRST_WORD_ID + zlib.crc32(piece.encode()) % (VOCAB_SIZE - _FIRST_WORD_ID)


def encode(text: str) -> list[int]:
    return [piece_id(p) for p in tokenize(text)]


def render_prompt(text: str, *, add_special: bool = True) -> list[int]:
    """Token ids of a raw completion prompt: BOS plus the text."""
    return ([_BOS] if add_special else []) + encode(text)


def render_chat(messages: Sequence[tuple[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a chat prompt after the (simulated) chat template: real servers count these
    template tokens too, which is why a proxy must read counts from the server."""
    ids = [_BOS]
    for role, content in messages:
        ids += [_START, _ROLE_IDS.get(role, 6), _SEP, *encode(content), _END]
    if add_generation_prompt:
        ids += [_START, _ROLE_IDS["assistant"], _SEP]
    return ids


def generate_pieces(seed_text: str, n: int) -> list[str]:
    """N generated pieces, deterministic in the prompt; each is one word, so exactly one token."""
    rng = random.Random(hashlib.sha256(seed_text.encode()).digest())
    return [" " + rng.choice(_WORDS) for _ in range(n)]


def embed_vector(text: str) -> list[float]:
    """A deterministic unit vector for `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [int.from_bytes(digest[2 * i : 2 * i + 2], "big") - 32767.5 for i in range(EMBEDDING_DIM)]
    norm = sum(v * v for v in raw) ** 0.5
    return [v / norm for v in raw]


class PrefixCache:
    """Prompt prefixes the simulated KV cache holds, in 16-token blocks like vLLM's."""

    BLOCK: Final = 16

    def __init__(self, capacity: int = 8192) -> None:
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def match_and_store(self, scope: str, ids: Sequence[int]) -> int:
        """Tokens of `ids` already cached under `scope` (a model); stores the prompt's blocks."""
        h = hashlib.blake2b(scope.encode(), digest_size=16)
        keys: list[bytes] = []
        for start in range(0, len(ids) - self.BLOCK + 1, self.BLOCK):
            h.update(struct.pack(f"<{self.BLOCK}I", *ids[start : start + self.BLOCK]))
            keys.append(h.digest())
        hits = 0
        for key in keys:
            if key not in self._blocks:
                break
            hits += 1
        # The last prompt token is always recomputed, so a full hit drops the last block.
        cached = min(hits * self.BLOCK, (max(len(ids) - 1, 0) // self.BLOCK) * self.BLOCK)
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)
        return cached
