"""The docs cannot drift from the code: every `python X.py ...` and `torchrun ... X.py ...` command in a ```bash
block of README.md and docs/*.md names a script that exists and parses with that script's own parser (its main,
stopped right after `common.parse_args`, so nothing runs); the README's target table is the one bench_table makes."""
import importlib
import re
import shlex
from pathlib import Path

import pytest

from helpers import bench_table, common

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = ("synth", "distill", "zeroshot", "export", "bench", "toy")  # the scripts at the top, parsed by their main
SHELL_ENDS = {"|", "||", "&&", ";", "&"}


class Parsed(Exception):
    """Raised right after a script's command line parsed: the script stops before it does anything."""


def commands(text):
    """(line, script path, argv) of every python/torchrun command in the ```bash blocks of a Markdown text."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):  # VAR=value before a command
                tokens.pop(0)
            if not tokens or tokens[0] not in ("python", "torchrun"):
                continue
            script = next((i for i, t in enumerate(tokens[1:], 1) if t.endswith(".py")), None)
            if script is None or (tokens[0] == "python" and script != 1):  # python -m pytest, python -c ...
                continue
            argv = tokens[script + 1:]
            end = next((i for i, t in enumerate(argv) if t in SHELL_ENDS or t.startswith((">", "2>"))), len(argv))
            found.append((line.strip(), tokens[script], argv[:end]))
    return found


def parse_only(script, argv, monkeypatch):
    """Parse argv with the script's own entry point; None when it parses, else what the parser said."""
    real = common.parse_args

    def parse_and_stop(*a, **k):
        raise Parsed(real(*a, **k))
    module = importlib.import_module(script)
    monkeypatch.setattr(common, "parse_args", parse_and_stop)
    try:
        module.main(argv)
    except Parsed:
        return None
    except SystemExit as e:  # argparse (unknown flag, bad value) or a script's own check of its command line
        return f"exit {e.code}"
    finally:
        monkeypatch.setattr(common, "parse_args", real)
    return "ran without parsing its command line"


def problems(path, monkeypatch, capsys):
    """One line per command of the file that names no existing script or does not parse."""
    out = []
    text = path.read_text()
    written = set(re.findall(r"```python\n# (\S+\.py)\n", text))  # a script the page itself gives the user to save
    for line, script, argv in commands(text):
        name = Path(script).stem
        if not (ROOT / script).is_file() and script not in written:
            out.append(f"{line}: no file {script}")
        elif Path(script).parent == Path(".") and name in SCRIPTS:
            said = parse_only(name, argv, monkeypatch)
            err = capsys.readouterr().err.strip().splitlines()
            if said:
                out.append(f"{line}: {said}: {err[-1] if err else ''}")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_command_in_the_docs_parses(doc, monkeypatch, capsys):
    assert problems(doc, monkeypatch, capsys) == []


def test_the_docs_run_every_script():
    named = {Path(s).stem for doc in DOCS for _, s, _ in commands(doc.read_text())}
    assert set(SCRIPTS) <= named  # the check above reads real commands, of every script


def test_a_broken_flag_in_a_readme_command_fails(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    assert "--per-class 4 " in text
    broken = tmp_path / "README.md"
    broken.write_text(text.replace("--per-class 4 ", "--per-klass 4 ", 1))
    [problem] = problems(broken, monkeypatch, capsys)
    assert problem.startswith("python synth.py --dataset pets --per-klass 4") and "--per-klass" in problem
    broken.write_text(text.replace("python distill.py", "python distil.py", 1))
    assert any("no file distil.py" in p for p in problems(broken, monkeypatch, capsys))


def test_readme_shows_the_target_table_bench_table_makes():
    assert bench_table.target_table() in (ROOT / "README.md").read_text()
