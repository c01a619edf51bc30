"""synth.py --prompts llm (helpers/llm_attributes.py): strict parsing of the LLM's answers, retries, fallback,
attributes.json reuse and checks, torchrun's other ranks waiting for the file, and the whole path offline on a
tiny random causal LM built from a config and saved to disk."""
import json
import threading
import time

import pytest
import torch

from helpers import common, devices, domains
import kit
import kit_diffusers
from helpers import llm_attributes
import synth

FIFTEEN = "\n".join(f"{i}. place number {w}" for i, w in enumerate(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split(), 1))


# ----------------------------------------------------------------------------------------------
# the parser

def test_parse_well_formed_and_numbering_styles():
    assert llm_attributes.parse_options("1. in a park\n2) on a beach\n(3) at home\n4: by a lake", 4) == [
        "in a park", "on a beach", "at home", "by a lake"]
    assert llm_attributes.parse_options(FIFTEEN, 15)[-1] == "place number fifteen"
    # a chatty preamble and a closing remark are ignored; markup, quotes and end punctuation are stripped
    text = "Sure! Here are some places:\n1. **In a Park**\n2. \"on a beach.\"\n3. `at home`;\nHope this helps!"
    assert llm_attributes.parse_options(text, 3) == ["in a park", "on a beach", "at home"]


def test_parse_rejects_duplicates_prose_and_short_answers():
    # duplicates (case-insensitive) count once: only 2 distinct -> too few for 3
    assert llm_attributes.parse_options("1. in a park\n2. In a park\n3. at home", 3) is None
    assert llm_attributes.parse_options("1. in a park\n2. In a park\n3. at home", 2) == ["in a park", "at home"]
    prose = ("1. You could photograph the cat in a sunny park near the river bank\n"  # > 6 words
             "2. Note: avoid flash\n"                                               # a colon: prose
             "3. \n"                                                                # empty
             "4. see http://example.com\n"                                          # not plain words
             "5. on a sofa\n- on a bed\n* in a box\nsix. in a car")                 # bullets are not numbers
    assert llm_attributes.parse_options(prose, 1) == ["on a sofa"]
    assert llm_attributes.parse_options(prose, 2) is None
    assert llm_attributes.parse_options("", 1) is None
    assert llm_attributes.parse_options("1. a\n2. b\n3. c", 2) == ["a", "b"]  # first n of more
    parse_word = llm_attributes.parse_word
    assert parse_word("Dog") == "dog" and parse_word("  cat.\nmore text") == "cat"
    assert parse_word("a dog") is None and parse_word("") is None and parse_word("42") is None


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
    real_ask = llm_attributes.ask_llm
    def ask(tokenizer, model, question, seed, max_new_tokens=160):  # count calls; short answers keep it fast
        calls.append(question)
        return real_ask(tokenizer, model, question, seed, max_new_tokens=min(max_new_tokens, 24))
    monkeypatch.setattr(llm_attributes, "ask_llm", ask)
    argv = ["--dataset", "pets", "--prompts", "llm", "--llm", llm, "--per-class", "3", "--dry-run",
            "--out", str(tmp_path / "out"), "--device", "cpu"]
    synth.main(argv)
    out = capsys.readouterr().out
    # bounded: per class 3 superclass attempts + 4 attributes x 3 attempts, then fallback
    assert len(calls) == 2 * (llm_attributes.LLM_RETRIES + 4 * llm_attributes.LLM_RETRIES)
    attributes = json.loads((tmp_path / "out" / "pets" / "attributes.json").read_text())
    assert attributes["llm"] == llm and set(attributes["fallback"]) == {"Beagle", "Persian"}
    assert attributes["classes"]["Beagle"]["location"] == domains.PROMPT_SLOTS["pets"]["location"]
    assert attributes["classes"]["Beagle"]["superclass"] == "pet"
    assert "fell back to helpers/domains.py words for 2 of 2 classes: Beagle (location/time/pose/angle)" in out
    assert not (tmp_path / "out" / "pets" / "images").exists()  # dry run: no images
    # rerun: attributes.json is reused, the LLM is never loaded again
    monkeypatch.setattr(llm_attributes, "load_llm", lambda *a: pytest.fail("the LLM was loaded again"))
    synth.main(argv)
    # another LLM for the same folder is refused, not silently mixed
    with pytest.raises(SystemExit) as e:
        synth.main(argv[:5] + ["other/llm"] + argv[6:])
    assert e.value.code == 2 and "was written by" in capsys.readouterr().err


def test_good_answers_become_prompts(tmp_path, two_pets, monkeypatch):
    def answer(tokenizer, model, question, seed, max_new_tokens=160):
        if "one word" in question:
            return "Dog" if "Beagle" in question else "Cat."
        slot = next(k for k, v in llm_attributes.SLOT_QUESTIONS.items() if v.split("{x}")[0] in question)
        name = "beagle" if "Beagle" in question else "persian"
        return "Here you go:\n" + "\n".join(f"{i}. {name} {slot} {i}" for i in range(1, 16))
    monkeypatch.setattr(llm_attributes, "load_llm", lambda *a: (None, None))
    monkeypatch.setattr(llm_attributes, "ask_llm", answer)
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


# ----------------------------------------------------------------------------------------------
# torchrun: the other ranks wait for rank 0's file, in no collective

def pets_attributes(llm, superclass="hound"):
    """What rank 0 writes for two_pets: a recognisable superclass, helpers/domains.py's options."""
    classes = {name: {"superclass": superclass, **domains.PROMPT_SLOTS["pets"]} for name in ["Beagle", "Persian"]}
    return {"llm": llm, "seed": 0, "retries": 3, "classes": classes, "fallback": {}}


def write_later(path, attributes, delay=0.5):
    """Rank 0 finishing its LLM run after `delay` seconds (an atomic write, as write_attributes does)."""
    thread = threading.Thread(target=lambda: (time.sleep(delay), common.save_json(attributes, path)))
    thread.start()
    return thread


def test_other_ranks_wait_for_the_file_then_read_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(llm_attributes, "POLL_S", 0.05)
    path, t0 = tmp_path / "attributes.json", time.monotonic()
    thread = write_later(path, pets_attributes("some/llm"))
    got = llm_attributes.wait_for_attributes(path, "some/llm", "pets", ["Beagle", "Persian"], 0)
    thread.join()
    assert got == pets_attributes("some/llm") and time.monotonic() - t0 >= 0.5
    assert f"waiting up to 6.0 h for rank 0 to write {path}" in capsys.readouterr().out


def test_the_wait_is_bounded_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(llm_attributes, "POLL_S", 0.05)
    t0 = time.monotonic()
    with pytest.raises(common.UserError, match="did not appear within 0.0 h. Write it with one process first"):
        llm_attributes.wait_for_attributes(tmp_path / "attributes.json", "some/llm", "pets", ["Beagle"], 0, wait_s=0.3)
    assert 0.3 <= time.monotonic() - t0 < 5


def test_rank_1_makes_its_images_from_rank_0s_file_without_a_barrier(tmp_path, two_pets, monkeypatch, capsys):
    """In-process rank 1 of 2: it must not wait in a collective (NCCL's times out after 10 minutes)."""
    tiny_sd = kit_diffusers.make_tiny_pipeline(tmp_path / "tiny_sd")
    monkeypatch.setattr(llm_attributes, "POLL_S", 0.05)
    monkeypatch.setattr(devices, "setup_distributed", lambda device: devices.Dist(rank=1, world_size=2))
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: pytest.fail("a collective was used"))
    monkeypatch.setattr(llm_attributes, "load_llm", lambda *a: pytest.fail("rank 1 loaded the LLM"))
    folder = tmp_path / "out" / "pets"
    folder.mkdir(parents=True)
    thread = write_later(folder / "attributes.json", pets_attributes("some/llm"))
    synth.main(["--dataset", "pets", "--prompts", "llm", "--llm", "some/llm", "--per-class", "2", "--steps", "2",
                "--size", "32", "--batch-size", "2", "--generator", str(tiny_sd), "--out", str(tmp_path / "out")])
    thread.join()
    assert "waiting up to 6.0 h for rank 0" in capsys.readouterr().out
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert [(r["label"], r["path"]) for r in rows] == [(0, "images/000/00001.png"), (1, "images/001/00001.png")]
    assert all(", a type of hound, " in r["prompt"] for r in rows)  # rank 0's words


# ----------------------------------------------------------------------------------------------
# a broken attributes.json: one line, exit 2, the file left as it is, no LLM loaded

def broken(attributes, **change):
    return json.dumps({**attributes, **change}).encode()


GOOD = pets_attributes("some/llm")


@pytest.mark.parametrize("content, words", [
    (b'{"llm": "some/llm", ', "is not valid JSON"),
    (b"[]", "holds a JSON list, not a JSON object"),
    (json.dumps({"llm": "some/llm", "seed": 0, "fallback": {}}).encode(), "lacks 'classes'"),
    (broken(GOOD, classes={"Beagle": {"superclass": "dog"}, "Persian": GOOD["classes"]["Persian"]}),
     "class 'Beagle' lacks a superclass word or 15 options for each of location, time, pose, angle"),
    (broken(GOOD, fallback=[]), "classes and fallback are not JSON objects"),
    (broken(GOOD, llm="other/llm"), "was written by other/llm (seed 0) for other settings"),
    ('{"llm": "caf\u00e9"}'.encode("latin-1"), "is not UTF-8 text"),
], ids=["truncated", "list", "no-classes", "class-lacks-options", "fallback-list", "other-llm", "latin-1"])
def test_broken_attributes_json_is_refused(tmp_path, two_pets, monkeypatch, capsys, content, words):
    monkeypatch.setattr(llm_attributes, "load_llm", lambda *a: pytest.fail("the LLM was loaded"))
    path = tmp_path / "pets" / "attributes.json"
    path.parent.mkdir()
    path.write_bytes(content)
    kit.exits_with_one_line(synth.main, ["--dataset", "pets", "--prompts", "llm", "--llm", "some/llm", "--dry-run",
                                         "--out", str(tmp_path)], capsys, words)
    assert path.read_bytes() == content and [p.name for p in tmp_path.rglob("*")] == ["pets", "attributes.json"]
