"""--dry_run: everything a run would do, from the config alone (LoRA applied to the model on the meta device for
the parameter counts, no weights), and the peak memory per device (memory.estimate; under FSDP the weights,
adapter and optimizer state divided over the processes). Nothing is written."""

import dataclasses
import json

from keys_values import data, lora, memory, models, structure
from keys_values.config import CARDS_GIB
from keys_values.experiment import checkpoints, layout, state


def memory_plan(plan, blocks):
    """The dry run's plan of a RunPlan and its training blocks, as one dict (printed in words, and as one line of
    JSON with --plan_json); `resumes_from_step`: the step a partial run's --resume would continue from."""
    from peft import get_peft_model

    cfg = plan.config
    cuda = plan.machine.cuda
    weights = memory.weight_counts(plan.model)
    ffn, inputs, products = memory.model_widths(plan.model, [path for path, _ in plan.targets.paths])
    # peft changes the model it adapts: a fresh one on the meta device, so that the plan's stays as it is
    peft_model = get_peft_model(models.meta_model(plan.model_config, cfg.trust_remote_code),
                                lora.lora_config(cfg, plan.targets))
    trainable, total = peft_model.get_nb_trainable_parameters()
    targets = sorted(peft_model.peft_config["default"].target_modules or [])
    counted = sum(y != -100 for b in blocks for y in b["labels"]) / max(1, sum(len(b["labels"]) for b in blocks))
    estimate = memory.estimate(plan.model_config, inputs, cfg.lora_r, cfg.dropout, plan.precision, cuda,
                               cfg.per_device_train_batch_size, cfg.max_seq_length, cfg.gradient_checkpointing,
                               1.0 if cfg.loss_on == "all" else counted, trainable, weights,
                               shards=plan.processes if plan.fsdp else 1, ffn_width=ffn, mlp_products=products)
    steps = plan.optimizer_steps(len(blocks))
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * plan.processes
    folder_state = state.state(plan.folder)
    whole = checkpoints.newest_whole_checkpoint(plan.folder, report=lambda line: None) \
        if folder_state == "partial" else None
    return {
        "experiment_dir": plan.folder, "folder": folder_state, "resumes_from_step": whole[0] if whole else None,
        "tasks": {name: {"rows": s["used"], "source": data.describe(s)} for name, s in plan.sources.items()},
        "blocks": len(blocks), "block_size": cfg.max_seq_length, "optimizer_steps": steps,
        "processes": plan.processes, "effective_batch": batch, "tokens": steps * batch * cfg.max_seq_length,
        "target_modules": targets, "target_parameters": list(plan.targets.target_parameters or []),
        "roles": dict(plan.targets.roles), "adapted": [list(p) for p in plan.targets.paths],
        "trainable_params": trainable, "total_params": total,
        "gradient_checkpointing": cfg.gradient_checkpointing, "device": "gpu" if cuda else "cpu",
        "fsdp": plan.processes if plan.fsdp else None, "precision": dataclasses.asdict(plan.precision),
        "placement": plan.placement.what, "identity": plan.identity, "memory_estimate_bytes": estimate,
        "fits_gib": {str(g): memory.fits(estimate["total"], g) for g in CARDS_GIB} if cuda else None,
    }


def print_plan(p, as_json=False):
    """Print the plan `p` (memory_plan's dict) in words; with `as_json` (--plan_json), then the whole of it as
    one line of JSON."""
    gib = {k: v / memory.GIB for k, v in p["memory_estimate_bytes"].items()}
    print(f"\nplan: {p['experiment_dir']} ({p['folder']})")
    if p["folder"] == "partial":
        step = p["resumes_from_step"]
        where = f"step {step} ({layout.checkpoint_name(step)})" if step else "the first step (no whole checkpoint)"
        print(f"  an interrupted run: --resume continues it from {where}; --overwrite starts it again")
    elif p["folder"] == "finished":
        print("  a finished run: with --resume there is nothing to do; --overwrite trains it again")
    for name, t in p["tasks"].items():
        print(f"  {name}: {t['rows']} rows from {t['source']}")
    print(f"  {p['blocks']} blocks of {p['block_size']} tokens -> {p['optimizer_steps']} optimizer steps "
          f"(effective batch {p['effective_batch']}, {p['tokens']:,} tokens)")
    print(f"  LoRA on {' '.join(p['target_modules'] + p['target_parameters'])}: {p['trainable_params']:,} trainable "
          f"of {p['total_params']:,}")
    layer0 = [(path, role) for path, role in p["adapted"] if structure.layer_of(path) in (0, None)]
    print(f"  adapted in each of the model's layers ({len(p['adapted'])} in all): "
          + ", ".join(f"{path} ({role})" for path, role in layer0))
    prec = p["precision"]
    print(f"  {p['device']}: {prec['why']}, gradient checkpointing {'on' if p['gradient_checkpointing'] else 'off'}, "
          f"{p['placement']}")
    print("  peak memory per device (estimate): " + ", ".join(f"{k} {v:.2f} GiB" for k, v in gib.items() if k != "total")
          + f" -> total {gib['total']:.2f} GiB")
    if p["fits_gib"]:
        print("  fits: " + ", ".join(f"{g} GB {'yes' if ok else 'no'}" for g, ok in p["fits_gib"].items()))
    if as_json:
        print(json.dumps(p))
