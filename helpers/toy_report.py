"""toy.py's report: the table of the mark sweep (`marks_table`), the reading computed from it (`band`), the views
study's table (`views_table`), the corruptions study's tables (`corruptions_table`) and the picture (`plot`:
accuracy and mark-following against the mark's opacity, with seed bands and sample images)."""
import numpy as np
from PIL import Image

from helpers import common, corruptions
from helpers.toy_world import SHAPES, level_name


def mean_std(values, scale=100, digits=1):
    values = [scale * v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if len(values) > 1 else \
        f"{values[0]:.{digits}f}"


def marks_table(args, runs, teacher):
    """Markdown: one row per strength and loss (mean ± std over seeds), the teacher first at each strength."""
    lines = ["| s | loss | synthetic acc % | real acc % | follows mark % |", "|---|---|---|---|---|"]
    for s in args.strengths:
        t = teacher[level_name(s)]
        lines.append(f"| {level_name(s)} | teacher | {mean_std([t['synthetic']])} | {mean_std([t['real']])} | "
                     f"{mean_std([t['follows_mark']])} |")
        for loss in args.losses:
            rs = [r for r in runs if r["strength"] == s and r["loss"] == loss]
            lines.append(f"| {level_name(s)} | {loss} | {mean_std([r['synthetic'] for r in rs])} | "
                         f"{mean_std([r['real'] for r in rs])} | {mean_std([r['follows_mark'] for r in rs])} |")
    return "\n".join(lines)


def band(args, runs):
    """The reading's two questions, answered from the numbers: at which s does L2 stay within 2 points of its
    control while contrastive tau 0.01 (either text) loses >= 10, and at which s does every loss follow the mark in
    more than half of the images that carry another class's mark?"""
    def real(s, loss):
        return 100 * np.mean([r["real"] for r in runs if r["strength"] == s and r["loss"] == loss])

    def follows(s, loss):
        return 100 * np.mean([r["follows_mark"] for r in runs if r["strength"] == s and r["loss"] == loss])
    if 0 not in args.strengths or "l2" not in args.losses:
        return "(the band needs s = 0 and l2 in the sweep)"
    contrastive = [x for x in args.losses if x.startswith("contrastive tau 0.01")]
    marked = [s for s in args.strengths if s > 0]
    held = [s for s in marked if real(0, "l2") - real(s, "l2") <= 2 and any(
        real(0, c) - real(s, c) >= 10 for c in contrastive)]
    failed = [s for s in marked if all(follows(s, x) > 50 for x in args.losses)]
    say = ", ".join
    return (f"L2 within 2 points of its control while contrastive tau 0.01 loses >= 10: s = "
            f"{say(map(level_name, held)) or 'none'}. Every loss follows the mark in > 50% of other-mark images: "
            f"s = {say(map(level_name, failed)) or 'none'}.")


def views_table(args, runs, teacher):
    lines = ["| views per image (K) | real acc % | cosine to teacher, real | synthetic acc % |", "|---|---|---|---|",
             f"| teacher | {mean_std([teacher['0']['real']])} | 1 | {mean_std([teacher['0']['synthetic']])} |"]
    for v in args.views:
        rs = [r for r in runs if r["views"] == v]
        name = "fresh (--no-cache)" if v == "fresh" else v
        lines.append(f"| {name} | {mean_std([r['real'] for r in rs])} | "
                     f"{mean_std([r['cosine'] for r in rs], scale=1, digits=3)} | "
                     f"{mean_std([r['synthetic'] for r in rs])} |")
    return "\n".join(lines)


def corruptions_table(args, runs, teacher):
    """Markdown: per strength and loss (the teacher first) the clean real accuracy, the mean over every corruption
    and severity, the relative robustness (corrupted / clean, per seed) and the mean per corruption family; then
    per corruption (mean over severities); then the reading's numbers: L2 against contrastive at each strength."""
    pairs = list(teacher["corrupted"])
    families = {f: [p for p in pairs if p.split()[0] in names] for f, names in corruptions.FAMILIES.items()}
    families = {f: ps for f, ps in families.items() if ps}
    groups = [("-", "teacher", [{"real": teacher[level_name(args.strengths[0])]["real"],
                                 "corrupted": teacher["corrupted"]}])]
    groups += [(level_name(s), loss, [r for r in runs if r["strength"] == s and r["loss"] == loss])
               for s in args.strengths for loss in args.losses]

    def mean_over(r, ps):
        return float(np.mean([r["corrupted"][p] for p in ps]))
    lines = [f"| s | model | clean real acc % | corrupted acc % (mean of {len(pairs)}) | relative (corrupted / clean) "
             f"| " + " | ".join(families) + " |", "|---" * (5 + len(families)) + "|"]
    for level, name, rs in groups:
        lines.append(f"| {level} | {name} | {mean_std([r['real'] for r in rs])} | "
                     f"{mean_std([mean_over(r, pairs) for r in rs])} | "
                     f"{mean_std([mean_over(r, pairs) / r['real'] for r in rs], scale=1, digits=3)} | "
                     + " | ".join(mean_std([mean_over(r, ps) for r in rs]) for ps in families.values()) + " |")
    names = list(dict.fromkeys(p.split()[0] for p in pairs))
    lines += ["", "| corruption (mean over severities, acc %) | " + " | ".join(
        n if level == "-" else f"{n}, s = {level}" for level, n, _ in groups) + " |", "|---" * (1 + len(groups)) + "|"]
    for c in names:
        ps = [p for p in pairs if p.split()[0] == c]
        lines.append(f"| {c} | " + " | ".join(mean_std([mean_over(r, ps) for r in rs]) for _, _, rs in groups) + " |")
    reading = []
    l2, others = "l2", [x for x in args.losses if x != "l2"]
    for s in args.strengths:
        if l2 not in args.losses or not others:
            break
        rel = {x: [mean_over(r, pairs) / r["real"] for r in runs if r["strength"] == s and r["loss"] == x]
               for x in [l2] + others}
        reading.append(f"s = {level_name(s)}: relative robustness " + ", ".join(
            f"{x} {np.mean(v):.3f} ± {np.std(v):.3f}" for x, v in rel.items()) + "; l2 minus " + ", ".join(
            f"{x}: {np.mean(rel[l2]) - np.mean(rel[x]):+.3f}" for x in others) + ".")
    return "\n".join(lines) + ("\n\n" + " ".join(reading) if reading else "")


def plot(args, runs, teacher, folders, path):
    """toy.png: the same two synthetic images at each strength (top); real accuracy (left) and the share of
    other-mark images classified as the mark says (right) against s, mean and a ±1 std band over seeds per loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    levels = [level_name(s) for s in args.strengths]
    fig = plt.figure(figsize=(12, 6.6))
    grid = fig.add_gridspec(2, 1, height_ratios=[1.3, 4], hspace=0.3)
    top = grid[0].subgridspec(2, len(levels), wspace=0.05, hspace=0.05)
    for c, mark in enumerate(levels):
        items, _, _ = common.load_manifest(folders[f"synth_{mark}"])
        for r, i in enumerate([3, len(items) // 2 + 5]):  # two images of different classes
            ax = fig.add_subplot(top[r, c])
            with Image.open(folders[f"synth_{mark}"] / items[i][0]) as im:
                ax.imshow(np.asarray(im), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"s = {mark}", fontsize=9)
    bottom = grid[1].subgridspec(1, 2, wspace=0.2)
    x = np.arange(len(levels))
    for col, (metric, ylabel) in enumerate([("real", "zero-shot accuracy on real images (%)"),
                                            ("follows_mark", "other-mark images classified as the mark says (%)")]):
        ax = fig.add_subplot(bottom[col])
        for loss in args.losses:
            vals = [[100 * r[metric] for r in runs if (r["strength"], r["loss"]) == (s, loss) and r[metric] is not None]
                    for s in args.strengths]
            keep = [i for i, v in enumerate(vals) if v]
            mean, std = np.array([np.mean(vals[i]) for i in keep]), np.array([np.std(vals[i]) for i in keep])
            line, = ax.plot(x[keep], mean, marker="o", ms=3, label=loss)
            ax.fill_between(x[keep], mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
        t = [100 * teacher[m][metric] if teacher[m][metric] is not None else np.nan for m in levels]
        ax.plot(x, t, "k--", lw=1, label="teacher")
        ax.axhline(100 / len(SHAPES), color="gray", ls=":", lw=1, label="chance")
        ax.set_xticks(x, levels)
        ax.set_xlabel("mark opacity s (levels evenly spaced)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 102)
        if col == 0:
            ax.legend(fontsize=8, loc="lower left")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
