"""End-to-end runs of the scripts on the embedded model and sample_data (slow; still run in CI)."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import (
    EVAL,
    MODEL,
    ROOT,
    SAMPLE,
    STUDY,
    TRAIN,
    free_port,
    in_process_launcher,
    linked_copy,
    metrics,
    only_dir,
    predictions,
    run,
    small_llama,
)
from keys_values import data, models, precision
from keys_values.experiment import layout

pytestmark = pytest.mark.slow
SMALL = ["--pretrained_ckpt", MODEL, "--data_root", SAMPLE, "--epochs", "1", "--per_device_train_batch_size", "2",
         "--gradient_accumulation_steps", "1", "--max_seq_length", "256"]


def test_acceptance_command_leaves_the_spec_layout_as_planned(tmp_path):
    out = str(tmp_path / "exp")
    argv = [*SMALL, "--target_modules", "q_proj", "v_proj", "up_proj", "--tasks", "boolq", "COPA", "CB",
            "--max_steps", "3", "--output_root", out]
    plan = json.loads(run(TRAIN, *argv, "--dry_run", "--plan_json").stdout.strip().splitlines()[-1])
    assert not os.path.exists(out)  # a dry run writes nothing
    run(TRAIN, *argv)
    exp = only_dir(out)
    assert exp == plan["experiment_dir"] and exp.startswith(os.path.join(
        out, "boolq,COPA,CB", "classification-sampleFraction-0.99_epochs-1_rank-8_dropout-0.1-q_proj,v_proj,up_proj-steps3-h"))
    assert exp.endswith("-standard")  # the hash stands for the recipe settings that are not the original's:
    record = json.load(open(os.path.join(exp, "experiment.json")))
    content = record["identity"]["model_content"]  # the local base, known by its content (not its folder's name)
    assert len(content) == 12 and record["identity"]["model"] == "SmolLM2-135M-Instruct"
    assert record["identity_suffix"] == {"model_content": content, "per_device_train_batch_size": 2,
                                         "gradient_accumulation_steps": 1, "max_seq_length": 256,
                                         **({} if record["precision"]["dtype"] == "bf16" else {"dtype": "fp32"})}
    with open(os.path.join(exp, "assets", "adapter_config.json")) as f:
        assert sorted(json.load(f)["target_modules"]) == ["q_proj", "up_proj", "v_proj"]
    assert os.path.isfile(os.path.join(exp, "assets", "adapter_model.safetensors"))
    [count] = glob.glob(os.path.join(exp, "*_total_*.txt"))
    trained, total = map(int, os.path.basename(count)[:-4].split("_total_"))
    lines = open(count).read().split()
    assert int(lines[0]) == trained and int(lines[1]) == total and float(lines[2]) == pytest.approx(trained / total)
    # r=8 on q (576->576), v (576->192), up (576->1536) in 30 layers
    assert trained == 30 * 8 * ((576 + 576) + (576 + 192) + (576 + 1536)) == plan["trainable_params"]
    results = json.load(open(os.path.join(exp, "results.json")))
    assert [results[k] for k in ("epochs", "lora_r", "dropout")] == [1, 8, 0.1] and results["train_loss"] > 0
    record = json.load(open(os.path.join(exp, "experiment.json")))
    assert record["global_step"] == 3 == plan["optimizer_steps"] and record["train_blocks"] == plan["blocks"]
    assert record["args"]["seed"] == 42 and record["versions"]["transformers"]
    assert record["args"]["gradient_checkpointing"] is False and record["precision"]["dtype"] in ("fp32", "bf16")
    assert record["data"]["CB"]["path"] == os.path.join(SAMPLE, "CB", "train.jsonl") and record["data"]["CB"]["used"] == 120
    assert os.path.getsize(os.path.join(exp, "results.pkl")) > 0
    assert glob.glob(os.path.join(exp, "logs", "events.out.tfevents.*"))
    # the same command again refuses to mix two runs; --overwrite replaces the run
    p = run(TRAIN, *argv, check=False)
    assert p.returncode == 2 and "already holds a finished run" in p.stderr and "--overwrite" in p.stderr
    marker = os.path.join(exp, "left-by-the-first-run")
    open(marker, "w").close()
    run(TRAIN, *argv, "--overwrite")
    assert not os.path.exists(marker) and json.load(open(os.path.join(exp, "experiment.json")))["global_step"] == 3


def test_bnb_training_checkpoints_and_evaluates_either_way(tmp_path):
    out = str(tmp_path / "exp")
    run(TRAIN, *SMALL, "--bnb", "--target_modules", "q_proj", "v_proj", "down_proj", "--tasks", "CB",
        "--max_steps", "2", "--output_root", out)
    exp = only_dir(out)
    assert "-q_proj,v_proj,down_proj-steps2-h" in exp and exp.endswith("-4bit")
    record = json.load(open(os.path.join(exp, "experiment.json")))
    assert record["args"]["gradient_checkpointing"] is True and record["precision"]["bnb"] is True  # as the original
    p = run(EVAL, "--experiment_dir", exp, "--max_test_samples", "4", "--max_new_tokens", "4")
    m = metrics(exp, "CB", "metrics-n4-new4")
    assert m["n"] == 4 and "CB" in p.stdout and m["bnb"] is True
    p = run(EVAL, "--experiment_dir", exp, "--max_test_samples", "4", "--max_new_tokens", "4", "--no-bnb")
    m = metrics(exp, "CB", "metrics-n4-new4-16bit")  # a 16-bit base: evaluated again, beside the 4-bit metrics
    assert m["bnb"] is False and m["dtype"] == "fp32" and "metrics exist" not in p.stdout
    assert metrics(exp, "CB", "metrics-n4-new4")["bnb"] is True  # both kept
    p = run(EVAL, "--experiment_dir", exp, "--max_test_samples", "4", "--max_new_tokens", "4", "--no-bnb")
    assert "CB: metrics exist" in p.stdout


# ---- learning, and what evaluation must guarantee on a trained adapter --------------------------------------

LEARN_TASKS = ["boolq", "COPA"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("learn"))
    run(TRAIN, "--pretrained_ckpt", MODEL, "--data_root", SAMPLE, "--tasks", *LEARN_TASKS, "--target_modules",
        "q_proj", "v_proj", "up_proj", "--loss_on", "completion", "--learning_rate", "2e-3", "--epochs", "3",
        "--max_samples", "80", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--max_seq_length", "256", "--output_root", out)
    exp = only_dir(out)
    run(EVAL, "--experiment_dir", exp, "--batch_size", "8")
    return exp


def test_training_beats_the_majority_baseline_on_held_out_rows(trained):
    beaten = []
    for task in LEARN_TASKS:
        m = metrics(trained, task)
        assert m["n"] == 40 and m["scoring"] == "generate"
        if m["accuracy_ci95"][0] > m["majority_baseline"]:
            beaten.append(task)
    assert len(beaten) >= 2, beaten


def test_evaluation_is_deterministic_and_resumes_after_sigkill(trained, tmp_path):
    first = {t: predictions(trained, t) for t in LEARN_TASKS}
    copy = linked_copy(trained, tmp_path / "copy")
    proc = subprocess.Popen([sys.executable, EVAL, "--experiment_dir", copy, "--batch_size", "1"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    done = os.path.join(copy, "metrics", f"{LEARN_TASKS[0]}_metrics_update.json")
    deadline = time.time() + 600
    while not os.path.exists(done) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # killed while the second task runs, one example at a time
    proc.wait()
    left = sorted(f for f in os.listdir(os.path.join(copy, "metrics")) if f != "adapter_norms.json")
    assert left == [f"{LEARN_TASKS[0]}_metrics_update.json", f"{LEARN_TASKS[0]}_predictions.jsonl"]  # nothing half-written
    json.load(open(done))
    mtime = os.path.getmtime(done)
    p = run(EVAL, "--experiment_dir", copy, "--batch_size", "3")
    assert f"{LEARN_TASKS[0]}: metrics exist" in p.stdout and os.path.getmtime(done) == mtime  # only the rest redone
    for t in LEARN_TASKS:  # other runs, other batch sizes: the same predictions
        assert predictions(copy, t) == first[t]


def test_rank_scoring_agrees_with_greedy_and_greedy_matches_one_at_a_time(trained, tmp_path):
    import torch
    from peft import PeftModel

    import prompts

    greedy = {t: predictions(trained, t) for t in LEARN_TASKS}
    copy = linked_copy(trained, tmp_path / "copy")
    run(EVAL, "--experiment_dir", copy, "--scoring", "rank")
    agree = total = 0
    for t in LEARN_TASKS:
        assert metrics(copy, t, "metrics-rank")["scoring"] == "rank"
        for g, r in zip(greedy[t], predictions(copy, t, "metrics-rank")):
            agree += g["prediction"] == r["prediction"]
            total += 1
    assert agree / total >= 0.9

    # slow reference: one example at a time, plain greedy argmax loop, no padding
    model = models.load_base(MODEL, precision.precision("fp32", False, "generate"), precision.placement(0, False))
    tok = models.load_tokenizer(MODEL)
    model = PeftModel.from_pretrained(model, os.path.join(trained, "assets")).eval()
    task = prompts.TASKS["COPA"]
    examples, _ = data.load(task, SAMPLE, task.eval_split)
    for e, row in zip(examples, greedy["COPA"]):
        ids = torch.tensor([tok(prompts.prompt_text(task, e.fields))["input_ids"]])
        new = []
        with torch.no_grad():
            for _ in range(20):
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert tok.decode(new, skip_special_tokens=True) == row["generation"]


def test_a_folder_written_by_the_original_is_evaluated_and_aggregated(trained, tmp_path):
    """Laid out exactly as the original writes it: list reprs in both names, no experiment.json, six-key metrics."""
    root = tmp_path / "experiments"
    original = root / str(LEARN_TASKS) / ("classification-sampleFraction-0.99_epochs-3_rank-8_dropout-0.1-"
                                          "['q_proj', 'v_proj', 'up_proj']-standard")
    original.mkdir(parents=True)
    shutil.copytree(os.path.join(trained, "assets"), original / "assets")
    [count] = glob.glob(os.path.join(trained, "*_total_*.txt"))
    shutil.copy(count, original)
    shutil.copy(os.path.join(trained, "results.pkl"), original)
    assert json.load(open(original / "assets" / "adapter_config.json"))["base_model_name_or_path"] == MODEL
    p = run(EVAL, "--experiment_dir", str(original), "--data_root", SAMPLE)
    for t in LEARN_TASKS:
        assert metrics(str(original), t)["n"] == 40 and t in p.stdout
    assert not os.path.exists(original / "experiment.json")
    ours = root / ",".join(LEARN_TASKS) / os.path.basename(trained)
    shutil.copytree(trained, ours)
    import get_eval_tasks

    get_eval_tasks.main(["--root", str(root), "--no_plot"])
    results = json.load(open(root / "all_eval_results.json"))
    for folder in (str(LEARN_TASKS), ",".join(LEARN_TASKS)):
        [(name, per_task)] = results[folder].items()
        assert set(per_task) == set(LEARN_TASKS), (folder, name)
    assert results[str(LEARN_TASKS)][layout.short_name(original.name)]["COPA"]["accuracy"] == \
        metrics(trained, "COPA")["accuracy"]  # the same adapter, the same data: the same accuracy


def tfevents_steps(path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [e.step for e in EventFileLoader(path).Load() if e.HasField("summary") and
            any(v.tag == "train/loss" for v in e.summary.value)]


def test_training_is_deterministic_and_resumes_after_sigkill(tmp_path):
    from safetensors.torch import load_file

    # the embedded model on short blocks: steps long enough (a second or so) for the kill to land between
    # checkpoint-2 and checkpoint-4
    args = [*SMALL, "--max_seq_length", "128", "--tasks", "CB", "--target_modules", "q_proj", "v_proj", "--max_steps", "6", "--save_steps", "2",
            "--loss_on", "completion", "--max_samples", "40", "--logging_steps", "1"]
    a, b, c = (str(tmp_path / x) for x in "abc")
    run(TRAIN, *args, "--output_root", a)
    run(TRAIN, *args, "--output_root", b)
    rec_a, rec_b = (json.load(open(os.path.join(only_dir(r), "experiment.json"))) for r in (a, b))
    assert abs(rec_a["train_loss"] - rec_b["train_loss"]) < 1e-6 and rec_a["global_step"] == 6
    for r in (a, b):
        run(EVAL, "--experiment_dir", only_dir(r), "--max_test_samples", "8", "--max_new_tokens", "5")
    assert predictions(only_dir(a), "CB", "metrics-n8-new5") == predictions(only_dir(b), "CB", "metrics-n8-new5")

    proc = subprocess.Popen([sys.executable, TRAIN, *args, "--output_root", c], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 600
    while not glob.glob(os.path.join(c, "*", "*", "checkpoint-2", "trainer_state.json")) and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    exp_c = only_dir(c)
    assert not os.path.exists(os.path.join(exp_c, "experiment.json"))  # it really died before the end
    assert not glob.glob(os.path.join(exp_c, "checkpoint-4"))
    p = run(TRAIN, *args, "--output_root", c, check=False)
    assert p.returncode == 2 and "partial run" in p.stderr
    before = set(glob.glob(os.path.join(exp_c, "logs", "events.out.tfevents.*")))
    p = run(TRAIN, *args, "--output_root", c, "--resume")
    assert "continuing from" in p.stdout and p.stdout.split("continuing from ")[1].split()[0].endswith("checkpoint-2")
    [resumed_log] = set(glob.glob(os.path.join(exp_c, "logs", "events.out.tfevents.*"))) - before
    assert tfevents_steps(resumed_log)[0] == 3  # it went on from step 3, it did not start again at step 1
    rec_c = json.load(open(os.path.join(exp_c, "experiment.json")))
    assert rec_c["global_step"] == rec_a["global_step"] == 6
    # the mean over all six steps, the first two read back from checkpoint-2's log history
    assert abs(rec_c["train_loss"] - rec_a["train_loss"]) < 1e-4
    adapter_a = load_file(os.path.join(only_dir(a), "assets", "adapter_model.safetensors"))
    adapter_c = load_file(os.path.join(exp_c, "assets", "adapter_model.safetensors"))
    assert adapter_a.keys() == adapter_c.keys()
    for k in adapter_a:  # and it ends where the uninterrupted run ended
        assert (adapter_a[k] - adapter_c[k]).abs().max() < 1e-5, k


def test_multi_process_training_under_accelerate(tmp_path):
    """Two processes, data parallel: `accelerate launch --multi_gpu` starts them through torch.distributed.run;
    on a machine without GPUs each trains on the CPU and gradients are averaged over gloo."""
    out = str(tmp_path / "ddp")
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(free_port()), TRAIN, *SMALL,
                        "--pretrained_ckpt", small_llama(tmp_path, layers=2), "--tasks", "CB", "--target_modules", "q_proj", "v_proj", "--max_steps", "2",
                        "--max_samples", "40", "--output_root", out],
                       capture_output=True, text=True, timeout=900, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    record = json.load(open(os.path.join(only_dir(out), "experiment.json")))
    assert record["global_step"] == 2 and "one process of several" in record["placement"]
    assert p.stdout.count("trainable parameters:") == 2  # two processes each loaded a model


@pytest.mark.slow  # two real processes, stopped
def test_a_stop_reaches_both_processes_under_accelerate_and_the_run_resumes(tmp_path):
    """The study's stop (SIGUSR1, as on a Slurm time limit) sent to `accelerate launch` and every process below it
    (the workers run in sessions of their own): both ranks agree on the step, save one checkpoint there, and the
    run resumed under accelerate ends at its planned step."""
    import threading

    from keys_values.experiment import checkpoints
    from keys_values.launch import Run
    from keys_values.launch.execution import Execution

    out = str(tmp_path / "ddp")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), TRAIN, *SMALL,
               "--pretrained_ckpt", small_llama(tmp_path, layers=1), "--tasks", "CB", "--target_modules", "q_proj",
               "--max_steps", "300", "--save_steps", "100000", "--max_samples", "40", "--output_root", out]
    execution = Execution(Run("ddp", [command], tmp_path / "ddp.log"), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result = {}
    thread = threading.Thread(target=lambda: result.update(outcome=execution()))
    thread.start()
    deadline = time.time() + 600
    logs = None
    while thread.is_alive() and time.time() < deadline and not (logs and os.path.isdir(logs) and os.listdir(logs)):
        found = glob.glob(os.path.join(out, "CB", "*"))
        logs = os.path.join(found[0], "logs") if found else None
        time.sleep(0.2)
    time.sleep(5)  # training
    assert execution.stop()
    thread.join(600)
    outcome, log = result["outcome"], open(tmp_path / "ddp.log").read()
    assert outcome.resumable and outcome.note == "interrupted (resumable)", log[-3000:]
    exp = only_dir(out)
    [(step, _)] = checkpoints.checkpoints(exp)  # one checkpoint, written at the step both ranks stopped at
    said = re.findall(r"stopped on SIGUSR1 at step (\d+)", log)  # each rank says where it stopped: the same step
    assert 0 < step < 300 and said == [str(step)] * 2, log[-3000:]
    assert "Traceback" not in log and "mismatch" not in log.lower()
    p = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.load(open(os.path.join(exp, "experiment.json")))["global_step"] == 300


def test_thousand_rows_longer_than_the_context_keep_their_cue(tmp_path):
    """20 Newsgroups-like load: 1,000 texts longer than the model's 8,192-token context, at the default batch
    size. The text field is shortened, the '### Class:' cue kept, and no example is lost to memory. A tiny model
    with the embedded model's tokenizer and context: what is tested is the prompts, not the model."""
    model = small_llama(tmp_path, layers=1, positions=8192, name="Tiny-8k")
    folder = tmp_path / "data" / "20_Newsgroups_Fixed"
    folder.mkdir(parents=True)
    words = "orbit rocket launch satellite engine brakes puck goalie ".split()
    with open(folder / "test.jsonl", "w") as f:
        for i in range(1000):
            text = " ".join(words[(i + k) % len(words)] for k in range(9000))  # ~9,000+ tokens
            f.write(json.dumps({"text": text, "label": "sci.space" if i % 2 else "rec.autos"}) + "\n")
    out = str(tmp_path / "out")
    run(EVAL, "--pretrained_ckpt", model, "--tasks", "20_Newsgroups_Fixed", "--data_root", str(tmp_path / "data"),
        "--output_root", out, "--max_input_length", "96", "--max_new_tokens", "3")
    exp = os.path.join(out, "20_Newsgroups_Fixed", "base-Tiny-8k")
    m = metrics(exp, "20_Newsgroups_Fixed", "metrics-new3-len96")
    assert m["n"] == 1000 and m["oom_examples"] == [] and m["data"]["rows"] == 1000 and m["skipped"] == 0
    rows = predictions(exp, "20_Newsgroups_Fixed", "metrics-new3-len96")
    assert len(rows) == 1000 and all(r["generation"] is not None for r in rows)


def test_study_with_two_seeds_pools_them(tmp_path, monkeypatch):
    """The study's plan, commands, skipping and report on a tiny model, its commands run in this process (the
    launchers' processes are tests/test_launch.py's)."""
    in_process_launcher(monkeypatch)
    out = str(tmp_path / "study")
    run(STUDY, "--seeds", "1", "2", "--settings", "q_proj v_proj up_proj", "q_proj v_proj down_proj", "--tasks", "CB",
        "--max_steps", "2", "--max_samples", "40", "--max_test_samples", "12", "--output_root", out,
        "--pretrained_ckpt", small_llama(tmp_path, layers=2), "--data_root", SAMPLE, "--scoring", "rank",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_seq_length", "128")
    folders = sorted(os.listdir(os.path.join(out, "CB")))
    adapters = [f for f in folders if os.path.isfile(os.path.join(out, "CB", f, "assets", "adapter_config.json"))]
    assert len(adapters) == 4 and sum("-seed2-" in f and f.endswith("-standard") for f in adapters) == 2
    md = open(os.path.join(out, "CB", "summary.md")).read()
    assert "seeds 1, 2" in md and "stratified McNemar" in md
    comp = [line for line in md.splitlines() if line.startswith("| q,v+up (keys) vs q,v+down (values) |")]
    assert len(comp) == 1 and "p=" in comp[0]
    assert os.path.getsize(os.path.join(out, "CB", "summary.png")) > 10_000
