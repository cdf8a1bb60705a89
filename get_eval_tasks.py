"""Collect every experiment's metrics and compare target-module settings (keys vs values) per task.

experiments/ -> all_eval_results.json (the original's structure: {tasks folder: {short experiment name:
{task: metrics}}}, keyed by full task names; an evaluation other than the default one is keyed
`<short name>@<its metrics folder>`) and, in each tasks folder, summary.md and summary.png. Reads files only: no
model. Folders written by the original code (list reprs in their names, no experiment.json) are read too.

Only like is compared with like. Runs are grouped into settings by their training identity (everything that
changes the adapter, the seed aside); evaluations into sections by their evaluation identity (scoring, precision,
rows, prompt budget, generation length). Within a section, a keys setting is paired with a values setting on a
task only when both were trained with the same recipe (they differ in their modules and nothing else), and
both seeds' evaluations have the same identity and the same examples; every pair that cannot be made is listed
with the reason. Three steps: collect, compare, render.

    python get_eval_tasks.py --root experiments
"""

import os

from keys_values import config
from keys_values.experiment import layout
from keys_values.report import collect, figures, tables
from utils import UserError, atomic_write, run_main, write_json


def build_parser():
    return config.parser(config.ReportConfig, __doc__.split("\n\n")[0], allow_abbrev=False)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if os.path.exists(args.root) and not os.path.isdir(args.root):
        raise UserError(f"--root {args.root} is a file, not a folder: give the output root the runs were written to "
                        "(experiments by default)")
    if not os.path.isdir(args.root):
        raise UserError(f"--root {args.root} does not exist")
    tree = collect.collect(args.root)
    if not tree:
        raise UserError(f"no metrics under {args.root}/<tasks>/<experiment>/metrics/: evaluate an experiment first")
    write_json(os.path.join(args.root, layout.ALL_RESULTS), collect.all_results(tree))
    for tasks_folder, runs in tree.items():
        settings = collect.group(runs)
        tasks = collect.tasks_of(tasks_folder, runs)
        sections = collect.sections_of(settings)
        folder = os.path.join(args.root, tasks_folder)
        left = collect.left_out(args.root, tasks_folder)
        atomic_write(os.path.join(folder, layout.SUMMARY_MD),
                     tables.summary_md(tasks_folder, settings, tasks, sections, left))
        for line in left:
            print(f"not in the report: {line}")
        if not args.no_plot:
            figures.summary_png(os.path.join(folder, layout.SUMMARY_PNG), tasks_folder, settings, tasks, sections[0])
        print(f"{folder}/summary.md ({len(settings)} setting{'s' if len(settings) != 1 else ''}, {len(tasks)} "
              f"task{'s' if len(tasks) != 1 else ''}, {len(sections)} evaluation{'s' if len(sections) != 1 else ''})")
    print(f"{args.root}/{layout.ALL_RESULTS}")


if __name__ == "__main__":
    run_main(main)
