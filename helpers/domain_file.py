"""A domain: the class names that define a zero-shot task, the templates that turn them into the teacher's text
classifier, and the words synth.py builds its generation prompts from. One of the six built-in datasets
(helpers/domains.py), or a user's own domain file, read here for synth.py, distill.py and zeroshot.py
(docs/domains.md):

  kitchen_tools.txt    one class name per line (UTF-8; blank lines and lines starting with # are ignored);
                       the domain's name is the file's stem
  kitchen_tools.json   {"name": "kitchen_tools",                      optional, default: the file's stem
                        "classnames": ["whisk", "ladle", ...],
                        "templates": ["a photo of a {c}, a kitchen tool."],   optional, default below
                        "superclass": "a type of kitchen tool",       optional, joins the generation prompts
                        "slots": {"setting": [...], ...}}             optional, --prompts diverse words
  CLIP_benchmark's --custom_classname_file ({"<dataset>": [class names]}, one dataset); in the JSON form,
  "classnames" and "templates" may also name such a file and a --custom_template_file ({"<dataset>": [templates]}),
  relative to the domain file, whose entry for the domain's name (or its only entry) is used.

A bad file is one UserError line (what is wrong, where, what to do); nothing is written before it is read.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from helpers import domains
from helpers.common import UserError, require

DEFAULT_TEMPLATES = ["a photo of a {c}."]  # CLIP's plain prompt (ours: the shortest that works for any object)
KEYS = ("name", "classnames", "templates", "superclass", "slots")
MIN_OPTIONS = 3  # the pairwise-covering design needs an odd number >= 3 of options per slot (synth.make_prompts)


@dataclass(frozen=True)
class Domain:
    name: str                      # names the synth.py folder, the result files and the table's column
    classnames: tuple
    templates: tuple               # zero-shot templates, each with {c}
    head: str                      # the generation prompt's class phrase, with {c}
    type_of: Optional[str]         # the phrase of `head` that --prompts llm replaces by "a type of <its word>"
    slots: dict                    # --prompts diverse: slot -> options
    order: tuple                   # the slots in the order they follow the head in a prompt
    builtin: bool                  # one of helpers/domains.py's six datasets
    superclass_word: Optional[str] = None  # built-in datasets: the one word an LLM's answer falls back to

    def describe(self, classname):
        """How an LLM question names one class: 'a Beagle, a type of pet'."""
        if self.superclass_word:
            return f"a {classname}, a type of {self.superclass_word}"
        return f"a {classname}, {self.type_of}" if self.type_of else f"a {classname}"


def builtin(dataset):
    """One of the six datasets as a Domain: the paper's template is the generation prompt's head."""
    slots = domains.PROMPT_SLOTS[dataset]
    keys = list(slots)
    return Domain(dataset, tuple(domains.CLASSNAMES[dataset]), tuple(domains.PAPER_TEMPLATES[dataset]),
                  head=domains.PAPER_TEMPLATES[dataset][0].rstrip("."),
                  type_of=f"a type of {domains.SUPERCLASS[dataset]}", slots=slots,
                  order=(keys[2], keys[0], keys[1], keys[3]),  # "a photo of a Beagle, a type of pet, <pose>, ..."
                  builtin=True, superclass_word=domains.SUPERCLASS[dataset])


def load_domain(spec, flag="--dataset"):
    """The Domain a command line names: a built-in dataset's name or a domain file's path."""
    path = Path(spec).expanduser()
    if spec in domains.DATASETS:
        require(not path.exists(), f"{flag} {spec} names both a built-in dataset and a file here: pass ./{spec} for "
                                   f"the file, or run from another folder for the dataset")
        return builtin(spec)
    require(path.exists(), f"{flag} must be {' | '.join(domains.DATASETS)} (got '{spec}': no such dataset, and no "
                           f"such domain file)")
    require(path.is_file(), f"{flag} {spec} is a folder: pass a domain file (one class name per line, or JSON)")
    return read_domain_file(path)


def read_domain_file(path):
    path = Path(path)
    text = read_utf8(path)
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return from_json(path, parse_json(path, text))
    names = [line.strip() for line in text.splitlines()]
    return make_domain(path, path.stem, [n for n in names if n and not n.startswith("#")], DEFAULT_TEMPLATES)


def read_utf8(path):
    try:
        return path.read_bytes().decode("utf-8-sig")  # a BOM (Windows editors) is not part of the first name
    except UnicodeDecodeError as e:
        raise UserError(f"domain file {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read domain file {path} ({e.strerror or type(e).__name__})") from None


def parse_json(path, text):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"domain file {path} is not valid JSON ({e})") from None


def from_json(path, obj):
    """Our JSON form (it has "classnames"), or CLIP_benchmark's class-name file ({"<dataset>": [names]})."""
    require(isinstance(obj, dict), f"domain file {path} holds a JSON {type(obj).__name__}, not an object: write "
                                   f'{{"classnames": [...]}} (or one class name per line in a .txt file)')
    if "classnames" not in obj:  # CLIP_benchmark's --custom_classname_file
        name, names = clip_benchmark_entry(path, obj, None, "class names")
        return make_domain(path, name, names, DEFAULT_TEMPLATES)
    unknown = [k for k in obj if k not in KEYS]
    require(not unknown, f"domain file {path}: unknown key {unknown[:1]} (keys: {', '.join(KEYS)})")
    name = obj.get("name", path.stem)
    require(isinstance(name, str), f"domain file {path}: \"name\" must be a string, not {type(name).__name__}")
    classnames, templates = obj["classnames"], obj.get("templates", DEFAULT_TEMPLATES)
    if isinstance(classnames, str):
        classnames = clip_benchmark_entry(path.parent / classnames, None, name, "class names")[1]
    if isinstance(templates, str):
        templates = clip_benchmark_entry(path.parent / templates, None, name, "templates")[1]
    superclass = obj.get("superclass")
    require(superclass is None or (isinstance(superclass, str) and superclass.strip()),
            f"domain file {path}: \"superclass\" must be a phrase such as \"a type of kitchen tool\"")
    return make_domain(path, name, classnames, templates, superclass and superclass.strip(), obj.get("slots"))


def clip_benchmark_entry(path, obj, name, what):
    """(key, list) of a CLIP_benchmark custom file: the entry for `name`, or its only entry."""
    if obj is None:
        require(path.is_file(), f"{what} file {path} does not exist (named in a domain file, relative to it)")
        obj = parse_json(path, read_utf8(path))
        require(isinstance(obj, dict), f"{what} file {path} holds a JSON {type(obj).__name__}, not an object "
                                       f'{{"<dataset>": [...]}} (CLIP_benchmark\'s custom file format)')
    if name in obj:
        key = name
    else:
        require(len(obj) == 1, f"{path} holds {what} of {len(obj)} datasets ({', '.join(map(str, list(obj)[:5]))})"
                               f"{f', none named {name!r}' if name else ''}: keep the one you mean")
        key = next(iter(obj))
    value = obj[key]
    require(not isinstance(value, dict), f"{path}: {key!r} holds per-class prompts (CuPL style), which are not "
                                         f"supported: give a list of templates with {{c}}")
    require(what == "templates" or not (isinstance(value, list) and any("{c}" in str(v) for v in value)),
            f"{path} looks like a CLIP_benchmark template file (its entries hold {{c}}): pass the class-name file, "
            f"or name this one as \"templates\" in a JSON domain file")
    return key, value


def make_domain(path, name, classnames, templates, superclass=None, slots=None):
    """Check every part of a user's domain; a Domain, or one UserError line naming the file and the problem."""
    where = f"domain file {path}"
    require(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][\w.-]*", name),
            f"{where}: the domain name {name!r} must be letters, digits, _ . or - (it names folders and results)")
    require(name not in domains.DATASETS, f"{where}: the domain name {name!r} is a built-in dataset's: choose "
                                          f"another (\"name\", or the file's name)")
    require(isinstance(classnames, list) and all(isinstance(c, str) for c in classnames),
            f"{where}: class names must be a list of strings, not {type(classnames).__name__}")
    classnames = [c.strip() for c in classnames]
    require(classnames, f"{where} holds no class names: write one per line (or a JSON \"classnames\" list)")
    require(all(classnames), f"{where}: class name {classnames.index('') + 1 if '' in classnames else 0} is empty")
    require(len(classnames) >= 2, f"{where} holds one class name ({classnames[0]!r}): a classifier needs two or more")
    seen = {}
    for i, c in enumerate(classnames):
        first = classnames[seen.setdefault(normalise(c), i)]
        require(seen[normalise(c)] == i, f"{where}: duplicate class name {c!r}" + (
            f" (the same as {first!r}: case, _ and spaces do not count)" if first != c else ""))
    require(isinstance(templates, list) and templates and all(isinstance(t, str) for t in templates),
            f"{where}: templates must be a non-empty list of strings such as \"a photo of a {{c}}.\"")
    for t in templates:
        require("{c}" in t, f"{where}: template {t!r} has no {{c}} (where the class name goes)")
        try:
            t.format(c="x")
        except (KeyError, IndexError, ValueError):
            raise UserError(f"{where}: template {t!r} has braces other than {{c}}: write {{{{ and }}}} for a "
                            f"literal brace") from None
    slots = check_slots(where, slots)
    head = "a photo of a {c}" + (f", {superclass}" if superclass else "")
    return Domain(name, tuple(classnames), tuple(templates), head, superclass, slots, tuple(slots), builtin=False)


def check_slots(where, slots):
    """The generic slots, with the file's words in place of those it names; or four slots of the file's own."""
    if slots is None:
        return dict(domains.GENERIC_SLOTS)
    require(isinstance(slots, dict) and slots and all(
        isinstance(v, list) and all(isinstance(o, str) and o.strip() for o in v) for v in slots.values()),
        f"{where}: \"slots\" must map slot names to lists of words, e.g. {{\"setting\": [\"on a desk\", ...]}}")
    short = [k for k, v in slots.items() if len(set(v)) < MIN_OPTIONS]
    require(not short, f"{where}: slot {', '.join(map(repr, short))} needs at least {MIN_OPTIONS} different options")
    if set(slots) <= set(domains.GENERIC_SLOTS):
        return {k: slots.get(k, v) for k, v in domains.GENERIC_SLOTS.items()}
    require(len(slots) == 4, f"{where}: \"slots\" needs four slots of its own ({len(slots)} given), or some of the "
                             f"generic ones to replace ({', '.join(domains.GENERIC_SLOTS)})")
    return dict(slots)


def normalise(classname):
    """How a folder name matches a class name: case, underscores and runs of spaces do not count."""
    return " ".join(classname.replace("_", " ").split()).casefold()


def match_folders(folders, domain, allow_subset=False):
    """{folder name: class index} for a class_name/*.jpg folder evaluated on a domain. A folder that names no
    class of the domain is an error; so is a class without a folder, unless allow_subset."""
    index = {normalise(c): i for i, c in enumerate(domain.classnames)}
    extra = [f for f in folders if normalise(f) not in index]
    known = ", ".join(domain.classnames[:8]) + (" ..." if len(domain.classnames) > 8 else "")
    require(not extra, f"folder{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra[:8]))}"
                       f"{' ...' if len(extra) > 8 else ''} match{'' if len(extra) > 1 else 'es'} no class of domain "
                       f"{domain.name} ({known}): rename the folder{'s' if len(extra) > 1 else ''} or add the class to "
                       f"the domain file")
    found = {normalise(f) for f in folders}
    require(len(found) == len(folders), f"two folders name the same class of domain {domain.name} (case, _ and "
                                        f"spaces are ignored): {', '.join(sorted(folders, key=normalise))}; merge them")
    missing = [c for c in domain.classnames if normalise(c) not in found]
    require(allow_subset or not missing, f"domain {domain.name}'s class{'es' if len(missing) > 1 else ''} "
                                         f"{', '.join(map(repr, missing[:8]))}{' ...' if len(missing) > 8 else ''} "
                                         f"{'have' if len(missing) > 1 else 'has'} no folder: add "
                                         f"{'them' if len(missing) > 1 else 'it'}, or pass --allow-subset to "
                                         f"evaluate on the classes present")
    return {f: index[normalise(f)] for f in folders}
