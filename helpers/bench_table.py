"""The headline table: every zeroshot result JSON under the given paths as one row per model, each compared with
the published row it reproduces, in the metric and with the prompt templates that row's source used.

  - Students (ours and the paper's): top-1 on every dataset. The paper's student numbers come from the overview
    figure of the journal version (Popp, Metzen, Hein, TMLR 2024); the authors' code reports micro top-1
    (torchmetrics accuracy) for every dataset, with one template per class (zeroshot.py --templates paper).
  - The teacher (ViT-B-32 datacomp_xl_s13b_b90k) and MobileCLIP-S0: open_clip's published results, made with
    DataComp's evaluation (CLIP_benchmark, fp32): mean per-class recall for Pets, Flowers and Aircraft, top-1 for
    the others, with CLIP_benchmark's template sets (zeroshot.py --templates clip_benchmark --no-amp).

A result made with other templates than its published row's is shown but not compared (the cell says why).
A result on the user's own labelled photos of a domain file (zeroshot.py --domain) gets a column of its own, named
after the domain, beside the six: top-1 and mean per-class recall, compared with nothing.
Results on corrupted images (zeroshot.py --corruption) stay out of the headline: they make the robustness table
(`robustness_table`), one row per model and dataset with the teacher as the reference row.
"""
from pathlib import Path

from helpers import common, domains
from helpers.bench_timing import markdown
from helpers.common import require

TABLE_ORDER = ["pets", "cars", "flowers", "food101", "fgvc_aircraft", "dtd"]
TOP1 = {d: "acc1" for d in TABLE_ORDER}
DATACOMP = {**TOP1, "pets": "mean_per_class_recall", "flowers": "mean_per_class_recall",
            "fgvc_aircraft": "mean_per_class_recall"}
SHORT = {"acc1": "top-1", "mean_per_class_recall": "mpcr"}
STUDENT_PARAMS_M = 10.55  # the figure says "TinyViT-class" without a size: plotted at TinyViT-11M's

# Zero-shot %, real test sets: the rows we reproduce, each with its source's metric and templates.
PUBLISHED = {
    "paper: student L2, diverse synthetic": {
        "params_m": None, "metric": TOP1, "templates": "paper",
        "values": {"pets": 87.5, "cars": 81.9, "flowers": 68.3, "food101": 71.9, "fgvc_aircraft": 24.3, "dtd": 47.4}},
    "paper: student contrastive": {
        "params_m": None, "metric": TOP1, "templates": "paper",
        "values": {"pets": 66.7, "cars": 64.2, "flowers": 39.1, "food101": 28.0, "fgvc_aircraft": 17.1, "dtd": 38.8}},
    "open_clip: teacher ViT-B-32 datacomp_xl_s13b_b90k": {
        "params_m": 87.85, "metric": DATACOMP, "templates": "clip_benchmark",
        "values": {"pets": 90.02, "cars": 87.28, "flowers": 73.53, "food101": 86.32, "fgvc_aircraft": 24.63,
                   "dtd": 57.13}},
    "open_clip: MobileCLIP-S0": {
        "params_m": 11.4, "metric": DATACOMP, "templates": "clip_benchmark",
        "values": {"pets": 89.90, "cars": 79.34, "flowers": 67.34, "food101": 82.52, "fgvc_aircraft": 20.16,
                   "dtd": 57.50}},
}
RESULT_KEYS = ("dataset", "model", "templates", "metrics")


# ----------------------------------------------------------------------------------------------
# reading results

def result_files(paths):
    """[(path, named explicitly)]: the given files, and every *.json below the given folders."""
    files = []
    for p in map(Path, paths):
        require(p.exists(), f"{p} does not exist: pass result JSON files or folders holding them")
        files += [(f, False) for f in sorted(p.rglob("*.json"))] if p.is_dir() else [(p, True)]
    return files


def load_results(paths):
    """Every zeroshot result under `paths`. A folder's JSON object without "metrics" is another file (args.json,
    stream.json) and is passed over; a file that is not UTF-8 JSON, not an object, or a result missing keys is an
    error naming it."""
    results = []
    for f, named in result_files(paths):
        r = common.read_json(f, "result JSON")
        if not named and "metrics" not in r:
            continue
        missing = [k for k in RESULT_KEYS if k not in r]
        metrics = r.get("metrics")
        require(not missing, f"result JSON {f} lacks {', '.join(map(repr, missing))}: pass a zeroshot.py result")
        require(isinstance(metrics, dict) and all(isinstance(metrics.get(k), (int, float)) for k in SHORT),
                f"result JSON {f}: metrics must hold numbers acc1 and mean_per_class_recall: rerun zeroshot.py")
        results.append({**r, "_file": str(f)})
    return results


def reference(r):
    """The published row a result is compared with: a student's by its loss, everything else the teacher's."""
    info = r.get("model_info") or {}
    if info.get("kind") == "student":
        return "paper: student contrastive" if info.get("loss") == "contrastive" else \
            "paper: student L2, diverse synthetic"
    return "open_clip: teacher ViT-B-32 datacomp_xl_s13b_b90k"


def row_key(r):
    """One row per model; a result made with other templates than its reference's gets a row of its own."""
    info = r.get("model_info") or {}
    key = f"{r['model']} ({info.get('arch')}, {info.get('loss') or '?'})" if info.get("kind") == "student" \
        else r["model"]
    if r["templates"] != PUBLISHED[reference(r)]["templates"] and not is_domain_result(r):
        key += f", {r['templates']} templates"
    return key + (f", {r['precision']}" if r.get("precision", "fp32") != "fp32" else "")


# ----------------------------------------------------------------------------------------------
# the table

def is_domain_result(r):
    """A result on the user's own labelled photos of a domain file's classes (zeroshot.py --domain)."""
    return bool(r.get("domain")) and r.get("source") == "folder"


def build_table(results):
    """rows: key -> {"reference", "params_m", "real": {dataset: cell dict}, "synthetic": {dataset: top-1 %},
    "domains": {domain name: cell dict}}."""
    rows = {}
    for r in results:
        if r.get("corruption"):  # the robustness table's
            continue
        ref_name = reference(r)
        ref = PUBLISHED[ref_name]
        row = rows.setdefault(row_key(r), {"reference": ref_name, "params_m": None, "real": {}, "synthetic": {},
                                           "domains": {}})
        info = r.get("model_info") or {}
        if info.get("image_params"):
            row["params_m"] = info["image_params"] / 1e6
        m, d = r["metrics"], r["dataset"]
        if r.get("source", "real") == "real" and d in domains.DATASETS:
            metric = ref["metric"][d]
            other = "acc1" if metric != "acc1" else "mean_per_class_recall"
            cell = {"metric": metric, "value": 100 * m[metric], "other_metric": other, "other": 100 * m[other],
                    "top1": 100 * m["acc1"], "templates": r["templates"], "precision": r.get("precision"),
                    "diff": None, "file": r["_file"]}
            if r["templates"] == ref["templates"]:
                cell["diff"] = cell["value"] - ref["values"][d]
            row["real"][d] = cell
        elif is_domain_result(r):
            row["domains"][r["domain"]] = {"top1": 100 * m["acc1"], "mpcr": 100 * m["mean_per_class_recall"],
                                           "missing": len(r.get("missing_classes") or []),
                                           "classes": r.get("num_classes"), "file": r["_file"]}
        elif r.get("source") == "synthetic":
            row["synthetic"][d] = 100 * m["acc1"]
    return rows


def format_cell(c):
    """'85.00 mpcr (-5.02), top-1 80.00': the value in its reference's metric, the difference to the reference
    (or why there is none), the other metric."""
    note = f"({c['diff']:+.2f}{', ' + c['precision'] if c['precision'] not in (None, 'fp32') else ''})" \
        if c["diff"] is not None else f"(not compared: {c['templates']} templates)"
    return f"{c['value']:.2f} {SHORT[c['metric']]} {note}, {SHORT[c['other_metric']]} {c['other']:.2f}"


def table(paths, plot_path=None):
    """The Markdown table (ours, then the published rows) and its record; a PNG plot if plot_path is given."""
    results = load_results(paths)
    require(results, f"no zeroshot result JSON found under {' '.join(paths) or '(no paths given)'}")
    rows = build_table(results)
    own = sorted({d for row in rows.values() for d in row["domains"]})  # the user's domains, by name
    header = ["model", "params", "compared with"] + TABLE_ORDER + own + ["synthetic top-1 (minus real top-1)"]
    out = []
    for key, row in rows.items():
        cells = [key, "" if row["params_m"] is None else f"{row['params_m']:.2f}M", row["reference"]]
        cells += [format_cell(row["real"][d]) if d in row["real"] else "" for d in TABLE_ORDER]
        cells += [format_domain_cell(row["domains"][d]) if d in row["domains"] else "" for d in own]
        gaps = []
        for d, s in row["synthetic"].items():
            real = row["real"].get(d)
            gaps.append(f"{d} {s:.1f}" + (f" ({s - real['top1']:+.1f})" if real else ""))
        out.append(cells + ["; ".join(gaps)])
    for name, ref in PUBLISHED.items():
        out.append([name, "" if ref["params_m"] is None else f"{ref['params_m']:.2f}M", "(published)"]
                   + [f"{ref['values'][d]:.2f} {SHORT[ref['metric'][d]]}" for d in TABLE_ORDER] + [""] * len(own)
                   + [""])
    note = ("Each cell: the value in the metric of the published row it is compared with (top-1 for students on "
            "every dataset, as the authors' code reports; DataComp's mean per-class recall (mpcr) for Pets, Flowers "
            "and Aircraft and top-1 otherwise for the teacher), the difference to that row, then the other metric. "
            "Students compare with `--templates paper` results, the teacher with `--templates clip_benchmark "
            "--no-amp` ones; other templates are shown, not compared. Synthetic: held-out synthetic top-1 (minus "
            "real top-1).") + (f" {', '.join(own)}: your own labelled photos (zeroshot.py --domain), top-1 and mpcr, "
                               f"compared with nothing." if own else "")
    if plot_path:
        plot(rows, plot_path)
    robust, robust_rows = robustness_table(results)
    return markdown(header, out) + "\n\n" + note + robust, {"rows": rows, "plot": plot_path, "robustness": robust_rows}


# ----------------------------------------------------------------------------------------------
# robustness: clean against corrupted top-1, per model and dataset

def robustness_table(results):
    """('\n\n' + Markdown, rows) when some results are on corrupted images, else ('', []). Per model and dataset:
    top-1 on clean images, the mean top-1 over its (corruption, severity) results, their ratio (relative
    robustness), and that ratio minus the teacher's on the same dataset (the first teacher is the reference)."""
    groups = {}
    for r in results:
        key = (row_key(r), r["dataset"], r.get("source", "real"))
        g = groups.setdefault(key, {"teacher": (r.get("model_info") or {}).get("kind") == "teacher", "clean": None,
                                    "corrupted": {}})
        if r.get("corruption"):
            g["corrupted"][f"{r['corruption']} {r['severity']}"] = 100 * r["metrics"]["acc1"]
        else:
            g["clean"] = 100 * r["metrics"]["acc1"]
    rows = []
    for (model, dataset, _), g in sorted(groups.items(), key=lambda kv: (kv[0][1], not kv[1]["teacher"], kv[0][0])):
        if not g["corrupted"]:
            continue
        mean = sum(g["corrupted"].values()) / len(g["corrupted"])
        rows.append({"model": model, "dataset": dataset, "teacher": g["teacher"], "clean": g["clean"],
                     "corrupted": mean, "pairs": sorted(g["corrupted"]),
                     "relative": mean / g["clean"] if g["clean"] else None})
    if not rows:
        return "", []
    out = []
    for row in rows:
        ref = next((x for x in rows if x["teacher"] and x["dataset"] == row["dataset"]), None)
        vs = "(reference)" if row is ref else "" if ref is None or None in (ref["relative"], row["relative"]) else \
            f"{row['relative'] - ref['relative']:+.3f}"
        if ref is not None and row is not ref and row["pairs"] != ref["pairs"]:
            vs += f" (other corruptions than the teacher's {len(ref['pairs'])})"
        out.append([row["model"], row["dataset"], len(row["pairs"]),
                    "no clean result" if row["clean"] is None else f"{row['clean']:.2f}", f"{row['corrupted']:.2f}",
                    "" if row["relative"] is None else f"{row['relative']:.3f}", vs])
    header = ["model", "dataset", "corruptions x severities", "clean top-1", "corrupted top-1 (mean)",
              "relative robustness (corrupted / clean)", "relative minus the teacher's"]
    note = ("Robustness: top-1 on the clean test split and its mean over the (corruption, severity) results found "
            "(zeroshot.py --corruption, ImageNet-C's corruptions); the teacher is the reference row.")
    return "\n\n" + markdown(header, out) + "\n\n" + note, rows


def target_table():
    """The rows a reproduction aims at (the paper's two students and the teacher), as the README shows them: made
    from PUBLISHED, and a test keeps the README's copy equal to it."""
    names = {"pets": "Pets", "cars": "Cars", "flowers": "Flowers", "food101": "Food", "fgvc_aircraft": "Aircraft",
             "dtd": "DTD"}
    rows = [("student, L2 feature distillation (the paper's method)", "paper: student L2, diverse synthetic", 1),
            ("student, contrastive distillation (the baseline)", "paper: student contrastive", 1),
            ("teacher ViT-B-32 datacomp_xl_s13b_b90k", "open_clip: teacher ViT-B-32 datacomp_xl_s13b_b90k", 2)]
    cells = [[label] + [f"{PUBLISHED[key]['values'][d]:.{decimals}f}" + ("*" if PUBLISHED[key]["metric"][d] != "acc1"
                                                                         else "") for d in TABLE_ORDER]
             for label, key, decimals in rows]  # *: mean per-class recall, DataComp's metric there; else top-1
    return markdown(["zero-shot %, real test sets"] + [names[d] for d in TABLE_ORDER], cells)


def format_domain_cell(c):
    """'75.00 top-1, mpcr 70.00' on the user's photos of a domain; '(3 of 4 classes)' when some had no folder."""
    some = f" ({c['classes'] - c['missing']} of {c['classes']} classes)" if c["missing"] else ""
    return f"{c['top1']:.2f} top-1, mpcr {c['mpcr']:.2f}{some}"


def plot(rows, path):
    """Mean zero-shot accuracy over the datasets present (each row in its reference's metric) against
    image-encoder parameters."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = []
    for key, row in rows.items():
        if row["real"] and row["params_m"]:
            y = sum(c["value"] for c in row["real"].values()) / len(row["real"])
            ax.scatter(row["params_m"], y, marker="o", s=50)
            label = f"{key} ({len(row['real'])} dataset{'s' if len(row['real']) > 1 else ''})"
            ax.annotate(label, (row["params_m"], y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            xs.append(row["params_m"])
    for name, ref in PUBLISHED.items():
        x = ref["params_m"] or STUDENT_PARAMS_M
        y = sum(ref["values"].values()) / len(ref["values"])
        ax.scatter(x, y, marker="x", s=60, color="gray")
        ax.annotate(name + ("" if ref["params_m"] else " (x: TinyViT-11M's size)"), (x, y), fontsize=7,
                    color="gray", xytext=(4, -10), textcoords="offset points")
        xs.append(x)
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 2, max(xs) * 8)  # room for the labels right of the points
    ax.set_xlabel("image-encoder parameters (millions, log scale)")
    ax.set_ylabel("mean zero-shot accuracy, % (each row in its source's metric)")
    ax.set_title("Zero-shot accuracy vs image-encoder size (o: ours, x: published)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with common.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
