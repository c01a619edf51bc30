"""synth.py --prompts llm: an instruction-tuned LM writes each class's attribute options.

The paper's authors asked Llama-2-7b-chat, per class, for options of each prompt attribute (location, time of
day, a domain slot such as pose or serving, camera angle) and for a one-word superclass. Here any causal LM
with a chat template does (default Qwen/Qwen2.5-1.5B-Instruct). Answers are parsed strictly; a class whose answer
stays malformed after a few seeded retries falls back to helpers/domains.py's words for that attribute. The result is
written once to <out>/<dataset>/attributes.json and reused by every later run on that folder:

  {"llm": ID, "seed": S, "retries": 3, "fallback": {class: [attributes that fell back]},
   "classes": {class: {"superclass": "dog", "location": [15 options], "time": [...], ...}}}

Under torchrun only rank 0 runs the LLM; the other ranks wait for the file (wait_for_attributes), not in a
collective, whose timeout (NCCL: 10 minutes by default) is shorter than a large LLM may need.
"""
import os
import re
import time

import torch
from tqdm import tqdm

from helpers import common, domain_file, models
from helpers.common import UserError, require

LLM_RETRIES = 3      # attempts per (class, attribute) before falling back to helpers/domains.py's words
LLM_MAX_WORDS = 6    # an option longer than this is prose, not a phrase
WAIT_S = 6 * 3600    # how long other ranks wait for rank 0's attributes.json (a 7B LLM on 200 classes: ~1-2 h)
POLL_S = 5.0         # how often they look
SLOT_QUESTIONS = {   # what each attribute asks for; {x} = "a <class name>, a type of <superclass>"
    "location": "places or settings where a photo of {x} could be taken",
    "time": "times of day, seasons or lighting conditions for a photo of {x}",
    "pose": "poses or activities of {x} that a photo could show",
    "colour": "colours or colour combinations that {x} can have",
    "bloom": "stages of bloom, numbers or arrangements of blooms of {x} that a photo could show",
    "setting": "surroundings in which a photo of {x} could be taken",
    "lighting": "lighting conditions or times of day for a photo of {x}",
    "photo": "kinds of photograph (snapshot, product photo, ...) that could show {x}",
    "serving": "ways {x} can be served or presented on a table",
    "material": "objects or surfaces on which {x} texture can appear",
    "angle": "camera angles or shot types for a photo of {x}",
}
NUMBERED = re.compile(r"^\s*\(?(\d{1,2})\s*[.):]\s*(.*?)\s*$")  # "1. x", "1) x", "(1) x", "1: x"
ALLOWED = re.compile(r"^[a-z0-9][a-z0-9 ,'&/-]*$")


def parse_options(text, n, max_words=LLM_MAX_WORDS):
    """The first n distinct options of a numbered list, or None if the answer has fewer than n usable ones.

    Lines that are not numbered (a chatty preamble, a closing remark) are ignored; a numbered item is
    dropped if it is empty, longer than max_words words, or holds anything but plain words (prose,
    markup, a sentence with a colon); duplicates (case-insensitive) are dropped.
    """
    items = []
    for line in text.splitlines():
        m = NUMBERED.match(line)
        if not m:
            continue
        item = m.group(2).strip(" \t\"'`*_.;,!").lower()  # markup, quotes, end punctuation
        if not item or len(item.split()) > max_words or not ALLOWED.match(item) or item in items:
            continue
        items.append(item)
    return items[:n] if len(items) >= n else None


def parse_word(text):
    """A one-word answer ("dog"), lower-cased, or None."""
    words = re.findall(r"[A-Za-z]+", text.strip().splitlines()[0] if text.strip() else "")
    return words[0].lower() if len(words) == 1 and len(words[0]) <= 20 else None


def load_llm(llm_id, device):
    """Tokenizer and causal LM from a hub id or a local folder; offline misses fail in seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not os.path.isdir(llm_id) and models.hub_offline():
        require(models.in_hub_cache(llm_id, "config.json"),
                f"LLM {llm_id} is not in the local Hugging Face cache and the hub cannot be reached (offline): "
                f"download it once with internet, or pass --llm /path/to/a/local/model/folder")
    import transformers
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}
    try:
        tokenizer = AutoTokenizer.from_pretrained(llm_id)
        model = AutoModelForCausalLM.from_pretrained(llm_id, **kwargs).to(device).eval()
    except (OSError, ValueError) as e:
        raise UserError(f"could not load LLM {llm_id}: {str(e).splitlines()[0][:200]}") from None
    return tokenizer, model


def ask_llm(tokenizer, model, question, seed, max_new_tokens=160):
    """One sampled answer to one question (seeded, so a rerun asks and gets the same)."""
    messages = [{"role": "user", "content": question}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = question + "\n"
    inputs = tokenizer(text, return_tensors="pt").to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def answer_seed(seed, c, question):
    """60-bit sampling seed of one question about class c: a hash, so attempts and classes get unrelated draws."""
    return int(common.fingerprint([seed, c, question], 15), 16)


def as_domain(dataset):
    """A built-in dataset's name or a domain_file.Domain, as a Domain."""
    return domain_file.builtin(dataset) if isinstance(dataset, str) else dataset


def question_about(slot):
    """What to ask for a slot; a domain file's own slot names are asked for as they are named."""
    return SLOT_QUESTIONS.get(slot, f"options of '{slot.replace('_', ' ')}' for a photo of {{x}}")


def write_attributes(path, llm, dataset, classnames, seed, device):
    """Ask the LLM for every class's superclass and attribute options, save attributes.json, return it."""
    domain = as_domain(dataset)
    slots = list(domain.slots)
    n = len(domain.slots[slots[0]])  # as many options as the built-in lists (15)
    tokenizer, model = load_llm(llm, device)
    classes, fallback = {}, {}
    for c, name in enumerate(tqdm(classnames, desc="LLM attributes", unit="class")):
        x = domain.describe(name)
        entry = {"superclass": None}
        for attempt in range(LLM_RETRIES):
            entry["superclass"] = parse_word(ask_llm(
                tokenizer, model, f"In one word, what kind of thing is a {name}? Answer with the single word only.",
                seed=answer_seed(seed, c, f"superclass/{attempt}"), max_new_tokens=8))
            if entry["superclass"]:
                break
        entry["superclass"] = entry["superclass"] or domain.superclass_word or "object"
        for slot in slots:
            options = None
            for attempt in range(LLM_RETRIES):
                question = (f"List {n} different {question_about(slot).format(x=x)}. Answer with a numbered list "
                            f"only: one short phrase of at most {LLM_MAX_WORDS} words per line, no explanations.")
                options = parse_options(ask_llm(tokenizer, model, question, answer_seed(seed, c, f"{slot}/{attempt}")),
                                        n)
                if options:
                    break
            if options is None:
                options = list(domain.slots[slot])
                fallback.setdefault(name, []).append(slot)
            entry[slot] = options
        classes[name] = entry
    del model, tokenizer  # free the LLM before the diffusion model is loaded, so both fit one GPU
    if device.type == "cuda":
        torch.cuda.empty_cache()
    attributes = {"llm": llm, "seed": seed, "retries": LLM_RETRIES, "classes": classes, "fallback": fallback}
    common.save_json(attributes, path)  # atomic: a waiting rank never reads half a file
    return attributes


def read_attributes(path, llm, dataset, classnames, seed):
    """A previous run's attributes.json, checked: written by this LLM and seed for these classes, well formed."""
    attributes = common.read_json(path, "attributes.json", keys=("llm", "seed", "classes", "fallback"))
    require(isinstance(attributes["classes"], dict) and isinstance(attributes["fallback"], dict),
            f"{path}: classes and fallback are not JSON objects; it was edited: delete it to ask {llm} again")
    require(attributes["llm"] == llm and attributes["seed"] == seed
            and list(attributes["classes"]) == list(classnames),
            f"{path} was written by {attributes['llm']} (seed {attributes['seed']}) for other settings; use another "
            f"--out, or delete it to ask {llm} again")
    slots = as_domain(dataset).slots
    needed = min(len(v) for v in slots.values())  # what make_prompts draws from
    for name, entry in attributes["classes"].items():
        ok = isinstance(entry, dict) and isinstance(entry.get("superclass"), str) and all(
            isinstance(entry.get(slot), list) and len(entry[slot]) >= needed and all(isinstance(o, str)
                                                                                    for o in entry[slot])
            for slot in slots)
        require(ok, f"{path}: class {name!r} lacks a superclass word or {needed} options for each of "
                    f"{', '.join(slots)}; it was edited: delete it to ask {llm} again")
    return attributes


def wait_for_attributes(path, llm, dataset, classnames, seed, wait_s=WAIT_S):
    """What torchrun's other ranks do while rank 0 runs the LLM: poll for attributes.json, then read it.

    The file appears by an atomic rename, so once it exists it is complete. If rank 0 fails, torchrun stops
    this rank too; the bound only ends a wait that nothing else would.
    """
    deadline = time.monotonic() + wait_s
    if not path.is_file():
        print(f"waiting up to {wait_s / 3600:.1f} h for rank 0 to write {path} with {llm}", flush=True)
    while not path.is_file():
        require(time.monotonic() < deadline,
                f"{path} did not appear within {wait_s / 3600:.1f} h. Write it with one process first "
                f"(python synth.py --prompts llm --llm {llm} --dry-run, with this run's --dataset, --seed, --out), "
                f"then start torchrun again: it reuses the file")
        time.sleep(POLL_S)
    return read_attributes(path, llm, dataset, classnames, seed)


def get_attributes(path, llm, dataset, classnames, seed, device, is_main=True):
    """attributes.json's content: reused if it exists, else written by the main process (others wait for it)."""
    if not is_main:
        return wait_for_attributes(path, llm, dataset, classnames, seed)
    if path.is_file():
        attributes = read_attributes(path, llm, dataset, classnames, seed)
    else:
        attributes = write_attributes(path, llm, dataset, classnames, seed, device)
    fell_back = ", ".join(f"{c} ({'/'.join(s)})" for c, s in attributes["fallback"].items())
    print(f"attributes: {path} ({llm}); fell back to helpers/domains.py words for {len(attributes['fallback'])} of "
          f"{len(classnames)} classes{': ' + fell_back if fell_back else ''}")
    return attributes
