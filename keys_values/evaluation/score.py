"""One task's scores: its metrics file (the original's keys and this project's) and its predictions rows, and the
table an evaluation prints at its end."""

import os

from keys_values import data, scoring
from keys_values.experiment import layout
from utils import read_json


def score(task, examples, source, prompts_text, prompt_ids, predicted, options, args, prec, seconds, ident, skipped):
    """The metrics file and the predictions rows of one task. `skipped` is {example index: why} for rows whose
    prompt cannot fit; they are listed in the predictions with their reason and left out of the metrics."""
    kept = [i for i in range(len(examples)) if i not in skipped]
    outputs = {i: predicted[i] or (None, "", None) for i in kept}
    preds = [outputs[i][1] for i in kept]
    # the original's exact match: the decoded prompt and answer cut at the prompt's length, unstripped
    strict = [outputs[i][1] if outputs[i][2] is None else outputs[i][2][len(prompts_text[i]):] for i in kept]
    m = scoring.metrics([examples[i].gold for i in kept], preds, strict, options)
    m["oom_examples"] = [len(prompt_ids[i]) for i in kept if predicted[i] is None]
    m["skipped"] = len(skipped)
    m.update(scoring=task.scoring(args.scoring), max_test_samples=args.max_test_samples, bnb=prec.bnb, dtype=prec.dtype,
             max_new_tokens=args.max_new_tokens, data_root=args.data_root, identity=ident, seconds=round(seconds, 2),
             labels=options, data=source)
    rows = []
    for i, e in enumerate(examples):
        if i in skipped:
            rows.append({"id": i, "label": e.label, "skipped": skipped[i]})
            continue
        raw, p, _ = outputs[i]
        rows.append({"id": i, "label": e.label, "generation": raw, "prediction": p,
                     **({} if task.closed else {"gold": e.gold})})
    return m, rows


def report(out, folder, tasks, loaded):
    """The table printed at the end: accuracy in % with its interval, majority class, invalid answers, n."""
    print(f"\n{'task':<22}{'accuracy %':>11}{'95% interval':>16}{'majority %':>11}{'invalid %':>10}{'n':>6}"
          f"{'skipped':>8}  scoring")
    for t in tasks:
        m = read_json(layout.metrics_path(out, t.name, folder))
        lo, hi = m["accuracy_ci95"]
        print(f"{t.name:<22}{100 * m['accuracy']:>11.1f}{f'[{100 * lo:.1f}, {100 * hi:.1f}]':>16}"
              f"{100 * m['majority_baseline']:>11.1f}{100 * m['invalid_rate']:>10.1f}{m['n']:>6}"
              f"{m.get('skipped', 0):>8}  {m['scoring']}")
    hub = [f"{t.name} from {data.describe(loaded[t.name][1])}" for t in tasks if loaded[t.name][1]["source"] == "hub"]
    if hub:
        print("data downloaded from the hub: " + "; ".join(hub))
    print(f"{len(tasks)} task{'s' if len(tasks) != 1 else ''}; metrics in {os.path.join(out, folder)}")
