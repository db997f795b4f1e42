import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_mdm.tokenizers import SPECIALS, BPETokenizer, ByteTokenizer, TokenizerError

CORPUS = [
    "In the beginning God created the heaven and the earth.",
    "Ava has 12 stickers. She buys 5 more stickers.",
    "def solution():\n    stickers = 12\n    return stickers\n",
    "Grüße aus Köln — naïve café, 3.14 % 🙂",
] * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, 400)


texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=80) | st.sampled_from(
    ["", " ", "\n\n  \t", "<eos>", "a<sep>b", "12345", "  leading and trailing  "]
)


@given(texts)
def test_byte_tokenizer_round_trips_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(texts)
def test_bpe_round_trips_any_text(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    # special-token spellings in the text are text, never the special ids
    assert bpe.eos_id not in ids and bpe.sep_id not in ids


def test_specials_are_dropped_by_decode(bpe):
    for tok in (ByteTokenizer(), bpe):
        ids = [*tok.encode("ab"), tok.sep_id, *tok.encode("cd"), tok.eos_id, tok.eos_id]
        assert tok.decode(ids) == "abcd"
        assert tok.is_special(tok.eos_id) and not tok.is_special(tok.encode("a")[0])


def test_bpe_compresses_and_spells_digits_one_by_one(bpe):
    text = CORPUS[1]
    assert len(bpe.encode(text)) < len(text.encode()) / 2
    digits = [bpe.decode([i]) for i in bpe.encode("year 2024")]
    assert digits[-4:] == ["2", "0", "2", "4"]


def test_token_bytes_count_the_utf8_bytes(bpe):
    for tok in (ByteTokenizer(), bpe):
        sizes = tok.token_bytes()
        assert len(sizes) == tok.vocab_size
        for text in CORPUS[:4]:
            assert sum(sizes[i] for i in tok.encode(text)) == len(text.encode("utf-8"))
        assert sizes[tok.eos_id] == sizes[tok.sep_id] == 1


def test_bpe_training_is_deterministic_and_saved_exactly(bpe, tmp_path):
    again = BPETokenizer.train(CORPUS, 400)
    assert again.to_json() == bpe.to_json()
    path = tmp_path / "tokenizer.json"
    path.write_text(bpe.to_json())
    loaded = BPETokenizer.load(path)
    assert loaded.encode(CORPUS[0]) == bpe.encode(CORPUS[0])
    assert loaded.hf.get_vocab()[SPECIALS[0]] == loaded.eos_id == 0


def test_bpe_errors(tmp_path):
    with pytest.raises(TokenizerError, match="leaves no room for merges"):
        BPETokenizer.train(CORPUS, 100)
    with pytest.raises(TokenizerError, match="no tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match=r"is not a tokenizer\.json file"):
        BPETokenizer.load(bad)
