"""Compare the LR finder's suggestion rules on real training runs.

One LR range test on the config, then one full training run per rule with the max_lr that
rule suggests; prints a Markdown table (rule, suggested max_lr, best val top-1) and writes
results.json. Usage:

    python benchmarks/lr_rules.py --config configs/demo.yaml --out runs/lr-rules
"""

import argparse
import dataclasses
import json
from pathlib import Path

from rn50.config import RULES, load_config
from rn50.runlog import read_metrics
from rn50.train.loop import fit
from rn50.train.lr_finder import lr_find, save_plot, suggest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--out", default="runs/lr-rules")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    out = Path(args.out)

    cfg = load_config(args.config, [*args.overrides, f"train.checkpoint_dir={out}/sweep"])
    sweep = lr_find(cfg).sweep
    rows = []
    for rule in RULES:
        lr, _ = suggest(sweep.lrs, sweep.losses, dataclasses.replace(cfg.lr_finder, rule=rule))
        run = load_config(
            args.config,
            [
                *args.overrides,
                f"optim.max_lr={lr}",
                f"train.checkpoint_dir={out}/{rule}",
                "train.log_every=0",
            ],
        )
        fit(run)
        metrics = read_metrics(out / rule / "metrics.jsonl")
        rows.append(
            {
                "rule": rule,
                "max_lr": lr,
                "best_val_top1": max(r["val_top1"] for r in metrics),
                "final_val_top1": metrics[-1]["val_top1"],
                "epochs": len(metrics),
            }
        )
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    best = max(rows, key=lambda r: r["best_val_top1"])
    others = {f"{r['rule']} rule": r["max_lr"] for r in rows if r is not best}
    cfg.lr_finder.rule = best["rule"]
    save_plot(sweep, cfg.lr_finder, best["max_lr"], out / "rules.png", others)
    print("\n| rule | suggested max_lr | best val top-1 | final val top-1 |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['rule']} | {r['max_lr']:.3g} | {r['best_val_top1']:.2f}% | "
            f"{r['final_val_top1']:.2f}% |"
        )


if __name__ == "__main__":
    main()
