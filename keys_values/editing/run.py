"""The work of one editing run (one arm, one layer, one seed), resumable per edit and nothing half-written:
identity.json when it starts; each edit's record appended to edits.jsonl as soon as it is done (a line cut off by
a crash is dropped and its edit made again); metrics.json, written last, marks the run finished.

Each edit starts from the unedited model (checked bit for bit), several made at once (editor.Editor.edit_batch),
unless --sequential: then every edit is applied on top of the ones before, the weights kept in
sequential.safetensors every few edits (a resumed run continues from them), and all edits are measured at the end.
The scores before an edit are the unedited model's, the same for every arm in a layer: `pre` keeps them across the
arms of a command."""

import dataclasses
import json
import os
import time

from keys_values.editing import metrics
from keys_values.editing.editor import Editor
from keys_values.experiment import layout
from utils import UserError, atomic_write, write_json

SAVE_EVERY = 10  # --sequential: the weights kept after every this many edits


def read_done(folder):
    """{case_id as text: record} of the edits a run already made; a last line cut off is dropped (said)."""
    path = os.path.join(folder, layout.EDIT_RECORDS)
    done = {}
    if not os.path.isfile(path):
        return done
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n >= len(lines) - 1:
                print(f"{path}: its last record was cut off (line {n}); that edit is made again")
                break
            raise UserError(f"{path} line {n}: not a whole record; delete the run's folder (or --overwrite)") from None
        done[str(record["case_id"])] = record
    return done


def append(folder, record):
    """Add one edit's record to edits.jsonl, on the disk before the next edit starts."""
    with open(os.path.join(folder, layout.EDIT_RECORDS), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rewrite(folder, records):
    atomic_write(os.path.join(folder, layout.EDIT_RECORDS), "".join(json.dumps(r) + "\n" for r in records))


def before(editor, edit, cfg, pre, layer):
    """(probes, their token spans, the unedited model's scores, the edited layer's kept inputs, fluency before) of an
    edit, from `pre` when another arm of this layer measured it already."""
    key = (layer, str(edit.case_id))
    if pre is not None and key in pre:
        return pre[key]
    probe_list = metrics.probes(edit)
    spans = editor.encode(probe_list)
    scores, kept = editor.first_scores(spans)
    found = (probe_list, spans, scores, kept, fluency(editor, edit) if cfg.fluency else None)
    if pre is not None:
        pre[key] = found
    return found


def fluency(editor, edit, b=None):
    """The mean n-gram entropy of 50 greedy tokens after the edit's generation prompts (else its rewrite and
    paraphrase prompts), edit b of the batch in the model when given."""
    prompts = list(edit.generation) or [edit.prompt, *edit.paraphrases]
    return sum(metrics.ngram_entropy(t) for t in editor.generate(prompts, b)) / len(prompts)


def record_of(editor, edit, measured, info, b, cfg):
    probe_list, spans, pre, kept, fluency_pre = measured
    post = editor.scores(spans, kept, b)
    record = {"case_id": edit.case_id, "edit": edit.to_json(), **metrics.per_edit(probe_list, pre, post),
              "probes": [{"group": g, "index": i, "target": t, "role": role, "nll_pre": x["nll"], "nll_post": y["nll"]}
                         for (g, i, _, t, role), x, y in zip(probe_list, pre, post)], **info}
    if cfg.fluency:
        record["pre"]["fluency"], record["post"]["fluency"] = fluency_pre, fluency(editor, edit, b)
    return record


def run_edits(model, tok, run, cfg, plain=False, pre=None, progress=print):
    """Make and measure every edit of `run` (an EditPlan's EditRun) on `model`, writing its folder; `pre` is the
    scores before the edits kept across the arms of a command (a dict, or None). The model is left as it was."""
    os.makedirs(run.folder, exist_ok=True)
    write_json(layout.identity_path(run.folder), {"identity": run.identity, "args": dataclasses.asdict(cfg)})
    editor = Editor(model, tok, run.layer, run.paths, cfg, plain=plain, seed=run.seed,
                    batch=1 if cfg.sequential else cfg.edits_at_once)
    try:
        records = sequential(editor, run, cfg, pre, progress) if cfg.sequential else \
            independent(editor, run, cfg, pre, progress)
    finally:
        editor.remove()
    write_json(os.path.join(run.folder, layout.EDIT_METRICS), summary(records, run, editor.updated_parameters))


def independent(editor, run, cfg, pre, progress):
    done = read_done(run.folder)
    rewrite(run.folder, done.values())
    todo = [e for e in run.edits if str(e.case_id) not in done]
    if done:
        progress(f"{run.name}: {len(done)} edits made before, {len(todo)} to make")
    t0 = time.time()
    for k in range(0, len(todo), editor.batch):
        chunk = todo[k:k + editor.batch]
        editor.reset()  # the unedited model, checked
        measured = [before(editor, e, cfg, pre, run.layer) for e in chunk]
        infos = editor.edit_batch(chunk)
        for b, (edit, m, info) in enumerate(zip(chunk, measured, infos)):
            record = record_of(editor, edit, m, info, b, cfg)
            append(run.folder, record)
            done[str(edit.case_id)] = record
        made = k + len(chunk)
        progress(f"{run.name}: {len(done)}/{len(run.edits)} edits, ETA "
                 f"{(time.time() - t0) / made * (len(todo) - made) / 60:.1f} min")
    editor.reset()
    return [done[str(e.case_id)] for e in run.edits]


def sequential(editor, run, cfg, pre, progress):
    """Every edit on top of the ones before; measured at the end (the scores before, on the unedited model)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = os.path.join(run.folder, layout.SEQUENTIAL_WEIGHTS)
    state = os.path.join(run.folder, layout.SEQUENTIAL_STATE)
    editor.reset()
    measured = [before(editor, e, cfg, pre, run.layer) for e in run.edits]  # the unedited model
    applied, infos = 0, []
    if os.path.isfile(state) and os.path.isfile(weights):
        with open(state, encoding="utf-8") as f:
            saved = json.load(f)
        applied, infos = saved["applied"], saved["infos"]
        tensors = load_file(weights)
        with torch.no_grad():
            for k, w in editor.weights().items():
                w.copy_(tensors[k])
        progress(f"{run.name}: continuing after {applied} sequential edits")
    t0 = time.time()
    try:
        for k, edit in enumerate(run.edits[applied:], applied + 1):
            infos += editor.edit_batch([edit])
            editor.fold()  # the next edit starts from this one
            if k % SAVE_EVERY == 0 or k == len(run.edits):
                tmp = weights + ".tmp"
                save_file({n: w.detach().contiguous().clone() for n, w in editor.weights().items()}, tmp)
                os.replace(tmp, weights)
                write_json(state, {"applied": k, "infos": infos})
                progress(f"{run.name}: {k}/{len(run.edits)} sequential edits, ETA "
                         f"{(time.time() - t0) / (k - applied) * (len(run.edits) - k) / 60:.1f} min")
        records = [record_of(editor, e, m, info, None, cfg) for e, m, info in zip(run.edits, measured, infos)]
    finally:
        editor.restore()  # the weights before the first edit, checked
    rewrite(run.folder, records)
    return records


def summary(records, run, updated):
    """metrics.json: the metrics before and after over all edits and over those the model knew, the steps and the
    weight change, and how many numbers an edit may change."""
    known = [r for r in records if r["known"]]
    steps = [r["steps"] for r in records]
    deltas = [v for r in records for v in r["delta"].values()]
    out = {"identity": run.identity, "arm": run.arm, "layer": run.layer, "seed": run.seed, "paths": run.paths,
           "roles": run.roles, "updated_parameters": updated, "n": len(records), "n_known": len(known)}
    for name, group in (("all", records), ("known", known)):
        out[name] = {"pre": metrics.aggregate(group, "pre"), "post": metrics.aggregate(group, "post")}
    out.update(out["all"]["post"])
    out["mean_steps"] = sum(steps) / len(steps) if steps else None
    out["mean_relative_delta"] = sum(deltas) / len(deltas) if deltas else None
    return out
