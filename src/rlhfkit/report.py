"""What a person reads after a run: report.md (tables, answers side by side), winrate.png, curves.png."""

from __future__ import annotations

from pathlib import Path

from rlhfkit.rundir import open_atomic, write_atomic
from rlhfkit.training import read_metrics


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # -0.00: a KL estimate of about 0


def is_ceiling(stats: dict) -> bool:
    """A policy trained on the world's gold judge instead of a reward model (`ppo --reward-model gold`): the
    upper reference of every method that learns from a reward model."""
    return stats.get("reward") == "gold"


def label(name: str, stats: dict) -> str:
    """A model's name as the tables and figures show it: the ceiling says what it is."""
    return f"{name}: {stats.get('algo', 'ppo').upper()} on gold (ceiling)" if is_ceiling(stats) else name


def ordered(report: dict) -> list[tuple[str, dict]]:
    """The models in the report's order, the ceiling rows last (the upper reference the rest are read against)."""
    models = list(report["models"].items())
    return [m for m in models if not is_ceiling(m[1])] + [m for m in models if is_ceiling(m[1])]


def write_markdown(report: dict, path: Path, timings: dict | None = None) -> None:
    ref, n = report["reference"], report["samples_per_prompt"]
    kl_ref = report.get("kl_reference", ref)
    source = report.get("prompts", "world")
    prompts = "held-out prompts" if source == "world" else f"prompts of {source}"
    lines = [
        "# rlhfkit evaluation",
        "",
        f"{report['n_prompts']} {prompts} × {n} sample{'s' if n != 1 else ''}; judge: {report['judge']}; "
        f"win rate against **{ref}** (ties count ½), 95% bootstrap interval over prompts.",
        "",
        "| model | win rate vs "
        + ref
        + f" | 95% CI | gold score (0–10) | KL to {kl_ref} (nats) | pretrain ppl | length (chars) | ends with EOS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in ordered(report):
        lo, hi = m["win_rate_ci"]
        lines.append(
            f"| {label(name, m)} | {_fmt(m['win_rate'])} | [{_fmt(lo)}, {_fmt(hi)}] | {_fmt(m.get('gold_score'), 2)} | "
            f"{_fmt(m.get('kl_to_sft'), 2)} | {_fmt(m.get('pretrain_ppl'), 2)} | {m['mean_length']:.1f} | {m['eos_fraction']:.2f} |"
        )
    ceiling = [name for name, m in ordered(report) if is_ceiling(m)]
    if ceiling:
        lines += [
            "",
            f"**{', '.join(ceiling)}** is trained on the embedded world's gold judge instead of the reward model "
            "(`ppo --reward-model gold`), with the same Step3 settings: the upper reference. Its gap to the "
            "methods trained on the reward model is the reward model's alone.",
        ]
    if any(m.get("kl_is_analytic") for m in report["models"].values()):
        lines += [
            "",
            f"KL of the best-of-n rows is the analytic log n − (n−1)/n against {ref}'s own answers at the eval "
            "temperature; the trained models' KL is sampled at T = 1 — the two are not the same measurement.",
        ]
    families = sorted({f for m in report["models"].values() for f in m.get("by_family", {})})
    if families:
        lines += [
            "",
            "## Win rate by prompt family",
            "",
            "| model | " + " | ".join(families) + " |",
            "|---|" + "---|" * len(families),
        ]
        for name, m in ordered(report):
            cells = [_fmt(m["by_family"].get(f, {}).get("win_rate")) for f in families]
            lines.append(f"| {label(name, m)} | " + " | ".join(cells) + " |")
    lines += headroom_lines(report)
    lines += rounds_lines(report)
    travel = {
        n: m["by_family"]["travel"].get("attractions_all_in_city")
        for n, m in report["models"].items()
        if "travel" in m.get("by_family", {})
    }
    if travel and any(v is not None for v in travel.values()):
        lines += [
            "",
            "Travel answers naming only attractions of the asked city (≥ 1 named): "
            + ", ".join(f"{n} {_fmt(v, 2)}" for n, v in travel.items()),
        ]
    dims = next((list(m["gold_dims"]) for m in report["models"].values() if m.get("gold_dims")), [])
    if dims:
        lines += [
            "",
            "## Gold score by dimension (0–1, held-out oracle)",
            "",
            "| model | " + " | ".join(dims) + " |",
            "|---|" + "---|" * len(dims),
        ]
        for name, m in ordered(report):
            lines.append(
                f"| {label(name, m)} | " + " | ".join(_fmt(m["gold_dims"][d], 2) for d in dims) + " |"
            )
    if timings:
        lines += ["", "## Wall time per step (seconds)", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {step} | {sec:.1f} |" for step, sec in timings.items()]
        lines.append(f"| **sum of the steps** | {sum(timings.values()):.1f} |")
        seconds = report.get("seconds", {})
        if "wall" in seconds:  # the pipeline's: steps run side by side (--jobs) add up to more than it took
            jobs = seconds.get("jobs", 1)
            lines.append(f"| **this command, start to report** (--jobs {jobs}) | {seconds['wall']:.1f} |")
    if report.get("seed_prompts"):
        lines += ["", "## The seed's prompts, answered by each model", ""]
        for prompt, by_model in report["seed_prompts"].items():
            lines += [f"**{prompt}**", "", "| model | answer |", "|---|---|"]
            lines += [f"| {name} | {_cell(answer)} |" for name, answer in by_model.items()]
            lines.append("")
    write_atomic(path, "\n".join(lines) + "\n")


def headroom_lines(report: dict) -> list[str]:
    """report.md's selectable-headroom table (`eval --headroom`): per K, overall and per family, with intervals."""
    headroom = report.get("headroom")
    if not headroom:
        return []
    ref = report["reference"]
    families = sorted({f for entry in headroom["by_k"].values() for f in entry["by_family"]})

    def cell(entry: dict) -> str:
        lo, hi = entry["share_ci"]
        return f"{_fmt(entry['share'])} [{_fmt(lo)}, {_fmt(hi)}]"

    lines = [
        "",
        "## Selectable headroom: the best of K answers of "
        + ref
        + " by the gold judge, against "
        + ref
        + "'s",
        "",
        f"Share of the eval prompts (× samples) where the best of K of {ref}'s own answers, picked by the gold judge, "
        f"beats {ref}'s answer, judged as the win rates are (ties ½; 95% bootstrap interval over prompts): the most "
        f"a perfect reward can select from what {ref} already writes ({headroom['samples_drawn']} answers drawn).",
        "",
        "| K | overall | gold score (0–10) | " + " | ".join(families) + " |",
        "|---|---|---|" + "---|" * len(families),
    ]
    for k, entry in headroom["by_k"].items():
        cells = [cell(entry["by_family"][f]) if f in entry["by_family"] else "—" for f in families]
        lines.append(f"| {k} | {cell(entry)} | {_fmt(entry['gold_score'], 2)} | " + " | ".join(cells) + " |")
    return lines


def rounds_lines(report: dict) -> list[str]:
    """report.md's table of the RLHF rounds (`pipeline --rlhf-rounds N`): per chain and round, its policy's win rate,
    gold and KL, and the accuracy of the reward model that round's PPO optimised on that policy's answers."""
    chains = report.get("rlhf_rounds")
    if not chains:
        return []
    ref = report["reference"]

    def agreement(stats: dict | None) -> str:
        if not stats or stats.get("panel_agreement") is None:
            return "—"
        return f"{_fmt(stats['panel_agreement'])} ({stats['n_panel_pairs']} pairs)"

    lines = [
        "",
        "## RLHF rounds",
        "",
        "Each round's policy, and the reward model its PPO optimised graded on that policy's own answers — before it "
        "was updated on them — by its agreement with the held-out panel (pairs the panel orders, ties excluded); the "
        "updated one on the held-out rankings of them. The last round's policy is the method's row above.",
        "",
        f"| policy | round | iterations | win rate vs {ref} | 95% CI | gold score | KL (nats) | reward model | "
        "its accuracy on this policy's answers | updated RM, held-out |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rows in chains.values():
        for row in rows:
            lo, hi = row["win_rate_ci"] or (None, None)
            lines.append(
                f"| {row['policy']} | {row['round']} | {row['iterations']} | {_fmt(row['win_rate'])} | "
                f"[{_fmt(lo)}, {_fmt(hi)}] | {_fmt(row['gold_score'], 2)} | {_fmt(row['kl_to_sft'], 2)} | "
                f"{row['reward_model']} | {agreement(row.get('rm_on_own_policy'))} | "
                f"{agreement(row.get('updated_rm_on_held_out'))} |"
            )
    return lines


def _cell(text: str) -> str:
    return (text or "(empty)").replace("|", "｜").replace("\n", " ")


def _chinese_font() -> None:
    """Use a CJK font if the system has one, so Chinese labels render (figures use English labels otherwise)."""
    from matplotlib import font_manager, rcParams

    for name in ("Noto Sans CJK SC", "WenQuanYi Zen Hei", "SimHei", "Source Han Sans SC"):
        if any(f.name == name for f in font_manager.fontManager.ttflist):
            rcParams["font.sans-serif"] = [name, *rcParams["font.sans-serif"]]
            return


def write_figures(report: dict, runs: dict[str, str], out: Path) -> None:
    """winrate.png of every model in `report`; curves.png of the runs {name: dir} that have training metrics
    (best-of-n has no run: an empty dir is skipped, never read as the current directory)."""
    import matplotlib  # here, not at the top: the Agg backend must be chosen before pyplot is first imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _chinese_font()
    # Win rate vs the reference, in the style of the InstructGPT figure.
    models = ordered(report)
    names = [name for name, _ in models]
    rates = [m["win_rate"] for _, m in models]
    lows = [r - m["win_rate_ci"][0] for (_, m), r in zip(models, rates)]
    highs = [m["win_rate_ci"][1] - r for (_, m), r in zip(models, rates)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names)), 4))
    colors = ["#9e9e9e", "#4c72b0", "#dd8452", "#c44e52", "#55a868", "#8172b3", "#937860", "#da8bc3"]
    bars = ax.bar(
        [label(name, m).replace(": ", "\n") for name, m in models],
        rates,
        yerr=[lows, highs],
        capsize=4,
        color=[colors[i % len(colors)] for i in range(len(names))],
    )
    for bar, (_, m) in zip(bars, models):
        if is_ceiling(m):  # the upper reference: white, hatched, outlined — not one of the methods
            bar.set(facecolor="white", edgecolor="#2f2f2f", hatch="//")
    ax.tick_params(axis="x", labelsize=8)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"win rate vs {report['reference']}")
    judge = report.get("judge", "held-out panel")
    if judge.startswith("held-out panel"):
        ax.set_title("Held-out panel preference (95% CI)")
    else:  # a reward model judged (user prompts the world's panel cannot judge)
        ax.set_title(f"Preference of the judge (95% CI)\n{judge}", fontsize=9)
    fig.tight_layout()
    with open_atomic(out / "winrate.png", "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)

    # Training curves of every step: loss, RM accuracy, reward, KL.
    runs = {name: path for name, path in runs.items() if path}
    panels = [
        ("loss", "LM loss (pretrain / SFT)"),
        ("val_accuracy", "reward model val accuracy"),
        ("reward", "RL reward (centred RM score ÷ its std)"),
        ("kl", "KL to SFT per answer (live policy)"),
    ]
    if any(any("reward_accuracy" in r for r in read_metrics(path)) for path in runs.values()):
        panels.append(("reward_accuracy", "DPO: pairs its implicit reward orders"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (key, title) in zip(axes, panels):
        for name, path in runs.items():
            rows = [r for r in read_metrics(path) if key in r]
            if (
                key == "loss"
                and rows
                and any(k in rows[0] for k in ("reward", "accuracy", "reward_accuracy"))
            ):
                continue
            if rows:
                gold = key == "reward" and is_ceiling(report["models"].get(name, {}))
                shown = f"{name} ((gold − 7) / 2)" if gold else name  # its reward is in other units
                ax.plot(
                    [r["step"] for r in rows], [r[key] for r in rows], label=shown, ls="--" if gold else "-"
                )
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with open_atomic(out / "curves.png", "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
