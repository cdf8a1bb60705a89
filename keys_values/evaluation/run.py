"""The work of one evaluation once planned: load the base (and the experiment's adapter, merged into a 16-bit
base), fit each prompt to the budget, rank every ranked task's labels (all tasks batched together), generate
the rest task by task, and write each task's metrics and predictions as soon as it is done."""

import os
import time

import prompts
from keys_values import models, norms, packing, precision, roles
from keys_values.evaluation.generate import NonFinite, generate_task
from keys_values.evaluation.rank import candidates, rank_tasks
from keys_values.evaluation.score import score
from keys_values.experiment import layout
from utils import UserError, write_json, write_jsonl


def load_model(plan):
    """The base model in the run's precision, with the experiment's adapter (merged into a 16-bit base: the
    same function without LoRA's extra work per layer) and tokenizer. Before merging, what each adapted module
    changed (||dW||, and relative to ||W||) is written beside the metrics."""
    from peft import PeftModel

    cfg = plan.config
    model = models.load_base(plan.checkpoint, plan.precision, precision.this_placement(), cfg.trust_remote_code)
    if plan.record is None:
        return model.eval(), models.load_tokenizer(plan.checkpoint, cfg.trust_remote_code)
    try:
        model = PeftModel.from_pretrained(model, layout.assets(plan.folder))
    except RuntimeError as e:  # --allow_other_base on a base of other shapes
        if "size mismatch" not in str(e):
            raise
        first = next(line.strip() for line in str(e).splitlines() if "size mismatch" in line)
        raise UserError(f"the adapter in {layout.assets(plan.folder)} does not fit the base {plan.checkpoint}: "
                        f"{first[:300]}") from None
    write_norms(model, plan.folder, plan.record, plan.norms_path)
    if not plan.precision.bnb:
        model = model.merge_and_unload()
    return model.eval(), models.load_tokenizer(layout.assets(plan.folder))


def write_norms(model, out, exp, path):
    """{metrics folder}/adapter_norms.json: ||dW||_F = (alpha / r) ||B A||_F of every adapted module from the
    adapter's tensors, with ||W||_F of the base weight beside it and their ratio, and each module's role."""
    state, config = norms.read_adapter(layout.assets(out))
    rows = norms.delta_norms(state, config)
    rows = norms.relative(rows, norms.weight_norms(model, [r["module"] for r in rows]))
    model_type = getattr(model.config, "model_type", None)
    recorded = dict(exp.get("module_roles") or {})
    for r in rows:
        r["role"] = recorded.get(r["name"]) or roles.roles_of([r["name"]], model_type).get(r["name"], "other")
    write_json(path, {"scaling": norms.scaling(config), "modules": rows})


def prompts_that_fit(tok, task, examples, budget):
    """([(fields, ids)] per example, {index: why} of the rows that cannot fit `budget` tokens even with the
    task's long field emptied: those are skipped, and the task goes on)."""
    fitted, skipped = [], {}
    for i, e in enumerate(examples):
        try:
            fitted.append(packing.fit_prompt(tok, task, e.fields, budget))
        except packing.TooLong as why:
            skipped[i] = f"prompt over {budget} tokens: {why}"
            fitted.append((e.fields, None))
    return fitted, skipped




def evaluate(plan, todo):
    """Evaluate the tasks `todo` of the plan, writing each one's metrics and predictions; returns ({task: why}
    of the tasks whose numbers were not finite, {task: why} of those none of whose prompts fit)."""
    cfg = plan.config
    model, tok = load_model(plan)
    print(f"evaluating in {plan.precision.why}; prompts of at most {plan.budget} tokens; metrics in "
          f"{os.path.join(plan.folder, plan.metrics_folder)}")
    jobs, too_long = {}, {}
    for t in todo:
        examples = plan.data[t.name][0]
        fitted, skipped = prompts_that_fit(tok, t, examples, plan.budget)
        if skipped:
            first = min(skipped)
            print(f"{t.name}: {len(skipped)} of {len(examples)} rows skipped, their prompts cannot fit (row "
                  f"{first}: {skipped[first]})")
        options = prompts.choices(t, examples) if t.closed else None
        keep = [i for i in range(len(examples)) if i not in skipped]
        if not keep:
            too_long[t.name] = f"every row's prompt is too long (row {min(skipped)}: {skipped[min(skipped)]})"
            continue
        jobs[t.name] = {"task": t, "ids": [ids_ for _, ids_ in fitted], "options": options, "keep": keep,
                        "texts": [prompts.prompt_text(t, f) for f, _ in fitted], "skipped": skipped, "t0": time.time()}
        if t.scoring(cfg.scoring) == "rank":
            jobs[t.name]["items"] = [candidates(tok, jobs[t.name]["texts"][i], fitted[i][1], options) for i in keep]
    ranked = {name: job for name, job in jobs.items() if "items" in job}
    predicted, failed = {}, {}
    for name, preds in (rank_tasks(model, tok, ranked, cfg) if ranked else {}).items():
        predicted[name] = preds if isinstance(preds, NonFinite) else dict(zip(jobs[name]["keep"], preds))
    for name, job in jobs.items():  # ranked tasks are written first, then each generated task when it is done
        t = job["task"]
        if name not in predicted:
            job["t0"] = time.time()
            try:
                preds = generate_task(model, tok, t, [job["ids"][i] for i in job["keep"]], job["options"], cfg)
                predicted[name] = dict(zip(job["keep"], preds))
            except NonFinite as e:
                predicted[name] = e
        if isinstance(predicted[name], NonFinite):
            failed[name] = str(predicted[name])
            continue
        examples, source = plan.data[name]
        m, rows = score(t, examples, source, job["texts"], job["ids"], predicted[name], job["options"], cfg,
                        plan.precision, time.time() - job["t0"], plan.identities[name], job["skipped"])
        write_jsonl(plan.predictions_path(name), rows)
        write_json(plan.metrics_path(name), m)
        if plan.record is None and not os.path.isfile(layout.record_path(plan.folder)):
            write_json(layout.record_path(plan.folder), plan.base_record())
    leave_no_lone_norms(plan)
    return failed, too_long


def leave_no_lone_norms(plan):
    """A metrics folder in which no task was scored (every prompt too long, numbers not finite) is not left
    holding the adapter's norms alone: the norms file and the folder go."""
    folder = os.path.join(plan.folder, plan.metrics_folder)
    if plan.norms_path and os.path.isdir(folder) and os.listdir(folder) == [os.path.basename(plan.norms_path)]:
        os.unlink(plan.norms_path)
        os.rmdir(folder)
