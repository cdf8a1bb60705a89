"""End-to-end runs of the two scripts on the embedded model and sample_data (slow; still run in CI)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import utils
from conftest import ROOT

pytestmark = pytest.mark.slow
MODEL = os.path.join(ROOT, utils.EMBEDDED_MODEL)
SAMPLE = os.path.join(ROOT, "sample_data")
TRAIN = os.path.join(ROOT, "llama2_classification_multi_tasks.py")
EVAL = os.path.join(ROOT, "llama2_classification_multi_tasks_inference.py")
SMALL = ["--pretrained_ckpt", MODEL, "--data_root", SAMPLE, "--epochs", "1", "--per_device_train_batch_size", "2",
         "--gradient_accumulation_steps", "1", "--max_seq_length", "256"]


def run(script, *args, check=True, timeout=900):
    p = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check and p.returncode != 0:
        raise AssertionError(f"{os.path.basename(script)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def only_dir(root):
    [d] = glob.glob(os.path.join(root, "*", "*"))
    return d


def linked_copy(exp, folder):
    """A second experiment folder sharing the trained adapter, with metrics of its own."""
    os.makedirs(folder)
    for name in ("assets", "experiment.json"):
        os.symlink(os.path.join(exp, name), os.path.join(folder, name))
    return str(folder)


def predictions(exp, task):
    with open(os.path.join(exp, "metrics", f"{task}_predictions.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_acceptance_command_leaves_the_spec_layout(tmp_path):
    out = str(tmp_path / "exp")
    run(TRAIN, *SMALL, "--target_modules", "q_proj", "v_proj", "up_proj", "--tasks", "boolq", "COPA", "CB",
        "--max_steps", "3", "--output_root", out)
    exp = only_dir(out)
    assert exp == os.path.join(out, "boolq,COPA,CB", "classification-sampleFraction-0.99_epochs-1_rank-8_dropout-0.1-"
                                                      "q_proj,v_proj,up_proj-standard")
    with open(os.path.join(exp, "assets", "adapter_config.json")) as f:
        assert sorted(json.load(f)["target_modules"]) == ["q_proj", "up_proj", "v_proj"]
    assert os.path.isfile(os.path.join(exp, "assets", "adapter_model.safetensors"))
    [count] = glob.glob(os.path.join(exp, "*_total_*.txt"))
    trained, total = map(int, os.path.basename(count)[:-4].split("_total_"))
    lines = open(count).read().split()
    assert int(lines[0]) == trained and int(lines[1]) == total and float(lines[2]) == pytest.approx(trained / total)
    # r=8 on q (576->576), v (576->192), up (576->1536) in 30 layers
    assert trained == 30 * 8 * ((576 + 576) + (576 + 192) + (576 + 1536))
    results = json.load(open(os.path.join(exp, "results.json")))
    assert [results[k] for k in ("epochs", "lora_r", "dropout")] == [1, 8, 0.1] and results["train_loss"] > 0
    record = json.load(open(os.path.join(exp, "experiment.json")))
    assert record["global_step"] == 3 and record["args"]["seed"] == 42 and record["versions"]["transformers"]
    assert os.path.getsize(os.path.join(exp, "results.pkl")) > 0
    assert glob.glob(os.path.join(exp, "logs", "events.out.tfevents.*"))
    # the same command again refuses to mix two runs
    p = run(TRAIN, *SMALL, "--target_modules", "q_proj", "v_proj", "up_proj", "--tasks", "boolq", "COPA", "CB",
            "--max_steps", "3", "--output_root", out, check=False)
    assert p.returncode == 2 and "--resume" in p.stderr and "--overwrite" in p.stderr


def test_bnb_training_and_evaluation(tmp_path):
    out = str(tmp_path / "exp")
    run(TRAIN, *SMALL, "--bnb", "--target_modules", "q_proj", "v_proj", "down_proj", "--tasks", "CB",
        "--max_steps", "2", "--output_root", out)
    exp = only_dir(out)
    assert exp.endswith("-q_proj,v_proj,down_proj-4bit")
    p = run(EVAL, "--experiment_dir", exp, "--max_test_samples", "4", "--max_new_tokens", "4")
    m = json.load(open(os.path.join(exp, "metrics", "CB_metrics_update.json")))
    assert m["n"] == 4 and "CB" in p.stdout


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
        m = json.load(open(os.path.join(trained, "metrics", f"{task}_metrics_update.json")))
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
    left = sorted(os.listdir(os.path.join(copy, "metrics")))
    assert left == [f"{LEARN_TASKS[0]}_metrics_update.json", f"{LEARN_TASKS[0]}_predictions.jsonl"]  # nothing half-written
    json.load(open(done))
    mtime = os.path.getmtime(done)
    p = run(EVAL, "--experiment_dir", copy, "--batch_size", "3")
    assert f"{LEARN_TASKS[0]}: metrics exist" in p.stdout and os.path.getmtime(done) == mtime  # only the rest redone
    for t in LEARN_TASKS:  # other runs, other batch sizes: the same predictions
        assert predictions(copy, t) == first[t]


def test_rank_scoring_agrees_with_greedy_and_both_match_one_at_a_time(trained, tmp_path):
    import torch
    from peft import PeftModel

    import llama2_classification_multi_tasks_inference as inf
    import prompts

    greedy = {t: predictions(trained, t) for t in LEARN_TASKS}
    copy = linked_copy(trained, tmp_path / "copy")
    run(EVAL, "--experiment_dir", copy, "--scoring", "rank")
    agree = total = 0
    for t in LEARN_TASKS:
        m = json.load(open(os.path.join(copy, "metrics", f"{t}_metrics_update.json")))
        assert m["scoring"] == "rank"
        for g, r in zip(greedy[t], predictions(copy, t)):
            agree += g["prediction"] == r["prediction"]
            total += 1
    assert agree / total >= 0.9

    # slow reference: one example at a time, plain greedy argmax loop, no padding
    model, tok = utils.load_base(MODEL)
    model = PeftModel.from_pretrained(model, os.path.join(trained, "assets")).eval()
    task = prompts.TASKS["COPA"]
    examples = prompts.load(task, SAMPLE, task.eval_split)
    for (fields, _), row in zip(examples, greedy["COPA"]):
        ids = torch.tensor([utils.encode_prompt(tok, task, fields, 2048 - 20)])
        new = []
        with torch.no_grad():
            for _ in range(20):
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert tok.decode(new, skip_special_tokens=True) == row["generation"]
    assert inf  # the script imports as a module (its main is not run)


def test_training_is_deterministic_and_resumes_after_sigkill(tmp_path):
    args = [*SMALL, "--tasks", "CB", "--target_modules", "q_proj", "v_proj", "--max_steps", "6", "--save_steps", "2",
            "--loss_on", "completion", "--max_samples", "40"]
    a, b, c = (str(tmp_path / x) for x in "abc")
    run(TRAIN, *args, "--output_root", a)
    run(TRAIN, *args, "--output_root", b)
    rec_a, rec_b = (json.load(open(os.path.join(only_dir(r), "experiment.json"))) for r in (a, b))
    assert abs(rec_a["train_loss"] - rec_b["train_loss"]) < 1e-6 and rec_a["global_step"] == 6
    for r in (a, b):
        run(EVAL, "--experiment_dir", only_dir(r), "--max_test_samples", "8", "--max_new_tokens", "5")
    assert predictions(only_dir(a), "CB") == predictions(only_dir(b), "CB")

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
    p = run(TRAIN, *args, "--output_root", c, check=False)
    assert p.returncode == 2 and "partial run" in p.stderr
    run(TRAIN, *args, "--output_root", c, "--resume")
    rec_c = json.load(open(os.path.join(exp_c, "experiment.json")))
    assert rec_c["global_step"] == rec_a["global_step"] == 6


def test_multi_process_training_under_accelerate(tmp_path):
    out = str(tmp_path / "ddp")
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", TRAIN, *SMALL,
                        "--tasks", "CB", "--target_modules", "q_proj", "v_proj", "--max_steps", "2",
                        "--max_samples", "40", "--output_root", out],
                       capture_output=True, text=True, timeout=900, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    record = json.load(open(os.path.join(only_dir(out), "experiment.json")))
    assert record["global_step"] == 2


def test_thousand_rows_longer_than_the_context_keep_their_cue(tmp_path):
    """20 Newsgroups-like load: 1,000 texts longer than the model's 8,192-token context, at the default batch
    size. The text field is shortened, the '### Class:' cue kept, and no example is lost to memory."""
    folder = tmp_path / "data" / "20_Newsgroups_Fixed"
    folder.mkdir(parents=True)
    words = "orbit rocket launch satellite engine brakes puck goalie ".split()
    with open(folder / "test.jsonl", "w") as f:
        for i in range(1000):
            text = " ".join(words[(i + k) % len(words)] for k in range(9000))  # ~9,000+ tokens
            f.write(json.dumps({"text": text, "label": "sci.space" if i % 2 else "rec.autos"}) + "\n")
    out = str(tmp_path / "out")
    run(EVAL, "--pretrained_ckpt", MODEL, "--tasks", "20_Newsgroups_Fixed", "--data_root", str(tmp_path / "data"),
        "--output_root", out, "--max_input_length", "96", "--max_new_tokens", "3")
    metrics_dir = os.path.join(out, "20_Newsgroups_Fixed", "base-SmolLM2-135M-Instruct", "metrics")
    m = json.load(open(os.path.join(metrics_dir, "20_Newsgroups_Fixed_metrics_update.json")))
    assert m["n"] == 1000 and m["oom_examples"] == []
    rows = [json.loads(line) for line in open(os.path.join(metrics_dir, "20_Newsgroups_Fixed_predictions.jsonl"))]
    assert len(rows) == 1000 and all(r["generation"] is not None for r in rows)
