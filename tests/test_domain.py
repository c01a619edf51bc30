"""Your own domain (helpers/domain_file.py): a class-name file -> synth.py -> distill.py -> zeroshot.py --domain on a
labelled folder -> bench.py table, in-process on the test kit's stand-ins; the JSON and CLIP_benchmark forms; every
bad domain file (one line, exit 2, nothing written); folder matching; and no default prompt that gives a class
named by a colour another colour."""
import itertools
import json
import re

import pytest

import distill
import kit
import synth
import zeroshot
from helpers import bench_table, domain_file, domains

KITCHEN = ["whisk", "ladle", "spatula", "can opener"]
SYNTH = ["--per-class", "2", "--steps", "2", "--size", "32", "--batch-size", "8"]


def photos(folder, names=("Whisk", "LADLE", "spatula", "can_opener")):
    """The user's labelled photos: folder names differ from the class names in case, _ and spaces only."""
    return kit.make_image_folder(folder, classnames=names, per_class=2, size=(36, 36))


# ----------------------------------------------------------------------------------------------
# the chain, as a new user runs it

def test_text_file_synth_distill_zeroshot_and_table(tiny_sd, tiny_teacher, tmp_path):
    domain = tmp_path / "kitchen_tools.txt"
    domain.write_text("# my kitchen drawer\n" + "\n".join(KITCHEN[:2]) + "\n\n" + "\n".join(KITCHEN[2:]) + "\n")
    synth.main(["--dataset", str(domain), "--generator", str(tiny_sd), "--out", str(tmp_path / "synth"), *SYNTH])
    folder = tmp_path / "synth" / "kitchen_tools"
    info = json.loads((folder / "synth.json").read_text())
    assert (info["dataset"], info["domain"], info["classnames"], info["templates"]) == (
        None, "kitchen_tools", KITCHEN, ["a photo of a {c}."])
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[0]["prompt"].startswith("a photo of a whisk, ")
    assert all(any(o in r["prompt"] for o in domains.GENERIC_SLOTS["angle"]) for r in rows)

    run = tmp_path / "runs" / "kitchen_l2"  # the command is unchanged: the folder says what its classes are
    distill.main(["--data", str(folder), "--teacher", tiny_teacher, "--out", str(run), "--student", "test_vit",
                  "--image-size", "32", "--batch-size", "4", "--views", "1", "--steps", "2", "--workers", "0",
                  "--device", "cpu", "--holdout", "0.25"])
    ckpt = __import__("torch").load(run / "student.pt", weights_only=False)
    assert ckpt["classnames"] == KITCHEN and ckpt["templates"] == ["a photo of a {c}."]
    assert json.loads((run / "eval_holdout.json").read_text())["dataset"] == "kitchen_tools"

    out = tmp_path / "results" / "student_kitchen.json"
    zeroshot.main(["--model", str(run / "student.pt"), "--dataset", str(photos(tmp_path / "photos")),
                   "--domain", str(domain), "--workers", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    assert (result["dataset"], result["domain"], result["n"], result["num_classes"], result["source"]) == (
        "kitchen_tools", "kitchen_tools", 8, 4, "folder") and result["missing_classes"] is None
    text, record = bench_table.table([str(tmp_path / "results")])
    header = text.splitlines()[0]
    assert "| dtd | kitchen_tools | synthetic" in header
    cell = record["rows"]["kitchen_l2 (test_vit, l2)"]["domains"]["kitchen_tools"]
    assert cell["top1"] == 100 * result["metrics"]["acc1"]


def test_json_and_clip_benchmark_forms(tiny_sd, tiny_teacher, tmp_path):
    (tmp_path / "cb_classnames.json").write_text(json.dumps({"kitchen": KITCHEN}))
    (tmp_path / "cb_templates.json").write_text(json.dumps({"kitchen": ["a {c} in a kitchen.", "a photo of a {c}."]}))
    (tmp_path / "kitchen.json").write_text(json.dumps({
        "classnames": KITCHEN, "templates": ["a photo of a {c}, a kitchen tool."], "superclass": "a kitchen tool",
        "slots": {"setting": ["in a drawer", "on a hook", "in a sink"]}}))
    (tmp_path / "both.json").write_text(json.dumps({"name": "kitchen", "classnames": "cb_classnames.json",
                                                    "templates": "cb_templates.json"}))
    cb = domain_file.load_domain(str(tmp_path / "cb_classnames.json"))
    assert (cb.name, list(cb.classnames), list(cb.templates)) == ("kitchen", KITCHEN, ["a photo of a {c}."])
    both = domain_file.load_domain(str(tmp_path / "both.json"))
    assert list(both.templates) == ["a {c} in a kitchen.", "a photo of a {c}."] and both.name == "kitchen"

    synth.main(["--dataset", str(tmp_path / "kitchen.json"), "--generator", str(tiny_sd),
                "--out", str(tmp_path / "synth"), *SYNTH])
    folder = tmp_path / "synth" / "kitchen"
    prompts = [json.loads(line)["prompt"] for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert all(p.startswith(f"a photo of a {KITCHEN[i // 2]}, a kitchen tool, ") for i, p in enumerate(prompts))
    assert all(any(w in p for w in ("in a drawer", "on a hook", "in a sink")) for p in prompts)
    # what distill.py and zeroshot.py read of the folder: the JSON's classes and templates
    assert zeroshot.resolve_classes(str(folder)) == (KITCHEN, ["a photo of a {c}, a kitchen tool."])
    result = zeroshot.evaluate(tiny_teacher, str(folder), workers=0, progress=False)
    assert (result["dataset"], result["domain"], result["source"]) == ("kitchen", "kitchen", "synthetic")

    folder = photos(tmp_path / "photos")
    for i, name in enumerate(["cb_classnames.json", "both.json"]):  # CLIP_benchmark's files, as they are
        out = tmp_path / f"cb{i}.json"
        zeroshot.main(["--model", tiny_teacher, "--dataset", str(folder), "--domain", str(tmp_path / name),
                       "--workers", "0", "--out", str(out)])
        assert json.loads(out.read_text())["domain"] == "kitchen" and json.loads(out.read_text())["n"] == 8


def test_llm_words_for_a_domain_file(tmp_path, monkeypatch):
    """--prompts llm asks about the generic slots and puts the LLM's superclass word in the prompt."""
    from helpers import llm_attributes
    (tmp_path / "tools.txt").write_text("whisk\nladle\n")
    questions = []

    def answer(tokenizer, model, question, seed, max_new_tokens=160):
        questions.append(question)
        if "one word" in question:
            return "Utensil"
        slot = next(k for k in domains.GENERIC_SLOTS if llm_attributes.SLOT_QUESTIONS[k].split("{x}")[0] in question)
        return "\n".join(f"{i}. {slot} {i}" for i in range(1, 16))
    monkeypatch.setattr(llm_attributes, "load_llm", lambda *a: (None, None))
    monkeypatch.setattr(llm_attributes, "ask_llm", answer)
    synth.main(["--dataset", str(tmp_path / "tools.txt"), "--prompts", "llm", "--llm", "some/llm", "--per-class", "3",
                "--dry-run", "--out", str(tmp_path / "out")])
    attributes = json.loads((tmp_path / "out" / "tools" / "attributes.json").read_text())
    assert attributes["fallback"] == {} and list(attributes["classes"]["whisk"])[1:] == list(domains.GENERIC_SLOTS)
    assert "a photo of a whisk could be taken" in questions[1] and "a type of" not in questions[1]
    prompts = synth.make_prompts(domain_file.load_domain(str(tmp_path / "tools.txt")), ["whisk", "ladle"], 3, "llm",
                                 0, attributes)
    assert prompts[0][0].startswith("a photo of a whisk, a type of utensil, setting ")


# ----------------------------------------------------------------------------------------------
# bad domain files: one line, exit 2, nothing written

BAD_FILES = {  # name -> (file name, content (str, bytes or JSON object), what the line says)
    "empty": ("tools.txt", "", "holds no class names"),
    "comments only": ("tools.txt", "# whisk\n\n  \n", "holds no class names"),
    "one class": ("tools.txt", "whisk\n", "needs two or more"),
    "duplicate": ("tools.txt", "whisk\nladle\nwhisk\n", "duplicate class name 'whisk'"),
    "duplicate once normalised": ("tools.txt", "can opener\nladle\nCan_Opener\n", "the same as 'can opener'"),
    "not UTF-8": ("tools.txt", "whisk\nsp\xe4tzle press\n".encode("latin-1"), "is not UTF-8"),
    "invalid JSON": ("tools.json", '{"classnames": ["whisk",', "is not valid JSON"),
    "JSON list": ("tools.json", ["whisk", "ladle"], "holds a JSON list, not an object"),
    "classnames not strings": ("tools.json", {"classnames": ["whisk", 3]}, "must be a list of strings"),
    "classnames a number": ("tools.json", {"classnames": 4}, "must be a list of strings, not int"),
    "templates not a list": ("tools.json", {"classnames": KITCHEN, "templates": [["a {c}"]]}, "templates must be"),
    "template without {c}": ("tools.json", {"classnames": KITCHEN, "templates": ["a photo."]}, "has no {c}"),
    "template with other braces": ("tools.json", {"classnames": KITCHEN, "templates": ["a {c} {x}"]}, "braces"),
    "name not a string": ("tools.json", {"name": 7, "classnames": KITCHEN}, '"name" must be a string'),
    "name of a built-in": ("tools.json", {"name": "pets", "classnames": KITCHEN}, "is a built-in dataset's"),
    "unknown key": ("tools.json", {"classnames": KITCHEN, "template": ["a {c}"]}, "unknown key ['template']"),
    "slots too short": ("tools.json", {"classnames": KITCHEN, "slots": {"setting": ["a", "b"]}}, "at least 3"),
    "slots wrong type": ("tools.json", {"classnames": KITCHEN, "slots": ["a"]}, '"slots" must map'),
    "CLIP_benchmark two datasets": ("cb.json", {"a": KITCHEN, "b": KITCHEN}, "of 2 datasets (a, b)"),
    "CLIP_benchmark template file": ("cb.json", {"kitchen": ["a {c}."]}, "looks like a CLIP_benchmark template"),
    "CuPL prompts": ("tools.json", {"classnames": KITCHEN, "templates": "cupl.json"}, "per-class prompts"),
}


def write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_domain_file_is_one_line(case, tmp_path, capsys):
    name, content, words = BAD_FILES[case]
    write(tmp_path / "cupl.json", {"tools": {"whisk": ["a whisk"], "ladle": ["a ladle"]}})
    path = write(tmp_path / name, content)
    out = tmp_path / "out"
    kit.exits_with_one_line(synth.main, ["--dataset", str(path), "--out", str(out)], capsys, words)
    assert not out.exists()


def test_bad_domain_for_zeroshot_and_ambiguous_names(tiny_teacher, tmp_path, monkeypatch, capsys):
    folder = photos(tmp_path / "photos")
    out = tmp_path / "r.json"
    argv = ["--model", tiny_teacher, "--dataset", str(folder), "--workers", "0", "--out", str(out)]
    kit.exits_with_one_line(zeroshot.main, argv + ["--domain", str(write(tmp_path / "t.txt", "whisk\nwhisk\n"))],
                            capsys, "duplicate class name")
    kit.exits_with_one_line(zeroshot.main, argv + ["--domain", str(tmp_path / "none.txt")], capsys,
                            "--domain must be pets | flowers")
    kit.exits_with_one_line(zeroshot.main, argv + ["--allow-subset"], capsys, "--allow-subset goes with --domain")
    kit.exits_with_one_line(zeroshot.main, argv[:2] + ["--dataset", "pets", "--domain", "dtd", "--out", str(out)],
                            capsys, "--domain goes with a class_name/*.jpg folder as --dataset (pets is a built-in")
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pets", "whisk\nladle\n")  # a file named like a built-in dataset
    kit.exits_with_one_line(synth.main, ["--dataset", "pets", "--out", str(tmp_path / "o")], capsys,
                            "names both a built-in dataset and a file here: pass ./pets")
    kit.exits_with_one_line(zeroshot.main, argv + ["--domain", "pets"], capsys, "names both a built-in dataset")
    kit.exits_with_one_line(synth.main, ["--dataset", "./pets", "--out", str(tmp_path / "o")], capsys,
                            "is a built-in dataset's")
    assert not out.exists() and not (tmp_path / "o").exists()


def test_folder_names_are_matched_to_the_domain(tiny_teacher, tmp_path, capsys):
    domain = write(tmp_path / "kitchen_tools.txt", "\n".join(KITCHEN))
    out = tmp_path / "r.json"

    def run(folder, *extra):
        return ["--model", tiny_teacher, "--dataset", str(folder), "--domain", str(domain), "--workers", "0",
                "--out", str(out), *extra]
    line = kit.exits_with_one_line(zeroshot.main, run(photos(tmp_path / "a", ("whisk", "ladle", "fork", "spoon"))),
                                   capsys, "folders 'fork', 'spoon' match no class of domain kitchen_tools")
    assert "whisk, ladle, spatula, can opener" in line
    kit.exits_with_one_line(zeroshot.main, run(photos(tmp_path / "b", ("whisk", "Ladle"))), capsys,
                            "classes 'spatula', 'can opener' have no folder")
    assert not out.exists()
    zeroshot.main(run(tmp_path / "b", "--allow-subset"))  # the two present, against all four classes
    result = json.loads(out.read_text())
    assert result["missing_classes"] == ["spatula", "can opener"] and (result["n"], result["num_classes"]) == (4, 4)
    cells = bench_table.build_table(bench_table.load_results([str(out)]))
    assert bench_table.format_domain_cell(next(iter(cells.values()))["domains"]["kitchen_tools"]).endswith(
        "(2 of 4 classes)")


# ----------------------------------------------------------------------------------------------
# no default prompt gives a class named by a colour another colour

COLOURS = {"red", "pink", "white", "yellow", "purple", "orange", "blue", "green", "black", "violet", "lavender",
           "magenta", "crimson", "peach", "coral", "cream", "gold", "golden", "silver", "gray", "grey", "brown",
           "beige", "bronze", "burgundy", "scarlet", "lilac", "maroon", "navy", "turquoise", "amber", "ivory"}
NOT_THE_OBJECT = ("on a silver tray",)  # a colour that belongs to another thing in the picture
COLOURED = ["pink primrose", "yellow iris", "giant white arum lily", "purple coneflower", "orange dahlia",
            "red fox", "black-eyed susan", "Russian Blue", "red velvet cake"]


def colours(text):
    return set(re.findall(r"[a-z]+", text.lower())) & COLOURS


def contradictions(domain, classnames):
    """(class, prompt) pairs where a class named by a colour meets another colour, over every option of every
    slot (m * m prompts per class cover each option m times)."""
    m = min(map(len, domain.slots.values()))
    m -= 1 - m % 2
    bad = []
    for name, prompts in zip(classnames, synth.make_prompts(domain, classnames, m * m, "diverse", 0)):
        for p in prompts:
            rest = p[len(domain.head.replace("{c}", name)):]
            for phrase in NOT_THE_OBJECT:
                rest = rest.replace(phrase, "")
            if colours(name) and colours(rest) - colours(name):
                bad.append((name, p))
    return bad


@pytest.mark.parametrize("dataset", [*domains.DATASETS, "generic"])
def test_no_prompt_gives_a_colour_named_class_another_colour(dataset, tmp_path):
    if dataset == "generic":
        domain = domain_file.load_domain(str(write(tmp_path / "things.txt", "\n".join(COLOURED))))
        names = COLOURED
    else:
        domain = domain_file.builtin(dataset)
        names = [c for c in domains.CLASSNAMES[dataset] if colours(c)] or list(domains.CLASSNAMES[dataset][:2])
    assert contradictions(domain, names) == []


def test_flowers_dry_run_keeps_colours_and_the_papers_design(capsys, tmp_path):
    synth.main(["--dataset", "flowers", "--per-class", "225", "--dry-run", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()[:-1]
    assert len(lines) == 102 * 225 and not any(tmp_path.iterdir())
    by_class = {}
    for line in lines:
        prompt = line.split(" | ", 1)[1]
        name = prompt[len("a photo of a "):prompt.index(", a type of flower")]
        by_class.setdefault(name, []).append(prompt)
        assert not colours(name) or not colours(prompt) - colours(name), prompt
    bloom = domains.PROMPT_SLOTS["flowers"]["bloom"]
    assert len(bloom) == 15 and all(len(v) == 15 for v in domains.PROMPT_SLOTS["flowers"].values())
    rows = [p.split(", ")[2:] for p in by_class["pink primrose"]]  # bloom, location, time, angle
    assert all(r[0] in bloom for r in rows)
    for i, j in itertools.combinations(range(4), 2):  # pairwise covering: each pair of options once in 225
        assert len({(r[i], r[j]) for r in rows}) == 225
