"""Easy Data Augmentation (Wei & Zou 2019): synonym replacement, random insertion, random swap and random deletion."""

import hashlib
import json
import random
import string

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from tqdm.auto import tqdm

from tasks.augment.spec import EdaSpec
from tasks.synonyms import Synonyms


def _rng(*key) -> random.Random:
    """A generator seeded from a stable digest of `key` (Python's hash() differs between processes)."""
    digest = hashlib.blake2b(json.dumps(key, ensure_ascii=False).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _match_case(word: str, like: str) -> str:
    if len(like) > 1 and like.isupper():
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


class _Editor:
    """The four operations over one row's words; each returns (new words, words changed)."""

    def __init__(self, synonyms: Synonyms, protected: set[str], stop_words: frozenset[str]):
        self.synonyms, self.protected, self.stop_words = synonyms, protected, stop_words

    def is_protected(self, word: str) -> bool:
        low = word.lower()
        return low in self.protected or low.strip(string.punctuation) in self.protected

    def candidates(self, word: str) -> list[str]:
        """Synonyms a word may be replaced by or spawn ([] for stop words, protected and non-alphabetic words)."""
        low = word.lower()
        if not word.isalpha() or low in self.stop_words or self.is_protected(word):
            return []
        return [c for c in self.synonyms(low) if c not in self.protected]

    def synonym(self, words: list[str], n: int, rng: random.Random) -> tuple[list[str], int]:
        out, changed = list(words), 0
        positions = list(range(len(words)))
        rng.shuffle(positions)
        for i in positions:
            if changed == n:
                break
            options = self.candidates(words[i])
            if options:
                out[i] = _match_case(rng.choice(options), words[i])
                changed += 1
        return out, changed

    def insert(self, words: list[str], n: int, rng: random.Random) -> tuple[list[str], int]:
        options = [options for options in map(self.candidates, words) if options]
        if not options:
            return list(words), 0
        out = list(words)
        for _ in range(n):
            out.insert(rng.randint(0, len(out)), rng.choice(rng.choice(options)))
        return out, n

    def swap(self, words: list[str], n: int, rng: random.Random) -> tuple[list[str], int]:
        movable = [i for i, w in enumerate(words) if not self.is_protected(w)]
        if len(movable) < 2:
            return list(words), 0
        out = list(words)
        for _ in range(n):
            i, j = rng.sample(movable, 2)
            out[i], out[j] = out[j], out[i]
        return out, n

    def delete(self, words: list[str], rate: float, rng: random.Random) -> tuple[list[str], int]:
        if len(words) < 2:
            return list(words), 0
        keep = [self.is_protected(w) or rng.random() >= rate for w in words]
        if not any(keep):  # never an empty text: one random word stays
            keep[rng.randrange(len(words))] = True
        return [w for w, k in zip(words, keep) if k], keep.count(False)


def augment(rows: list[dict], spec: EdaSpec, synonyms: Synonyms) -> list[dict]:
    """`spec.copies` edited copies of each row, in input order, with provenance (source_row, operation, params); originals not included."""
    editor = _Editor(synonyms, {w.lower() for w in spec.protected}, ENGLISH_STOP_WORDS)
    enabled = [op for op, rate in spec.rates.items() if rate > 0]
    out = []
    # Past 1,000 rows a progress bar; `disable` is left unset then, so TQDM_DISABLE=1 can still silence it.
    for row in tqdm(rows, desc="eda", unit="row", **({} if len(rows) > 1000 else {"disable": True})):
        key = row.get("origin") or row["text"]
        offset = _rng(spec.seed, key).randrange(len(enabled))
        words = (row["text"] or "").split()
        for copy in range(spec.copies):
            op = enabled[(offset + copy) % len(enabled)]
            rate, rng = spec.rates[op], _rng(spec.seed, key, copy)
            if op == "delete":
                new, changed = editor.delete(words, rate, rng)
            else:
                new, changed = getattr(editor, op)(words, max(1, round(rate * len(words))), rng)
            params = {"rate": rate, "changed": changed, "copy": copy, "seed": spec.seed}
            out.append(
                {
                    **row,
                    "text": " ".join(new),
                    "source_row": row.get("origin"),
                    "operation": f"eda.{op}",
                    "params": json.dumps(params),
                }
            )
    return out
