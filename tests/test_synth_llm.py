"""synth.py --prompts llm: strict parsing of the LLM's answers, retries, fallback, attributes.json reuse,
and the whole path offline on a tiny random causal LM built from a config and saved to disk."""
import json
import time

import pytest

import domains
import synth

FIFTEEN = "\n".join(f"{i}. place number {w}" for i, w in enumerate(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split(), 1))


# ----------------------------------------------------------------------------------------------
# the parser

def test_parse_well_formed_and_numbering_styles():
    assert synth.parse_options("1. in a park\n2) on a beach\n(3) at home\n4: by a lake", 4) == [
        "in a park", "on a beach", "at home", "by a lake"]
    assert synth.parse_options(FIFTEEN, 15)[-1] == "place number fifteen"
    # a chatty preamble and a closing remark are ignored; markup, quotes and end punctuation are stripped
    text = "Sure! Here are some places:\n1. **In a Park**\n2. \"on a beach.\"\n3. `at home`;\nHope this helps!"
    assert synth.parse_options(text, 3) == ["in a park", "on a beach", "at home"]


def test_parse_rejects_duplicates_prose_and_short_answers():
    # duplicates (case-insensitive) count once: only 2 distinct -> too few for 3
    assert synth.parse_options("1. in a park\n2. In a park\n3. at home", 3) is None
    assert synth.parse_options("1. in a park\n2. In a park\n3. at home", 2) == ["in a park", "at home"]
    prose = ("1. You could photograph the cat in a sunny park near the river bank\n"  # > 6 words
             "2. Note: avoid flash\n"                                               # a colon: prose
             "3. \n"                                                                # empty
             "4. see http://example.com\n"                                          # not plain words
             "5. on a sofa\n- on a bed\n* in a box\nsix. in a car")                 # bullets are not numbers
    assert synth.parse_options(prose, 1) == ["on a sofa"]
    assert synth.parse_options(prose, 2) is None
    assert synth.parse_options("", 1) is None
    assert synth.parse_options("1. a\n2. b\n3. c", 2) == ["a", "b"]  # first n of more
    assert synth.parse_word("Dog") == "dog" and synth.parse_word("  cat.\nmore text") == "cat"
    assert synth.parse_word("a dog") is None and synth.parse_word("") is None and synth.parse_word("42") is None


# ----------------------------------------------------------------------------------------------
# the whole path on a tiny random LM

def make_tiny_llm(folder):
    """A 1-layer random Llama with a word-level tokenizer of symbols and digits: its answers are garbage
    (no letters, no line breaks), so every answer must be rejected."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "1.", "2", "#", "@", "!", "?", "%", "+"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def two_pets(monkeypatch):
    """Two classes instead of 37 keep the LLM path fast; the code path is the same."""
    monkeypatch.setitem(domains.CLASSNAMES, "pets", ["Beagle", "Persian"])


def test_garbage_llm_retries_falls_back_and_is_reused(tmp_path, two_pets, monkeypatch, capsys):
    llm = make_tiny_llm(tmp_path / "llm")
    calls = []
    real_ask = synth.ask_llm
    def ask(tokenizer, model, question, seed, max_new_tokens=160):  # count calls; short answers keep it fast
        calls.append(question)
        return real_ask(tokenizer, model, question, seed, max_new_tokens=min(max_new_tokens, 24))
    monkeypatch.setattr(synth, "ask_llm", ask)
    argv = ["--dataset", "pets", "--prompts", "llm", "--llm", llm, "--per-class", "3", "--dry-run",
            "--out", str(tmp_path / "out"), "--device", "cpu"]
    synth.main(argv)
    out = capsys.readouterr().out
    # bounded: per class 3 superclass attempts + 4 attributes x 3 attempts, then fallback
    assert len(calls) == 2 * (synth.LLM_RETRIES + 4 * synth.LLM_RETRIES)
    attributes = json.loads((tmp_path / "out" / "pets" / "attributes.json").read_text())
    assert attributes["llm"] == llm and set(attributes["fallback"]) == {"Beagle", "Persian"}
    assert attributes["classes"]["Beagle"]["location"] == domains.PROMPT_SLOTS["pets"]["location"]
    assert attributes["classes"]["Beagle"]["superclass"] == "pet"
    assert "fell back to domains.py words for 2 of 2 classes: Beagle (location/time/pose/angle)" in out
    assert not (tmp_path / "out" / "pets" / "images").exists()  # dry run: no images
    # rerun: attributes.json is reused, the LLM is never loaded again
    monkeypatch.setattr(synth, "load_llm", lambda *a: pytest.fail("the LLM was loaded again"))
    synth.main(argv)
    # another LLM for the same folder is refused, not silently mixed
    with pytest.raises(SystemExit) as e:
        synth.main(argv[:5] + ["other/llm"] + argv[6:])
    assert e.value.code == 2 and "was written by" in capsys.readouterr().err


def test_good_answers_become_prompts(tmp_path, two_pets, monkeypatch):
    def answer(tokenizer, model, question, seed, max_new_tokens=160):
        if "one word" in question:
            return "Dog" if "Beagle" in question else "Cat."
        slot = next(k for k, v in synth.SLOT_QUESTIONS.items() if v.split("{x}")[0] in question)
        name = "beagle" if "Beagle" in question else "persian"
        return "Here you go:\n" + "\n".join(f"{i}. {name} {slot} {i}" for i in range(1, 16))
    monkeypatch.setattr(synth, "load_llm", lambda *a: (None, None))
    monkeypatch.setattr(synth, "ask_llm", answer)
    synth.main(["--dataset", "pets", "--prompts", "llm", "--llm", "some/llm", "--per-class", "4", "--dry-run",
                "--out", str(tmp_path / "out")])
    attributes = json.loads((tmp_path / "out" / "pets" / "attributes.json").read_text())
    assert attributes["fallback"] == {} and attributes["classes"]["Persian"]["superclass"] == "cat"
    prompts = synth.make_prompts("pets", ["Beagle", "Persian"], 4, "llm", 0, attributes)
    assert prompts[0][0].startswith("a photo of a Beagle, a type of dog, beagle pose ")
    assert all("persian location" in p and "a type of cat" in p for p in prompts[1])
    assert len(set(prompts[1])) == 4


def test_llm_missing_offline_fails_fast(tmp_path, capsys):
    t0 = time.time()
    with pytest.raises(SystemExit) as e:
        synth.main(["--dataset", "pets", "--prompts", "llm", "--llm", "nobody/no-such-llm", "--dry-run",
                    "--out", str(tmp_path)])
    assert e.value.code == 2 and time.time() - t0 < 10
    assert "nobody/no-such-llm is not in the local Hugging Face cache" in capsys.readouterr().err
