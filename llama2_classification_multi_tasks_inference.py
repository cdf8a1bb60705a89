"""Evaluate a trained adapter (or the base model alone) on each task's evaluation split.

The story of one evaluation: the flags -> its plan (the experiment's record gives the tasks, base model, 4-bit
setting and data root; a flag on the command line wins; a folder written by the original code is read from its
names; every task's rows; the precision; the metrics folder) -> lock the folder -> skip the tasks whose metrics
exist for the same evaluation (scoring, precision, prompt budget, generation length, examples) -> load the base
and the adapter from assets/ (what each adapted module changed, ||dW||, is written beside the metrics) -> rank
the labels of every ranked task (all tasks' prompts batched together, each prompt run once with its candidates
packed after it), generate the rest task by task (batched greedy decoding) -> score, and write {metrics
folder}/{task}_metrics_update.json and {task}_predictions.jsonl, each task as soon as it is done. The default
evaluation's metrics go to metrics/ (the original's place); another evaluation's to metrics-<parts>/ beside it.

    python llama2_classification_multi_tasks_inference.py --experiment_dir experiments/boolq/classification-...
    python llama2_classification_multi_tasks_inference.py --pretrained_ckpt models/SmolLM2-135M-Instruct --tasks boolq
"""

from keys_values import config, data, models
from keys_values.evaluation.plan import plan_evaluation
from keys_values.evaluation.score import report
from keys_values.experiment import lock
from utils import UserError, run_main


def main(argv=None):
    models.quiet_library_noise()
    plan = plan_evaluation(config.evaluation_config(argv))
    for t in plan.tasks:
        examples, source = plan.data[t.name]
        print(f"{t.name}: {source['used']} evaluation examples from {data.describe(source)}")
    failed, too_long = {}, {}
    with lock.lock(plan.folder, "evaluation"):
        todo = plan.pending()
        if todo:
            from keys_values.evaluation.run import evaluate  # torch and transformers load only now

            failed, too_long = evaluate(plan, todo)
    dtype = plan.precision.dtype
    problems = [f"{name}: {why} in {dtype}" for name, why in failed.items()]
    if failed:
        problems[-1] += (f" (evaluate with --dtype {'bf16 or fp32' if dtype == 'fp16' else 'fp32'}, which keeps "
                         "the numbers in range)")
    problems += [f"{name}: {why} (raise --max_input_length)" for name, why in too_long.items()]
    if problems:
        done = [t.name for t in plan.tasks if t.name not in failed and t.name not in too_long]
        raise UserError("; ".join(problems) + f"; no metrics written for {', '.join([*failed, *too_long])}"
                        + (f" ({', '.join(done)} done)" if done else ""))
    report(plan.folder, plan.metrics_folder, plan.tasks, plan.data)


if __name__ == "__main__":
    run_main(main)
