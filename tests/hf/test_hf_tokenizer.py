"""A saved Hugging Face tokenizer read back from disk (puma_mdm.hf.tokenizer)."""

import pytest

from hf_models import byte_bpe, save_tokenizer, transformers
from puma_mdm.hf.tokenizer import TokenizerLoadError, check_vocabulary, load_tokenizer

CORPUS = [
    "Natalia sold clips to 48 of her friends in April.",
    "def solution():\n    return 48 + 48 // 2\n",
    "Ünïcödé, emoji 🙂 and tabs\tare text too.",
]
TEXTS = [*CORPUS, "unseen words: zygote quixotic", "<eos> inside a text stays text", ""]


@pytest.fixture
def saved(tmp_path):
    tok = byte_bpe(CORPUS, specials=("<eos>", "<mask>", "<sep>"))
    save_tokenizer(tok, tmp_path, eos_token="<eos>", mask_token="<mask>", sep_token="<sep>")
    return tmp_path, tok


def test_a_saved_tokenizer_directory_round_trips_text(saved):
    directory, tok = saved
    loaded = load_tokenizer(directory)
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    assert loaded.vocab_size == len(reference) == tok.get_vocab_size()
    assert loaded.eos_id == reference.eos_token_id == tok.token_to_id("<eos>")
    assert loaded.mask_id == reference.mask_token_id
    assert loaded.sep_id == tok.token_to_id("<sep>")
    sizes = loaded.token_bytes()
    for text in TEXTS:
        ids = loaded.encode(text)
        assert loaded.decode(ids) == text
        assert (
            ids == reference(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )
        assert sum(sizes[i] for i in ids) == len(text.encode("utf-8"))
    assert loaded.encode_batch(TEXTS[:2]) == [loaded.encode(t) for t in TEXTS[:2]]
    assert loaded.decode([loaded.eos_id, *loaded.encode("ab")]) == "ab"  # specials dropped
    assert loaded.is_special(loaded.mask_id) and not loaded.is_special(loaded.encode("a")[0])


def test_what_a_model_directory_keeps_loads_back(saved, tmp_path):
    loaded = load_tokenizer(saved[0])
    copy = tmp_path / "model"
    copy.mkdir()
    (copy / "tokenizer.json").write_text(loaded.to_json())
    (copy / "tokenizer_config.json").write_text(loaded.config_json())
    again = load_tokenizer(copy)
    assert again.ids == loaded.ids and again.vocab_size == loaded.vocab_size
    assert again.encode(TEXTS[2]) == loaded.encode(TEXTS[2])


def test_a_bare_tokenizer_json_file(saved):
    directory, _ = saved
    loaded = load_tokenizer(directory / "tokenizer.json")
    assert loaded.decode(loaded.encode(TEXTS[1])) == TEXTS[1]
    assert loaded.eos_id == load_tokenizer(directory).eos_id  # specials from the config beside


def test_without_an_eos_token_the_separator_is_asked_for(tmp_path):
    save_tokenizer(byte_bpe(CORPUS, specials=("<mask>",)), tmp_path, mask_token="<mask>")
    loaded = load_tokenizer(tmp_path)
    with pytest.raises(TokenizerLoadError, match="names no eos token"):
        _ = loaded.sep_id


def test_bad_tokenizers_are_named(tmp_path, saved):
    with pytest.raises(TokenizerLoadError, match="no tokenizer directory or file"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "slow").mkdir()
    with pytest.raises(TokenizerLoadError, match=r"has no tokenizer\.json"):
        load_tokenizer(tmp_path / "slow")
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(TokenizerLoadError, match=r"is not a tokenizer\.json file"):
        load_tokenizer(tmp_path / "bad.json")
    directory, tok = saved
    loaded = load_tokenizer(directory)
    n = tok.get_vocab_size()
    check_vocabulary(loaded, n + 64, loaded.mask_id, "padded")  # a padded vocabulary is fine
    with pytest.raises(TokenizerLoadError, match=f"has {n} tokens but model m embeds only 100"):
        check_vocabulary(loaded, 100, None, "m")
    with pytest.raises(TokenizerLoadError, match="not a pair"):
        check_vocabulary(loaded, n, loaded.mask_id + 1, "m")


def test_train_with_a_tokenizer_directory_keeps_it_beside_the_model(saved, tmp_path_factory):
    from puma_mdm.cli import main
    from puma_mdm.pretrained import load_trained
    from test_generate import TINY

    directory, tok = saved
    root = tmp_path_factory.mktemp("run")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"{CORPUS[i % 3]} ({i})" for i in range(200)))
    args = ["train", "--config", "text", "--data", str(corpus), "--tokenizer", str(directory)]
    assert main([*args, "--out-dir", str(root / "run"), *TINY, "task.options.seq_len=32"]) == 0
    model_dir = root / "run" / "model"
    assert (model_dir / "tokenizer.json").is_file()
    assert (model_dir / "tokenizer_config.json").is_file()
    directory.rename(root / "moved")  # the model must not need the original directory
    model, task = load_trained(model_dir)
    assert model.cfg.vocab_size == task.tokenizer.vocab_size == tok.get_vocab_size()
    assert task.tokenizer.eos_id == tok.token_to_id("<eos>")
    assert task.tokenizer.decode(task.tokenizer.encode(TEXTS[2])) == TEXTS[2]


def test_a_tokenizer_option_that_is_neither_file_nor_directory_is_named(tmp_path, capsys):
    from puma_mdm.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n" * 50)
    args = ["train", "--config", "text", "--data", str(corpus), "--out-dir", str(tmp_path / "r")]
    assert main([*args, "--tokenizer", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "task.options.tokenizer" in err and "missing" in err and err.count("\n") == 1
