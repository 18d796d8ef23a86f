"""Synonym sources: WordNet through nltk (Debian's folder included), a model's embedding neighbours, and the auto fallback."""

import nltk
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers import models as tok_models
from transformers import BertConfig, BertModel, BertTokenizerFast, GPT2Config, GPT2Model, PreTrainedTokenizerFast

from tasks import synonyms
from tasks.errors import UserError

WORDNET = synonyms.wordnet()


@pytest.fixture
def wordnet_installed():
    # Not a skip: `make test` installs Debian's wordnet-base, and without it these tests would pass while proving nothing.
    assert WORDNET is not None, (
        "WordNet is not installed: apt-get install wordnet-base (the Makefile's install step does)"
    )


needs_wordnet = pytest.mark.usefixtures("wordnet_installed")


@pytest.fixture
def no_wordnet(monkeypatch, tmp_path):
    """Nowhere to find WordNet: no Debian folder, no $MULTISTEP_WORDNET, no nltk_data."""
    monkeypatch.setattr(synonyms, "DEBIAN_WORDNET", tmp_path / "no-wordnet")
    monkeypatch.delenv(synonyms.WORDNET_ENV, raising=False)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "no-nltk-data")])
    assert synonyms.wordnet() is None


def _tiny_bert(tmp_path):
    """A 1-layer BERT whose embeddings make great the nearest word to good, with a ## piece and punctuation nearer still."""
    words = ["good", "great", "bad", "movie", "film", "the"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "##ing", ",", "!", "a1"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # reads vocab.txt (transformers 5 dropped the vocab_file argument)
    tok = BertTokenizerFast.from_pretrained(tmp_path)
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
        )
    )
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        good = weight[vocab.index("good")]
        weight[vocab.index("great")] = good + 0.01 * torch.randn(32)
        for piece in ("##ing", ",", "!", "a1", "[MASK]"):  # nearer to good than great is: must still never come back
            weight[vocab.index(piece)] = good + 0.001 * torch.randn(32)
    return model, tok


@needs_wordnet
def test_wordnet_gives_single_lowercase_words_without_the_word_itself():
    good = WORDNET("good")
    assert {"beneficial", "estimable", "honest"} <= set(good)
    assert "good" not in good
    assert len(good) == len(set(good))
    for word in ("good", "movie", "run", "well", "new"):
        for candidate in WORDNET(word):
            assert candidate.isalpha() and candidate.islower(), (word, candidate)  # never motion_picture or well-being
    assert WORDNET("movie")[:2] == ["film", "picture"]  # best (first synset's) lemmas first
    assert WORDNET("xyzzy") == [] and WORDNET("the") == []


@needs_wordnet
def test_wordnet_reads_debians_folder_which_lacks_lexnames():
    assert synonyms.DEBIAN_WORDNET.is_dir() and not (synonyms.DEBIAN_WORDNET / "lexnames").exists(), (
        "needs Debian's wordnet-base folder"
    )
    found = synonyms.wordnet(root=str(synonyms.DEBIAN_WORDNET))
    assert found.name == "wordnet" and "film" in found("movie")
    reader = synonyms._reader(synonyms.DEBIAN_WORDNET)
    # The generated lexnames put each synset in its lexicographer file.
    assert [reader.synset(s).lexname() for s in ("good.a.01", "dog.n.01", "run.v.01", "quickly.r.01")] == [
        "adj.all",
        "noun.animal",
        "verb.motion",
        "adv.all",
    ]


def test_wordnet_in_an_empty_folder_is_none(tmp_path):
    assert synonyms.wordnet(root=str(tmp_path)) is None


def test_wordnet_env_pointing_at_a_non_wordnet_folder_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv(synonyms.WORDNET_ENV, str(tmp_path))
    with pytest.raises(UserError, match=f"MULTISTEP_WORDNET={tmp_path} is not a WordNet dict folder"):
        synonyms.wordnet()


@needs_wordnet
def test_wordnet_env_is_used(monkeypatch):
    monkeypatch.setenv(synonyms.WORDNET_ENV, str(synonyms.DEBIAN_WORDNET))
    assert str(synonyms.DEBIAN_WORDNET) in synonyms.wordnet().where


def test_wordnet_missing_is_a_user_error_naming_the_fix(no_wordnet):
    with pytest.raises(
        UserError,
        match=r"WordNet is not installed: install Debian's wordnet-base .* set augment.eda.synonyms to embedding",
    ):
        synonyms.source("wordnet", None)
    with pytest.raises(UserError, match="augment.synonym_model is not set"):
        synonyms.source("auto", None)
    with pytest.raises(UserError, match="set augment.adversarial.synonyms to embedding"):
        synonyms.source("wordnet", None, setting="augment.adversarial.synonyms")


def test_auto_falls_back_to_embeddings_and_says_so_once(no_wordnet, tmp_path, capsys):
    model, tok = _tiny_bert(tmp_path)
    calls = []
    found = synonyms.source("auto", lambda: calls.append(1) or (model, tok))
    assert found.name == "embedding" and calls == [1]
    assert found("good")[0] == "great"
    found("bad"), found("good")
    out = capsys.readouterr().out
    assert out.count("WordNet not found") == 1 and "input embeddings" in out and "wordnet-base" in out


@needs_wordnet
def test_auto_prefers_wordnet_without_loading_a_model(capsys):
    found = synonyms.source("auto", lambda: pytest.fail("the model was loaded although WordNet is installed"))
    assert found.name == "wordnet"
    assert capsys.readouterr().out == ""


def test_embedding_needs_a_model():
    with pytest.raises(UserError, match="augment.synonym_model"):
        synonyms.source("embedding", None)


def test_embedding_neighbours_are_whole_words_nearest_first(tmp_path):
    model, tok = _tiny_bert(tmp_path)
    found = synonyms.source("embedding", lambda: (model, tok))
    good = found("good")
    assert good[0] == "great"
    assert "good" not in good
    assert set(good) <= {"great", "bad", "movie", "film", "the"}  # no ##ing, punctuation, a1 or [MASK]
    assert len(synonyms.embedding_neighbours(model, tok, k=2)("good")) == 2
    assert found("playing") == []  # not one whole-word token


def test_embedding_neighbours_in_a_byte_level_bpe_vocabulary():
    # Ġ marks a word start; tokens without it continue a word, so only Ġ-words (marker stripped) are candidates.
    vocab = {
        t: i
        for i, t in enumerate(
            ["<|endoftext|>", "Ġgood", "Ġgreat", "ĠGreat", "great", "Ġ,", "Ġbad", "Ġ123", "ness", "Ġmovie"]
        )
    }
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.BPE(vocab, [])))
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=8))
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight[vocab["Ġgreat"]] = weight[vocab["Ġgood"]] + 0.01 * torch.randn(16)
        for near in ("ness", "great", "Ġ,", "Ġ123"):
            weight[vocab[near]] = weight[vocab["Ġgood"]] + 0.001 * torch.randn(16)
    good = synonyms.embedding_neighbours(model, tok)("good")
    assert good[0] == "great" and good.count("great") == 1
    assert set(good) == {"great", "bad", "movie"}


def test_minilm_neighbours_are_related_words():
    from transformers import AutoModel

    from tasks import model as models

    model, tok = models.load("package:minilm", auto=AutoModel)
    found = synonyms.embedding_neighbours(model, tok)
    assert {"film", "movies"} & set(found("movie"))
    assert "hilarious" in found("funny")
    assert all(w.isalpha() and w.islower() for w in found("movie"))
