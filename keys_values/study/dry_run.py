"""The study's --dry_run: one line per run (folder, state, optimizer steps, tokens, peak memory per device as the
training's own --dry_run estimates it, GPUs), then the totals. Nothing is written, no weight loaded."""

from keys_values import memory, models
from keys_values.training.dry_run import memory_plan


def print_dry_run(plan):
    tokenizer = models.load_tokenizer(plan.model[0], plan.t.trust_remote_code)
    blocks_of, rows = {}, []
    for r in plan.runs:
        key = id(r.plan.examples), r.seed
        if key not in blocks_of:
            blocks_of[key] = r.plan.blocks(tokenizer)
        rows.append((r, memory_plan(r.plan, blocks_of[key])))
    cuda = bool(plan.gpus)
    print(f"\n{len(rows)} runs ({len(plan.settings)} settings x {len(plan.own.seeds)} seeds), {plan.precision.why}, "
          f"planned for {'a GPU' if cuda else 'this machine'}:")
    print(f"{'setting':<34}{'seed':>5}  {'state':<9}{'steps':>7}{'tokens':>14}{'memory/device':>15}{'GPUs':>6}  folder")
    total_steps = total_tokens = 0
    peak = 0
    for r, p in rows:
        gib = p["memory_estimate_bytes"]["total"] / memory.GIB
        peak = max(peak, gib)
        total_steps += p["optimizer_steps"]
        total_tokens += p["tokens"]
        print(f"{r.setting:<34}{r.seed:>5}  {r.state:<9}{p['optimizer_steps']:>7}{p['tokens']:>14,}"
              f"{gib:>11.1f} GiB{plan.gpus * plan.processes if plan.own.accelerate_config else plan.gpus:>6}  "
              f"{r.folder}")
    todo = [r for r, _ in rows if r.state != "finished"]
    print(f"total: {total_steps:,} optimizer steps, {total_tokens:,} training tokens; {len(todo)} of {len(rows)} runs "
          f"to train; peak memory per device {peak:.1f} GiB")
