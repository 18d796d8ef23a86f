"""Where replacement words come from (EDA's edits, the attack's substitutes): WordNet when it is installed, else a model's
input-embedding neighbours.

nltk is imported where WordNet is read: it is optional, and `wordnet()` first checks that it is installed.
"""

import importlib.util
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from tasks.errors import UserError

WORDNET_ENV = "MULTISTEP_WORDNET"
# Debian's wordnet-base package (WordNet 3.0 dict files, without the `lexnames` file nltk's reader needs).
DEBIAN_WORDNET = Path("/usr/share/wordnet")
# WordNet 3.0's lexicographer files in file-number order, with their syntactic category (1 noun, 2 verb, 3 adj, 4 adv):
# the `lexnames` file of lexnames(5WN), which Debian does not ship.
LEXNAMES = (
    [("adj.all", 3), ("adj.pert", 3), ("adv.all", 4)]
    + [
        (f"noun.{name}", 1)
        for name in (
            "Tops act animal artifact attribute body cognition communication event feeling food group location motive "
            "object person phenomenon plant possession process quantity relation shape state substance time"
        ).split()
    ]
    + [
        (f"verb.{name}", 2)
        for name in (
            "body change cognition communication competition consumption contact creation emotion motion perception "
            "possession social stative weather"
        ).split()
    ]
    + [("adj.ppl", 3)]
)
INSTALL_HINT = (
    "install Debian's wordnet-base (apt-get install wordnet-base), or point MULTISTEP_WORDNET at a WordNet dict folder"
)
WORD_START = ("Ġ", "▁")  # byte-level BPE (GPT-2, Llama 3) and SentencePiece (Llama 2) word-start markers


@dataclass(frozen=True)
class Synonyms:
    """Replacement candidates for a lowercase word, best first: single alphabetic lowercase words, never the word itself."""

    name: str  # "wordnet" or "embedding"
    lookup: Callable[[str], list[str]] = field(repr=False)
    where: str = ""  # what the words come from, for messages: a WordNet folder, a model
    _cache: dict[str, list[str]] = field(default_factory=dict, repr=False, compare=False)

    def __call__(self, word: str) -> list[str]:
        if word not in self._cache:
            self._cache[word] = self.lookup(word)
        return self._cache[word]


def _clean(word: str, candidates) -> list[str]:
    """Lowercase, single alphabetic words (drops WordNet's `motion_picture`, `well-being`, `u.s.`), deduplicated, not `word`."""
    out = dict.fromkeys(c.lower() for c in candidates if c.isalpha())
    out.pop(word, None)
    return list(out)


def _is_dict(folder: Path) -> bool:
    return (folder / "data.noun").is_file() and (folder / "index.noun").is_file()


def _candidates(root: str | None) -> list[Any]:
    """WordNet folders to try, in order: `root` alone when given; else $MULTISTEP_WORDNET alone when set; else Debian's, then nltk_data."""
    if root is not None:
        return [Path(root)]
    if os.environ.get(WORDNET_ENV):
        folder = Path(os.environ[WORDNET_ENV]).expanduser()
        if not _is_dict(folder):
            raise UserError(
                f"{WORDNET_ENV}={folder} is not a WordNet dict folder (no data.noun and index.noun): point it at one, or unset it."
            )
        return [folder]
    found: list[Any] = [DEBIAN_WORDNET]
    import nltk

    # What nltk.corpus.wordnet itself would load: the unzipped corpus, else the zip nltk.download leaves.
    for name in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            pointer = nltk.data.find(name)
            found.append(Path(pointer) if isinstance(pointer, str) else pointer)  # a folder, else a zip pointer
        except LookupError:
            pass
    return found


@lru_cache(maxsize=None)
def _reader(root: Any):
    """nltk's WordNet reader over one folder (or nltk path pointer); loading the indexes takes a few seconds, so once."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNet(WordNetCorpusReader):
        """nltk's reader, English only, that also reads Debian's folder.

        Debian's wordnet-base lacks `lexnames` (the reader's first read), so a missing one is generated from LEXNAMES
        in memory: a folder of links to Debian's files would not do, as nltk 3.10 refuses a symlink that leaves the
        reader's root and any hard-linked file. And the reader maps every WordNet whose version is not literally
        "wordnet" onto nltk_data's own copy (index.sense) for multilingual lookups, which we neither need nor have.
        """

        def open(self, file):
            try:
                return super().open(file)
            except OSError:  # nltk says "No such file or directory" with a plain OSError
                if file != "lexnames":
                    raise
                return io.StringIO("".join(f"{i:02d}\t{name}\t{pos}\n" for i, (name, pos) in enumerate(LEXNAMES)))

        def map_wn(self, version="wordnet"):
            return None

    if isinstance(root, Path):
        # nltk 3.10 reads only from folders under nltk.data.path ("Security Violation ... Unauthorized path").
        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))
        root = str(root)
    with warnings.catch_warnings():  # "multilingual functions are not available": we read English only
        warnings.simplefilter("ignore", UserWarning)
        return EnglishWordNet(root, None)


def wordnet(root: str | None = None) -> Synonyms | None:
    """WordNet synonyms (lemmas of every synset of the word, all parts of speech, in synset order), or None when not installed."""
    if importlib.util.find_spec("nltk") is None:
        return None
    for folder in _candidates(root):
        if isinstance(folder, Path) and not _is_dict(folder):
            continue
        reader = _reader(folder)

        def lookup(word: str, reader=reader) -> list[str]:
            return _clean(word, (name for synset in reader.synsets(word) for name in synset.lemma_names()))

        return Synonyms("wordnet", lookup, where=f"WordNet {reader.get_version()} at {folder}")
    return None


def _whole_words(tokenizer) -> dict[str, int]:
    """Lowercase whole alphabetic words of a vocabulary → token id (a lowercase spelling wins over a capitalised one)."""
    vocab = tokenizer.get_vocab()
    # Byte-level BPE and SentencePiece mark word starts; WordPiece (BERT) marks continuations with ## instead.
    marked = sum(t.startswith(WORD_START) for t in vocab) > len(vocab) // 10
    words: dict[str, int] = {}
    for token, i in sorted(vocab.items(), key=lambda item: item[1]):
        if marked:
            word = token[1:] if token.startswith(WORD_START) else ""
        else:
            word = "" if token.startswith("##") else token
        if word.isalpha() and (word.lower() not in words or word.islower()):
            words[word.lower()] = i
    return words


def embedding_neighbours(model, tokenizer, k: int = 8) -> Synonyms:
    """The k nearest whole words to a word by cosine similarity of the model's input embeddings ([] for a word split into pieces)."""
    words = _whole_words(tokenizer)
    names = list(words)
    index = {w: row for row, w in enumerate(names)}
    ids = torch.tensor(list(words.values()), dtype=torch.long)
    with torch.no_grad():
        # [W, H] unit rows of the whole words only; a copy, so the model itself can be freed.
        unit = torch.nn.functional.normalize(model.get_input_embeddings().weight[ids].float(), dim=1)

    def lookup(word: str) -> list[str]:
        if word not in index:
            return []
        with torch.no_grad():
            sims = unit @ unit[index[word]]  # [W]
            top = sims.topk(min(k + 1, len(names))).indices.tolist()
        return _clean(word, (names[i] for i in top))[:k]

    where = getattr(model, "name_or_path", "") or type(model).__name__
    return Synonyms("embedding", lookup, where=f"{where}'s input embeddings")


def source(
    kind: Literal["auto", "wordnet", "embedding"],
    load_model: Callable[[], tuple[Any, Any]] | None = None,
    *,
    setting: str = "augment.eda.synonyms",
) -> Synonyms:
    """The synonym source a `setting` asks for; `load_model` gives (model, tokenizer) for embedding neighbours (called only then)."""
    if kind in ("auto", "wordnet"):
        found = wordnet()
        if found is not None:
            return found
        hint = INSTALL_HINT if importlib.util.find_spec("nltk") else "pip install nltk, and " + INSTALL_HINT
        if kind == "wordnet":
            raise UserError(f"WordNet is not installed: {hint}, or set {setting} to embedding.")
        if load_model is None:
            raise UserError(
                f"WordNet is not installed and augment.synonym_model is not set: {hint}, or set augment.synonym_model to a model URI."
            )
        found = embedding_neighbours(*load_model())
        print(f"augment: WordNet not found ({hint}); using nearest neighbours in {found.where}")
        return found
    if load_model is None:
        raise UserError(
            f"{setting} is embedding but augment.synonym_model is not set: set it to a model URI (e.g. package:minilm)."
        )
    return embedding_neighbours(*load_model())
