"""The kinds of fault people report against LoRA tools, each turned into inputs with the right outcome: a finished
run never changed by --resume, a resume from the newest whole checkpoint, numbers that are not finite, over-long
rows, 4-bit training on CPUs that repack their weights, interrupts, folders in use or given wrongly, file modes,
missing evaluation data. The runs use a tiny random Llama (2 layers, the embedded tokenizer) and a dozen rows."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction

import pytest
import torch

import llama2_classification_multi_tasks as train
import prompts
import utils
from conftest import EVAL, MODEL, ROOT, SAMPLE, TRAIN, free_port, only_dir, run, small_llama
from keys_values import callbacks, config, identity, lora, models, packing, precision
from keys_values import data as task_data
from keys_values.experiment import checkpoints, layout, lock, records, state
from keys_values.loss import NonFinite, OutputLayerInTheLoss
from keys_values.training import folder
from utils import UserError

SHARED = ["--max_seq_length", "64", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
          "--dropout", "0", "--target_modules", "q_proj", "v_proj"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_llama(tmp_path_factory.mktemp("model"), layers=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """D/CB: the first 12 training and 8 validation rows of sample_data/CB."""
    root = tmp_path_factory.mktemp("D")
    (root / "CB").mkdir()
    for split, n in (("train", 12), ("validation", 8)):
        with open(os.path.join(SAMPLE, "CB", f"{split}.jsonl")) as f:
            (root / "CB" / f"{split}.jsonl").write_text("".join(f.readlines()[:n]))
    return str(root)


def training(model, data, out, *extra):
    return ["--pretrained_ckpt", model, "--data_root", data, "--tasks", "CB", "--output_root", out, *SHARED, *extra]


def files(exp):
    """{path: bytes} of what a finished run's record and results hold."""
    names = ["experiment.json", "results.json", "results.pkl", "assets/adapter_model.safetensors"]
    return {n: open(os.path.join(exp, n), "rb").read() for n in names}


# ---- 1. a finished run is never changed except by --overwrite -----------------------------------------------

@pytest.mark.parametrize("length", [["--max_samples", "3", "--epochs", "1"], ["--max_steps", "2"]])
def test_resume_on_a_finished_run_says_so_and_changes_nothing(model, data, tmp_path, length):
    argv = training(model, data, str(tmp_path), "--save_steps", "1", *length)
    run(TRAIN, *argv)
    exp = only_dir(str(tmp_path))
    before = files(exp)
    p = run(TRAIN, *argv, "--resume")
    assert "finished run with these settings" in p.stdout and "nothing to do" in p.stdout
    assert files(exp) == before and json.loads(before["results.json"])["train_loss"] > 0


def make_partial(exp, keep):
    """What an interrupted run leaves: no record, no assets, and only the checkpoints up to step `keep`."""
    for name in ("experiment.json", "results.json", "results.pkl", "assets"):
        path = os.path.join(exp, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    for step, path in checkpoints.checkpoints(exp):
        if step > keep:
            shutil.rmtree(path)


def test_resume_uses_the_newest_whole_checkpoint_and_the_loss_of_every_step(model, data, tmp_path):
    from safetensors.torch import load_file

    argv = training(model, data, str(tmp_path), "--max_steps", "4", "--save_steps", "1")
    run(TRAIN, *argv)
    exp = only_dir(str(tmp_path))
    whole = json.load(open(os.path.join(exp, "experiment.json")))
    adapter = load_file(os.path.join(exp, "assets", "adapter_model.safetensors"))
    make_partial(exp, keep=4)
    os.unlink(os.path.join(exp, "checkpoint-4", "trainer_state.json"))  # cut off while writing
    with open(os.path.join(exp, "checkpoint-3", "adapter_model.safetensors"), "r+b") as f:
        f.truncate(20)
    os.makedirs(os.path.join(exp, "checkpoint-final"))  # not checkpoint-<number>: ignored
    p = run(TRAIN, *argv, check=False)
    assert p.returncode == 2 and "partial run" in p.stderr
    open(os.path.join(exp, "checkpoint-3.bak"), "w").close()  # not checkpoint-<number>: ignored
    in_the_way = os.path.join(exp, "checkpoint-4.tmp")  # a file where the resumed run will save its step 4
    os.rename(os.path.join(exp, "checkpoint-4"), in_the_way)
    open(os.path.join(exp, "checkpoint-4"), "w").close()
    p = run(TRAIN, *argv, "--resume", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(f"error: {exp}/checkpoint-4 is not a checkpoint folder")
    assert "Traceback" not in p.stderr
    os.unlink(os.path.join(exp, "checkpoint-4"))
    os.rename(in_the_way, os.path.join(exp, "checkpoint-4"))
    p = run(TRAIN, *argv, "--resume")
    skipped = [line for line in p.stdout.splitlines() if line.startswith("--resume: skipping")]
    assert len(skipped) == 2 and "checkpoint-4: no trainer_state.json" in skipped[0]
    assert "checkpoint-3: adapter weights unreadable" in skipped[1] and "checkpoint-final" not in p.stdout
    assert "continuing from" in p.stdout and "checkpoint-2 (step 2)" in p.stdout
    resumed = json.load(open(os.path.join(exp, "experiment.json")))
    assert resumed["global_step"] == 4
    # the mean over all four steps (two read back from checkpoint-2's log history), as the uninterrupted run
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-5)
    for k, v in load_file(os.path.join(exp, "assets", "adapter_model.safetensors")).items():
        assert (v - adapter[k]).abs().max() < 1e-5, k


@pytest.mark.parametrize("keep", [1, 2, 3], ids=["the first step", "a middle step", "the last step"])
@pytest.mark.parametrize("length", [["--max_steps", "3"], ["--epochs", "3", "--max_samples", "2"]],
                         ids=["max_steps", "epochs"])
def test_a_resumed_run_ends_where_the_uninterrupted_one_ends(model, data, tmp_path, keep, length):
    """Stopped at the first, a middle or the last step (the last: a stop at the last step, or a kill while the
    finished run was being saved, leave checkpoint-3 and no record): --resume ends at step 3 with the same loss
    and adapter as the uninterrupted run, never one step more."""
    from safetensors.torch import load_file

    argv = training(model, data, str(tmp_path), "--save_steps", "1", *length)
    run(TRAIN, *argv)
    exp = only_dir(str(tmp_path))
    whole = json.load(open(os.path.join(exp, "experiment.json")))
    assert whole["global_step"] == 3
    adapter = load_file(os.path.join(exp, "assets", "adapter_model.safetensors"))
    make_partial(exp, keep=keep)
    p = run(TRAIN, *argv, "--resume")
    resumed = json.load(open(os.path.join(exp, "experiment.json")))
    assert resumed["global_step"] == 3 and not os.path.exists(os.path.join(exp, "checkpoint-4"))
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-5)
    assert ("holds the run's last step" in p.stdout) == (keep == 3)
    for k, v in load_file(os.path.join(exp, "assets", "adapter_model.safetensors")).items():
        assert (v - adapter[k]).abs().max() < 1e-5, k


# The training script under a Slurm array task (the stand-ins), as the study runs it (with --resume), stopped by
# the time-limit signal at a chosen point on its first start: at the end of step K ("step K"), as the final save
# begins ("save"), or as the final save hangs past the task's grace period and is killed ("save, killed")
UNDER_SLURM = """
import os, sys, time
root, starts, ready, where = sys.argv[1:5]
argv = sys.argv[5:]
sys.path.insert(0, root)
with open(starts, "a") as f:
    f.write("start\\n")
first = open(starts).read().count("start") == 1
from keys_values import callbacks
from keys_values.training import save

asked = []
request_stop = callbacks.RunControl.request_stop


def noting(self, signum, frame):
    asked.append(signum)
    request_stop(self, signum, frame)


def stop_here():
    open(ready, "w").close()  # the stand-in's cue: the time-limit signal comes now
    deadline = time.time() + 120
    while not asked and time.time() < deadline:
        time.sleep(0.05)


callbacks.RunControl.request_stop = noting
if first and where.startswith("step"):
    on_step_end = callbacks.RunControl.on_step_end

    def at_step(self, args, state, control, **kwargs):
        if state.global_step == int(where.split()[1]):
            stop_here()
        return on_step_end(self, args, state, control, **kwargs)

    callbacks.RunControl.on_step_end = at_step
if first and where.startswith("save"):
    write_json = save.write_json

    def in_the_save(path, obj):  # the adapter and results.pkl are written; results.json and the record not yet
        stop_here()
        if where == "save, killed":
            time.sleep(120)  # a save that hangs (a slow file system): the task kills it after its grace period
        return write_json(path, obj)

    save.write_json = in_the_save
import llama2_classification_multi_tasks as train
from utils import run_main

sys.argv = [train.__file__, *argv]
run_main(train.main)
"""


@pytest.fixture(scope="module")
def uninterrupted(model, data, tmp_path_factory):
    """The run a stopped and resumed one must equal: (its folder's name, its record, its adapter)."""
    from safetensors.torch import load_file

    root = str(tmp_path_factory.mktemp("whole"))
    run(TRAIN, *training(model, data, root, "--max_steps", "3"))
    exp = only_dir(root)
    return (os.path.basename(exp), json.load(open(os.path.join(exp, "experiment.json"))),
            load_file(os.path.join(exp, "assets", "adapter_model.safetensors")))


@pytest.mark.slow  # a Slurm array task (stand-ins), the training in a process of its own, requeued
@pytest.mark.parametrize("where,starts", [("step 1", 2), ("step 2", 2), ("step 3", 1), ("save", 1),
                                          ("save, killed", 2)],
                         ids=["the first step", "a middle step", "the last step", "the final save",
                              "the final save, killed"])
def test_a_run_stopped_by_slurms_time_limit_ends_where_the_uninterrupted_one_ends(model, data, tmp_path, slurm,
                                                                                   monkeypatch, uninterrupted,
                                                                                   where, starts):
    """Slurm's time-limit signal at the first, a middle or the last step, or during the final save: the run
    ends at the same step with the same loss and adapter as the uninterrupted run. Stopped before its last step,
    it saves that step's checkpoint and the requeued task resumes from it; at the last step or during the final
    save, the save finishes in the same task (nothing is left to resume); a save killed after the task's grace
    period is redone by the requeued task from the last step's checkpoint."""
    from safetensors.torch import load_file

    from keys_values import launch
    from keys_values.launch import Run, SlurmOptions

    name, whole, adapter = uninterrupted
    ready, started = tmp_path / "ready", tmp_path / "starts"
    monkeypatch.setenv("SLURM_STANDIN_TIME_LIMIT", f"0:{ready}")
    out = str(tmp_path / "out")
    command = [sys.executable, "-c", UNDER_SLURM, ROOT, str(started), str(ready), where,
               *training(model, data, out, "--max_steps", "3"), "--resume"]
    [outcome] = launch.run_all([Run("long", [command], tmp_path / "long.log")], "slurm", gpus_per_run=0,
                               slurm=SlurmOptions(time=5, signal_delay_s=45), folder=tmp_path / "study",
                               progress=lambda line: None)
    log = open(outcome.log).read()
    assert (outcome.ok, outcome.returncode) == (True, 0), log[-3000:]
    assert "the task is requeued" in log and open(started).read().count("start") == starts, log[-3000:]
    exp = only_dir(out)
    record = json.load(open(os.path.join(exp, "experiment.json")))
    assert os.path.basename(exp) == name and record["global_step"] == whole["global_step"] == 3
    assert not os.path.exists(os.path.join(exp, "checkpoint-4"))
    assert record["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-5)
    for k, v in load_file(os.path.join(exp, "assets", "adapter_model.safetensors")).items():
        assert (v - adapter[k]).abs().max() < 1e-5, k
    if where.startswith("step") and starts == 2:
        step = int(where.split()[1])
        assert f"stopped on SIGUSR1 at step {step}: checkpoint-{step} kept" in log
        assert f"--resume: continuing from {os.path.join(exp, f'checkpoint-{step}')} (step {step})" in log
    if where == "save, killed":
        assert f"holds the run's last step (3): it is the finished run" in log
    if starts == 1:
        assert "SIGUSR1 asked for a stop once the run's last step was done: the run was saved as finished" in log


def test_a_dry_run_says_what_a_finished_or_interrupted_folder_holds(model, data, tmp_path):
    """--dry_run on a folder that holds a run: a finished one needs nothing (--resume) or --overwrite; an
    interrupted one is continued by --resume from its newest whole checkpoint, which the plan names."""
    argv = training(model, data, str(tmp_path), "--max_steps", "3", "--save_steps", "1")
    run(TRAIN, *argv)
    exp = only_dir(str(tmp_path))

    def dry_run():
        out = run(TRAIN, *argv, "--dry_run", "--plan_json").stdout.strip().splitlines()
        return out, json.loads(out[-1])

    words, plan = dry_run()
    assert plan["folder"] == "finished" and plan["resumes_from_step"] is None
    assert "  a finished run: with --resume there is nothing to do; --overwrite trains it again" in words
    make_partial(exp, keep=3)
    with open(os.path.join(exp, "checkpoint-3", "adapter_model.safetensors"), "r+b") as f:
        f.truncate(20)  # not whole: the resume would skip it
    words, plan = dry_run()
    assert plan["folder"] == "partial" and plan["resumes_from_step"] == 2
    assert "  an interrupted run: --resume continues it from step 2 (checkpoint-2); --overwrite starts it again" \
        in words
    for step, path in checkpoints.checkpoints(exp):
        shutil.rmtree(path)
    words, plan = dry_run()
    assert plan["resumes_from_step"] is None and "continues it from the first step (no whole checkpoint)" in \
        "\n".join(words)


def test_a_resumed_run_saves_and_logs_at_its_own_intervals(model, data, tmp_path):
    """The Trainer restores the checkpoint's save and logging intervals; the flags of the resumed run decide."""
    argv = training(model, data, str(tmp_path), "--max_steps", "4", "--save_steps", "1", "--logging_steps", "1")
    run(TRAIN, *argv)
    exp = only_dir(str(tmp_path))
    make_partial(exp, keep=1)
    p = run(TRAIN, *argv, "--save_steps", "3", "--logging_steps", "2", "--resume")
    assert "--resume: saving every 3 steps and logging every 2 from step 1 (the checkpoint's run: 1 and 1)" in p.stdout
    assert [step for step, _ in checkpoints.checkpoints(exp)] == [1, 3, 4]  # 4: the Trainer saves the last step
    logged = [e["step"] for e in json.load(open(os.path.join(exp, "checkpoint-3", "trainer_state.json")))["log_history"]
              if "loss" in e]
    assert logged == [1, 2, 3]  # step 1 from the first run; 2 on the new interval; 3 where it saved (run_control)


def checkpoint(folder, number, **broken):
    """A checkpoint folder as the Trainer writes it, with parts left out or broken on request."""
    from safetensors.torch import save_file

    step = number
    path = os.path.join(folder, f"checkpoint-{number}")
    os.makedirs(path)
    if broken.get("state") != "missing":
        text = "{not json" if broken.get("state") == "corrupt" else json.dumps(
            {"global_step": broken.get("step", step), "log_history": []})
        open(os.path.join(path, "trainer_state.json"), "w").write(text)
    if broken.get("weights") != "missing":
        save_file({"a.lora_A.weight": torch.ones(2, 2)}, os.path.join(path, "adapter_model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        kind, file = broken.get(name), os.path.join(path, name)
        if kind == "missing":
            continue
        torch.save({"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3}]}, file)
        if kind == "empty":
            open(file, "wb").close()
        elif kind == "cut off":
            with open(file, "r+b") as f:
                f.truncate(os.path.getsize(file) // 2)
        elif kind == "garbage":
            open(file, "wb").write(b"\x00not a torch file" * 10)
        elif kind == "unsafe":  # a pickle that weights_only loading refuses, as the Trainer loads it
            torch.save({"lr": Fraction(1, 3)}, file)
    return path


@pytest.mark.parametrize("broken,why", [
    ({"state": "missing"}, "no trainer_state.json"),
    ({"state": "corrupt"}, "trainer_state.json unreadable"),
    ({"step": 9}, "says step 9, not 3"),
    ({"weights": "missing"}, "no adapter weights"),
    ({"optimizer.pt": "missing"}, "no optimizer state"),
    ({"optimizer.pt": "empty"}, "optimizer.pt is empty"),
    ({"scheduler.pt": "missing"}, "no scheduler state"),
    ({"optimizer.pt": "cut off"}, "optimizer.pt is unreadable"),
    ({"optimizer.pt": "garbage"}, "optimizer.pt is unreadable"),
    ({"scheduler.pt": "cut off"}, "scheduler.pt is unreadable"),
    ({"scheduler.pt": "empty"}, "scheduler.pt is empty"),
    ({"scheduler.pt": "unsafe"}, "scheduler.pt is unreadable"),
    ({"rng_state.pth": "empty"}, "rng_state.pth is empty"),
    ({"rng_state.pth": "garbage"}, "rng_state.pth is unreadable"),
])
def test_a_checkpoint_that_is_not_whole_is_skipped_with_its_reason(tmp_path, broken, why):
    checkpoint(str(tmp_path), 1)
    checkpoint(str(tmp_path), 3, **broken)
    os.makedirs(tmp_path / "checkpoint-4.tmp")
    lines = []
    step, path = checkpoints.newest_whole_checkpoint(str(tmp_path), report=lines.append)
    assert step == 1 and path.endswith("checkpoint-1")
    assert len(lines) == 1 and "checkpoint-3" in lines[0] and why in lines[0]
    assert checkpoints.checkpoint_problem(checkpoint(str(tmp_path), 5), 5) is None


# ---- run identity: reuse and resume only with the same settings -----------------------------------------------

def record_with(tmp_path, **changes):
    args = config.training_config(["--tasks", "CB", "--output_root", str(tmp_path)])
    ident = identity.training(args, ["q_proj"], "fp32", 1, "abc")
    return args, ident, {**ident, **changes}


def test_a_finished_run_is_reused_only_with_the_same_identity(tmp_path):
    args, ident, other = record_with(tmp_path, learning_rate=1e-3)
    exp = tmp_path / "exp"
    exp.mkdir()
    utils.write_json(str(exp / "experiment.json"), {"kind": "lora", "identity": other, "args": {}})
    with pytest.raises(UserError, match=r"other settings \(--learning_rate 0.001 -> 0.0002\)"):
        folder.check_folder(str(exp), args, ident)
    utils.write_json(str(exp / "experiment.json"), {"kind": "lora", "identity": {**ident, "data": "xyz"}, "args": {}})
    with pytest.raises(UserError, match="the training rows"):
        folder.check_folder(str(exp), args, ident)
    utils.write_json(str(exp / "experiment.json"), {"kind": "lora", "identity": ident, "args": {}})
    args.resume = True
    with pytest.raises(folder.Finished):
        folder.check_folder(str(exp), args, ident)


def test_resume_with_other_settings_names_them(tmp_path):
    args, ident, other = record_with(tmp_path, per_device_train_batch_size=8)
    exp = tmp_path / "CB" / "started"
    exp.mkdir(parents=True)
    utils.write_json(str(exp / "identity.json"), {"identity": other})
    args.resume = True
    with pytest.raises(UserError, match=r"started with other settings \(--per_device_train_batch_size 8 -> 4\)"):
        folder.check_folder(str(exp), args, ident)
    # --resume with a new flag lands in a new folder: the interrupted run beside it is named, not silently left
    with pytest.raises(UserError, match=r"holds an interrupted run that differs \(--per_device_train_batch_size 8"):
        folder.check_folder(str(tmp_path / "CB" / "new"), args, ident)


def test_the_loss_is_logged_at_least_20_times(tmp_path):
    args = config.training_config(["--tasks", "CB"])
    assert [packing.logging_interval(args, n) for n in (10, 45, 1000)] == [1, 2, 50]
    args.logging_steps = 7
    assert packing.logging_interval(args, 1000) == 7


def test_train_loss_is_read_back_from_the_log_history():
    history = [{"loss": 2.0, "step": 2}, {"loss": 1.0, "step": 3}, {"loss": 0.5, "step": 5}, {"train_loss": 9, "step": 5}]
    assert callbacks.train_loss_of(history, 5) == pytest.approx((2 * 2 + 1 + 0.5 * 2) / 5)
    assert callbacks.train_loss_of(history, 6) is None  # a history that misses steps gives no mean


# ---- 4. a non-finite number is never scored ----------------------------------------------------------------

@pytest.fixture(scope="module")
def overflowing(model, tmp_path_factory):
    """The tiny Llama with one layer's up_proj scaled by 1e5 and its down_proj by 1e-5: the same function in
    fp32, past fp16's range (65504) inside the feed-forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    mlp = m.model.layers[0].mlp
    with torch.no_grad():
        mlp.up_proj.weight *= 1e5
        mlp.down_proj.weight *= 1e-5
    folder = str(tmp_path_factory.mktemp("overflow") / "overflowing")
    m.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("scoring", ["rank", "generate"])
def test_non_finite_scores_stop_the_task_and_write_no_metrics(overflowing, data, tmp_path, scoring):
    out = str(tmp_path / "out")
    base = ["--pretrained_ckpt", overflowing, "--tasks", "CB", "--data_root", data, "--output_root", out,
            "--scoring", scoring, "--max_new_tokens", "3"]
    p = run(EVAL, *base, "--dtype", "fp16", check=False)
    err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(err) == 1 and "Traceback" not in p.stderr
    assert ("nan" in err[0] or "inf" in err[0]) and "--dtype" in err[0] and "no metrics written for CB" in err[0]
    assert not os.path.exists(out)  # no metrics, no record, no folder
    run(EVAL, *base, "--dtype", "fp32")  # the same function in fp32 is finite and scored
    assert os.path.isfile(layout.metrics_path(os.path.join(out, "CB", "base-overflowing"), "CB",
                                             "metrics" + ("-rank" if scoring == "rank" else "-new3") + "-fp32"))


def lora_with_its_loss(model):
    """(the small model with a q_proj adapter in fp32, the training loss, the restore of its output layer)."""
    prec = precision.precision("fp32", False, "train", bf16_cpu=False)
    m = lora.add_lora(models.load_base(model, prec, precision.placement(0, False)), config.training_config(
        ["--tasks", "CB", "--target_modules", "q_proj"]), prec)
    loss = OutputLayerInTheLoss(m).__enter__()
    return m, loss, lambda: loss.__exit__(None, None, None)


def test_a_non_finite_training_loss_stops_the_run(model):
    m, loss, restore = lora_with_its_loss(model)
    ids = torch.randint(0, 100, (1, 8))
    out = m(input_ids=ids)
    out.logits[0, 2, 0] = float("nan")
    with pytest.raises(NonFinite, match="nan"):
        loss(out, ids)
    restore()


def test_a_batch_with_no_counted_token_has_no_loss_not_nan(model):
    m, loss, restore = lora_with_its_loss(model)
    ids = torch.randint(0, 100, (1, 8))
    labels = torch.full_like(ids, -100)
    for count in (None, 0):
        value = loss(m(input_ids=ids), labels, count)
        assert torch.isfinite(value) and value.item() == 0.0
        value.backward()  # no NaN reaches the adapter
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    restore()


def test_blocks_in_which_nothing_is_predicted_are_left_out_and_said(tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    per_task = {"CB": task_data.load(prompts.TASKS["CB"], SAMPLE, "train", max_samples=6)[0]}
    args = config.training_config(["--tasks", "CB", "--max_seq_length", "4", "--loss_on", "completion"])
    blocks = packing.training_blocks(per_task, tok, args)
    said = capsys.readouterr().out
    assert blocks and all(any(x != -100 for x in b["labels"][1:]) for b in blocks)
    assert "blocks hold no token the loss counts (loss on completion) and are left out" in said
    args = config.training_config(["--tasks", "CB", "--max_seq_length", "4"])  # the loss on every token: all teach
    assert len(packing.training_blocks(per_task, tok, args)) > len(blocks) and "left out" not in capsys.readouterr().out
    args = config.training_config(["--tasks", "CB", "--max_seq_length", "4", "--loss_on", "completion"])
    real_pack = packing.pack
    # the answers only ever at a block's first position (where no token predicts them): nothing is left
    monkeypatch.setattr(packing, "pack", lambda *a, **k: [{**b, "labels": [b["labels"][0]] + [-100] * 3}
                                                         for b in real_pack(*a, **k)])
    with pytest.raises(UserError, match="no block of --max_seq_length 4 holds a token to predict"):
        packing.training_blocks(per_task, tok, args)


def test_a_run_with_no_loss_logged_is_saved_and_says_so(model, data, tmp_path, monkeypatch, capsys):
    """A history that does not cover the run's steps has no mean loss: the run is saved, and its last line says
    that no loss was logged (formatting the missing mean once raised after the run was saved)."""
    monkeypatch.setattr(callbacks, "train_loss_of", lambda history, step: None)
    train.main(training(model, data, str(tmp_path), "--max_steps", "1"))
    assert "no loss logged (mean over 1 steps); experiment saved in" in capsys.readouterr().out
    record = json.load(open(os.path.join(only_dir(str(tmp_path)), "experiment.json")))
    assert record["train_loss"] is None and record["global_step"] == 1


def test_a_mean_training_loss_that_is_not_finite_never_finishes_a_run(model, data, tmp_path, monkeypatch, capsys):
    """The last guard: whatever made the logged loss NaN, the run is not recorded as finished."""
    from utils import run_main

    monkeypatch.setattr(callbacks, "train_loss_of", lambda history, step: float("nan"))
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train.main(training(model, data, str(tmp_path), "--max_steps", "1")))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "the mean training loss is nan" in err and "--dtype fp32" in err
    exp = only_dir(str(tmp_path))
    assert not os.path.exists(os.path.join(exp, "experiment.json")) and state.state(exp) == "partial"


# ---- 5. an over-long row is handled ------------------------------------------------------------------------

def test_a_row_that_cannot_fit_is_skipped_and_the_task_goes_on(model, tmp_path):
    root = tmp_path / "data"
    (root / "boolq").mkdir(parents=True)
    rows = [json.loads(line) for line in open(os.path.join(SAMPLE, "boolq", "validation.jsonl"))][:6]
    rows[2]["question"] = " ".join(["is the long question about the library"] * 18)  # about 125 tokens
    (root / "boolq" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "out")
    p = run(EVAL, "--pretrained_ckpt", model, "--tasks", "boolq", "--data_root", str(root), "--output_root", out,
            "--max_input_length", "64", "--max_new_tokens", "2")
    exp = os.path.join(out, "boolq", "base-small-llama")
    folder = "metrics-new2-len64"
    m = json.load(open(layout.metrics_path(exp, "boolq", folder)))
    assert m["skipped"] == 1 and m["n"] == 5 and "1 of 6 rows skipped" in p.stdout and "'question'" in p.stdout
    preds = [json.loads(line) for line in open(layout.predictions_path(exp, "boolq", folder))]
    assert [r["id"] for r in preds if r.get("skipped")] == [2] and "'question' is" in preds[2]["skipped"]
    assert len([r for r in preds if "prediction" in r]) == 5
    # every row too long: one line naming the row and the field, and no folder holding a record without results
    out2 = str(tmp_path / "out2")
    p = run(EVAL, "--pretrained_ckpt", model, "--tasks", "boolq", "--data_root", str(root), "--output_root", out2,
            "--max_input_length", "20", check=False)
    assert p.returncode == 2 and "every row's prompt is too long (row 0:" in p.stderr and "--max_input_length" in p.stderr
    assert not os.path.exists(out2)


def test_an_adapter_none_of_whose_prompts_fit_leaves_no_metrics_folder(model, data, tmp_path):
    out = str(tmp_path / "out")
    run(TRAIN, *training(model, data, out, "--max_steps", "1"))
    exp = only_dir(out)
    p = run(EVAL, "--experiment_dir", exp, "--max_input_length", "1", "--max_new_tokens", "2", check=False)
    assert p.returncode == 2 and "every row's prompt is too long" in p.stderr
    assert not [n for n in os.listdir(exp) if n.startswith("metrics")]  # not even the adapter's norms alone


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter "
                                                "failed writing file data/3: file write failed"),
                                   OSError(122, "Disk quota exceeded")], ids=["ENOSPC", "torch.save", "EDQUOT"])
def test_a_full_disk_during_a_checkpoint_is_one_line_naming_the_folder_and_the_space(model, data, tmp_path,
                                                                                      monkeypatch, error):
    from transformers import Trainer

    real = Trainer._save_checkpoint
    calls = []

    def save(self, *args, **kwargs):  # the first checkpoint is written, the second finds the disk full
        calls.append(1)
        if len(calls) > 1:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    out = str(tmp_path / "out")
    p = run(TRAIN, *training(model, data, out, "--max_steps", "3", "--save_steps", "1"), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    [line] = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    exp = only_dir(out)
    assert f"no space left on the device of {exp} (" in line and ("GiB free" in line or "MiB free" in line)
    assert "a checkpoint needs about" in line and "(the size of checkpoint-1)" in line and "--resume" in line
    assert "checkpoint-1 kept" in line


# ---- 6. 4-bit training gets its gradients on every CPU --------------------------------------------------------

def test_4bit_lora_gets_gradients_after_an_eval_mode_forward(model):
    import bitsandbytes as bnb

    prec = precision.precision("auto", True, "train")
    args = config.training_config(["--tasks", "CB", "--bnb", "--target_modules", "q_proj", "v_proj", "up_proj",
                             "--no-gradient_checkpointing"])
    m = lora.add_lora(models.load_base(model, prec, precision.placement(0, False)), args, prec)
    layers = [x for x in m.modules() if isinstance(x, bnb.nn.Linear4bit)]
    assert layers and all(x.support_avx512bf16_for_cpu is False for x in layers)
    ids = torch.randint(0, 100, (2, 16))
    m.eval()
    with torch.no_grad():
        m(input_ids=ids)  # where bitsandbytes repacks its CPU weights, unless told not to
    m.train()
    m(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_4bit_weights_are_quantised_from_the_checkpoints_own_fp16_values(model, tmp_path):
    """Llama-2 is stored in fp16: its 4-bit weights must be those quantised from the fp16 values, not from a
    bf16 copy (which drops three mantissa bits of every weight)."""
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fp16 = str(tmp_path / "fp16")
    AutoModelForCausalLM.from_pretrained(model, dtype=torch.float16).save_pretrained(fp16)
    AutoTokenizer.from_pretrained(model).save_pretrained(fp16)
    w16 = AutoModelForCausalLM.from_pretrained(fp16, dtype=torch.float16).model.layers[0].mlp.up_proj.weight.data
    prec = precision.precision("auto", True, "train")
    loaded = models.load_base(fp16, prec, precision.placement(0, False))
    layer = loaded.model.layers[0].mlp.up_proj
    ours = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()

    def quantised_from(w):
        q, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        return F.dequantize_4bit(q, state).float()

    assert torch.equal(ours, quantised_from(w16))
    assert not torch.equal(ours, quantised_from(w16.to(torch.bfloat16)))  # the check can tell the two apart
    assert loaded.model.embed_tokens.weight.dtype == torch.float16  # the layers not in 4-bit kept exact


# ---- 7 and 8: processes, interrupts, folders in use, folders given wrongly --------------------------------------

def start(argv):
    return subprocess.Popen([sys.executable, TRAIN, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def wait_for(pattern_dir, name, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = [d for d in checkpoints.checkpoints(pattern_dir) if os.path.isfile(os.path.join(d[1], name))] \
            if os.path.isdir(pattern_dir) else []
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint appeared: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow  # a real process, signalled
@pytest.mark.parametrize("sig,code,said", [(signal.SIGINT, 130, "interrupted at step"),
                                           (signal.SIGUSR1, utils.RESUMABLE, "stopped on SIGUSR1 at step")])
def test_an_interrupt_says_what_was_kept_and_how_to_continue(model, data, tmp_path, sig, code, said):
    out = str(tmp_path / "out")
    argv = training(model, data, out, "--max_steps", "400", "--save_steps", "100000")  # no checkpoint but the stop's
    proc = start(argv)
    exp = None
    deadline = time.time() + 300
    while exp is None and time.time() < deadline and proc.poll() is None:
        dirs = [d for d in (os.listdir(os.path.join(out, "CB")) if os.path.isdir(os.path.join(out, "CB")) else [])]
        exp = os.path.join(out, "CB", dirs[0]) if dirs else None
        time.sleep(0.1)
    logs = os.path.join(exp, layout.LOGS)  # written as the training starts (then its signal handlers are in)
    while time.time() < deadline and proc.poll() is None and not (os.path.isdir(logs) and os.listdir(logs)):
        time.sleep(0.1)
    time.sleep(3)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if said in line]
    assert len(lines) == 1 and "--resume" in lines[0] and "Traceback" not in stderr
    assert state.state(exp) == "partial" and checkpoints.newest_whole_checkpoint(exp, report=lambda x: None)
    step = int(lines[0].split("at step ")[1].split(":")[0])  # saved at the step it stopped at, Ctrl-C included
    assert checkpoints.checkpoints(exp)[-1][0] == step and f"checkpoint-{step} kept" in lines[0]


# the training script with a signal to itself while the base model loads (before the first step)
WHILE_LOADING = """
import os, signal, sys
root, name = sys.argv[1:3]
sys.path.insert(0, root)
from keys_values import models
load_base = models.load_base


def signalled(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, name))
    return load_base(*args, **kwargs)


models.load_base = signalled
import llama2_classification_multi_tasks as train
from utils import run_main

sys.argv = [train.__file__, *sys.argv[3:]]
run_main(train.main)
"""


@pytest.mark.slow  # a real process, signalled
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_stop_while_the_model_loads_is_not_a_silent_death(model, data, tmp_path, name):
    """A scheduler's stop (SIGTERM, SIGUSR1) while the base model loads waits for the end of the first step: its
    checkpoint is kept and the run exits 75, resumable; Ctrl-C then stops at once (nothing to save yet), in one
    line, exit 130. No half-written file is left either way."""
    out = str(tmp_path / "out")
    argv = training(model, data, out, "--max_steps", "3")
    p = subprocess.run([sys.executable, "-c", WHILE_LOADING, ROOT, name, *argv], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    if name == "SIGINT":
        assert p.returncode == utils.INTERRUPTED and "interrupted: no checkpoint yet" in p.stderr, p.stderr[-2000:]
        assert "trainable parameters" not in p.stdout  # at once: the model's loading did not go on
        exp = p.stderr.split("no checkpoint yet (the run will start again) in ")[1].split("; continue with")[0]
        assert exp.startswith(out) and (not os.path.exists(exp) or os.listdir(exp) == [])  # nothing was written
    else:
        exp = only_dir(out)
        assert p.returncode == utils.RESUMABLE, p.stderr[-2000:]
        assert f"stopped on {name} at step 1: checkpoint-1 kept in {exp}; continue with: {sys.executable} " in p.stderr
        assert [step for step, _ in checkpoints.checkpoints(exp)] == [1]
        assert run(TRAIN, *argv, "--resume").returncode == 0
        assert json.load(open(os.path.join(exp, "experiment.json")))["global_step"] == 3
        assert not [f for f in os.listdir(exp) if ".tmp" in f]


def test_a_folder_in_use_is_refused_in_one_line(model, data, tmp_path):
    out = str(tmp_path / "out")
    argv = training(model, data, out, "--max_steps", "1")
    plan = json.loads(run(TRAIN, *argv, "--dry_run", "--plan_json").stdout.strip().splitlines()[-1])
    with lock.lock(plan["experiment_dir"], "training"):
        p = run(TRAIN, *argv, check=False)
        assert p.returncode == 2 and "is in use by training (pid" in p.stderr and "Traceback" not in p.stderr
        # the first run has begun writing (a partial run): still in use, not "a partial run: pass --resume"
        utils.write_json(os.path.join(plan["experiment_dir"], layout.IDENTITY), {})
        for extra in ([], ["--resume"]):
            p = run(TRAIN, *argv, *extra, check=False)
            assert p.returncode == 2 and "is in use by training (pid" in p.stderr and "--resume" not in p.stderr
        os.unlink(os.path.join(plan["experiment_dir"], layout.IDENTITY))
        with pytest.raises(UserError, match="still being trained"):
            records.read_experiment(plan["experiment_dir"])
    run(TRAIN, *argv)  # the lock went with its holder


class NoFlock:
    """fcntl as lock.py sees it on a file system without flock (NFS without a lock daemon, Lustre): flock fails."""

    def __init__(self, code):
        self.code = code

    def __getattr__(self, name):
        import fcntl

        return getattr(fcntl, name)

    def flock(self, f, op):
        raise OSError(self.code, os.strerror(self.code))


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("code", ["ENOLCK", "EOPNOTSUPP", "ENOSYS"])
def test_without_flock_a_lock_file_still_refuses_a_second_writer_and_leaves_nothing(tmp_path, monkeypatch, code):
    import errno

    monkeypatch.setattr(lock, "fcntl", NoFlock(getattr(errno, code)))
    said = []
    folder = str(tmp_path / "out" / "CB" / "run")
    with lock.lock(folder, "training", say=said.append):
        assert said == [f"note: this file system gives no file locks ({errno.errorcode[getattr(errno, code)]}): "
                        f"{folder}/.lock.held holds the folder instead"]
        assert f"training (pid {os.getpid()} on host " in lock.holder(folder)
        with pytest.raises(UserError, match=f"is in use by training \\(pid {os.getpid()} on host .*remove "
                                            f"{folder}/.lock.held"):
            with lock.lock(folder, "evaluation", say=said.append):
                pass
        assert state.state(folder) == "new"  # the lock files alone leave a folder new
        open(os.path.join(folder, "experiment.json"), "w").close()
    assert sorted(os.listdir(folder)) == [".lock", "experiment.json"] and lock.holder(folder) is None
    with lock.lock(str(tmp_path / "other"), "training", say=said.append):
        pass
    assert not os.path.exists(tmp_path / "other")  # nothing written: nothing left


def test_a_lock_file_whose_holder_ended_is_taken_over_and_one_of_another_host_is_refused(tmp_path, monkeypatch):
    import errno
    import socket

    monkeypatch.setattr(lock, "fcntl", NoFlock(errno.ENOLCK))
    folder = tmp_path / "run"
    folder.mkdir()
    held = folder / ".lock.held"
    host = socket.gethostname()
    for left in ({"what": "training", "host": host, "pid": dead_pid(), "since": "earlier"},  # killed -9
                 {"what": "training", "host": host, "pid": os.getpid(), "start": -1, "since": "earlier"}):  # pid reused
        held.write_text(json.dumps(left))
        said = []
        with lock.lock(str(folder), "evaluation", say=said.append):
            assert json.loads(held.read_text())["pid"] == os.getpid()
        assert len(said) == 2 and "which has ended: taken over" in said[1] and not held.exists()
    held.write_text(json.dumps({"what": "training", "host": "node-17", "pid": 4242, "since": "earlier"}))
    with pytest.raises(UserError, match="in use by training \\(pid 4242 on host node-17.*if that process has ended"):
        with lock.lock(str(folder), "evaluation", say=lambda line: None):
            pass
    assert held.exists()  # another's lock is never removed
    held.write_text("")  # a holder that died while writing it: in use at first, stale after a minute
    with pytest.raises(UserError, match="in use by another process"):
        with lock.lock(str(folder), "evaluation", say=lambda line: None):
            pass
    os.utime(held, (time.time() - 120, time.time() - 120))
    with lock.lock(str(folder), "evaluation", say=lambda line: None):
        pass
    assert not held.exists()


def test_training_on_a_file_system_without_flock_finishes_and_leaves_no_lock_file(model, data, tmp_path,
                                                                                   monkeypatch):
    import errno

    monkeypatch.setattr(lock, "fcntl", NoFlock(errno.ENOLCK))
    out = str(tmp_path / "out")
    p = run(TRAIN, *training(model, data, out, "--max_steps", "1"))
    assert p.stderr.count("gives no file locks (ENOLCK)") == 1 and "Traceback" not in p.stderr
    exp = only_dir(out)
    assert state.state(exp) == "finished" and not os.path.exists(os.path.join(exp, ".lock.held"))


def test_an_adapter_is_evaluated_on_its_own_base_unless_another_is_allowed_into_its_own_folder(model, data,
                                                                                                 tmp_path):
    out = str(tmp_path / "out")
    run(TRAIN, *training(model, data, out, "--max_steps", "1"))
    exp = only_dir(out)
    ev = ["--experiment_dir", exp, "--max_test_samples", "2", "--max_new_tokens", "2"]
    copy = str(tmp_path / "renamed")  # the same base under another name: the same base
    shutil.copytree(model, copy)
    run(EVAL, *ev, "--pretrained_ckpt", copy)
    assert os.listdir(os.path.join(exp, "metrics-n2-new2"))
    # another base saved under the same name (other weights, same shapes): refused in one line naming both
    other = small_llama(tmp_path / "other", layers=2, seed=1)
    assert os.path.basename(other) == os.path.basename(model)
    p = run(EVAL, *ev, "--pretrained_ckpt", other, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert f"trained on {model}, not on --pretrained_ckpt {other}" in p.stderr and "--allow_other_base" in p.stderr
    # allowed: into a metrics folder of its own, the base in the evaluation's identity; the default one untouched
    before = {n: open(os.path.join(exp, "metrics-n2-new2", n), "rb").read()
              for n in os.listdir(os.path.join(exp, "metrics-n2-new2"))}
    run(EVAL, *ev, "--pretrained_ckpt", other, "--allow_other_base")
    label = models.base_label(other)
    folder = os.path.join(exp, f"metrics-n2-new2-base-{label}")
    m = json.load(open(os.path.join(folder, "CB_metrics_update.json")))
    assert m["identity"]["base"] == label != models.base_label(model)
    assert before == {n: open(os.path.join(exp, "metrics-n2-new2", n), "rb").read() for n in before}
    # a base of other shapes, allowed: one line, not peft's traceback
    wider = small_llama(tmp_path / "wider", layers=2, hidden_size=128)
    p = run(EVAL, *ev, "--pretrained_ckpt", wider, "--allow_other_base", check=False)
    assert p.returncode == 2 and "does not fit the base" in p.stderr and "Traceback" not in p.stderr


def test_a_run_trained_with_relative_paths_is_evaluated_from_elsewhere_and_after_a_move(model, data, tmp_path):
    """experiment.json records the base and the data as given and as absolute paths (and relative to the
    experiment): an evaluation from another directory finds them, and so does one after the whole tree (output
    root, model and data side by side) moved."""
    import contextlib

    import llama2_classification_multi_tasks_inference as inference

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(model, work / "model")
    shutil.copytree(data, work / "D")
    with contextlib.chdir(work):
        train.main(["--pretrained_ckpt", "model", "--data_root", "D", "--tasks", "CB", "--output_root", "out",
                    *SHARED, "--max_steps", "1"])
    exp = only_dir(str(work / "out"))
    record = json.load(open(os.path.join(exp, "experiment.json")))
    assert record["args"]["pretrained_ckpt"] == "model" and record["paths"]["pretrained_ckpt"]["absolute"] == \
        str(work / "model") and record["paths"]["data_root"]["from_experiment"] == os.path.join("..", "..", "..", "D")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ev = ["--max_test_samples", "2", "--max_new_tokens", "2"]
    with contextlib.chdir(elsewhere):
        inference.main(["--experiment_dir", exp, *ev])
    assert os.path.isfile(os.path.join(exp, "metrics-n2-new2", "CB_metrics_update.json"))
    moved = tmp_path / "moved"
    shutil.move(str(work), str(moved))
    exp = only_dir(str(moved / "out"))
    with contextlib.chdir(elsewhere):
        inference.main(["--experiment_dir", exp, *ev, "--overwrite"])
    m = json.load(open(os.path.join(exp, "metrics-n2-new2", "CB_metrics_update.json")))
    assert m["data"]["path"].startswith(str(moved / "D"))


def test_a_base_is_known_by_its_content_not_its_folder_name(tmp_path):
    a = small_llama(tmp_path / "a", layers=1, name="model")
    b = small_llama(tmp_path / "b", layers=1, name="model", seed=1)  # another base, the same name
    c = str(tmp_path / "c" / "checkpoint-final")
    shutil.copytree(a, c)  # the same base, another name
    assert models.same_base(a, c) and not models.same_base(a, b)
    assert models.content_fingerprint(a) == models.content_fingerprint(c) != models.content_fingerprint(b)
    assert models.same_base("NousResearch/Llama-2-7b-hf", "Llama-2-7b-hf")  # a hub id and a copy named for it
    assert not models.same_base("NousResearch/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf")


def test_a_wrong_experiment_dir_is_told_apart_from_an_unfinished_run(tmp_path):
    exp = tmp_path / "CB" / "classification-run"
    (exp / "assets").mkdir(parents=True)
    (exp / "assets" / "adapter_config.json").write_text('{"target_modules": ["q_proj"]}')
    (exp / "metrics").mkdir()
    (exp / "checkpoint-2").mkdir()
    (exp / "experiment.json").write_text("{}")
    for path, message in ((exp / "assets", "is the adapter folder of an experiment: give its experiment folder"),
                          (exp / "metrics", "is inside an experiment"), (exp / "checkpoint-2", "is inside an experiment"),
                          (tmp_path / "CB", "is a tasks folder holding experiments, not an experiment")):
        with pytest.raises(UserError, match=message):
            records.read_experiment(str(path))


def test_every_folder_that_is_not_an_experiment_is_named_for_what_it_is(tmp_path):
    """An output root, a base model's evaluation, a run's logs, a data or model folder, a file: each is told
    apart from a run whose training did not finish (which alone is advised --resume)."""
    exp = tmp_path / "out" / "CB" / "classification-run"
    (exp / "assets").mkdir(parents=True)
    (exp / "assets" / "adapter_config.json").write_text('{"target_modules": ["q_proj"]}')
    (exp / "experiment.json").write_text(json.dumps({"args": {"tasks": ["CB"]}}))
    (exp / "logs").mkdir()
    base = tmp_path / "out" / "CB" / "base-SmolLM2"
    (base / "metrics").mkdir(parents=True)
    (base / "experiment.json").write_text(json.dumps({"kind": "base", "args": {"tasks": ["CB"]}}))
    data = tmp_path / "data" / "CB"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("{}\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("x")
    unfinished = tmp_path / "out" / "CB" / "classification-unfinished"
    unfinished.mkdir()
    (unfinished / "identity.json").write_text("{}")
    (unfinished / "logs").mkdir()
    for path, message in ((tmp_path / "out", "is an output root holding tasks folders (CB), not an experiment"),
                          (base, "holds the base model's evaluation, not a trained adapter"),
                          (exp / "logs", "is inside an experiment: give its experiment folder"),
                          (tmp_path / "data", "is not an experiment folder: no assets/, no experiment.json, no checkpoint"),
                          (data, "is not an experiment folder"),
                          (model, "is a model folder, not an experiment: give it as --pretrained_ckpt"),
                          (tmp_path / "notes.txt", "is a file, not an experiment folder"),
                          (tmp_path / "nowhere", "does not exist"),
                          (unfinished, "its training did not finish"),
                          (unfinished / "logs", "is inside an experiment")):
        with pytest.raises(UserError) as e:
            records.read_experiment(str(path))
        assert message in str(e.value) and ("--resume" in str(e.value)) == (path == unfinished), (path, str(e.value))
    with pytest.raises(UserError) as e:
        records.read_experiment(str(tmp_path / "out"))
    assert str(e.value).endswith(f"e.g. {exp}")  # a trained adapter's folder, not the base model's


def test_accelerate_tests_take_a_free_port():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # it really is free


# ---- 9. files others can read ---------------------------------------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_results_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        utils.write_json(str(tmp_path / "a.json"), {"x": 1})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == mode


def test_a_run_and_its_evaluation_leave_every_file_in_the_umasks_mode(model, data, tmp_path):
    """The adapter (safetensors writes 0600 through a temporary file), the checkpoints, the records, the metrics
    and the report: all readable by colleagues, with a umask of 002 (group-writable, 0664)."""
    old = os.umask(0o002)
    try:
        run(TRAIN, *training(model, data, str(tmp_path), "--max_steps", "2", "--save_steps", "1"))
        exp = only_dir(str(tmp_path))
        run(EVAL, "--experiment_dir", exp, "--max_test_samples", "4", "--scoring", "rank")
        run(os.path.join(ROOT, "get_eval_tasks.py"), "--root", str(tmp_path), "--no_plot")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*") if p.is_file()}
    assert any(name.endswith("assets/adapter_model.safetensors") for name in modes)
    assert any("checkpoint-1/adapter_model.safetensors" in name for name in modes) and len(modes) > 20
    assert {k: v for k, v in modes.items() if v != oct(0o664)} == {}


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("old")
    os.chmod(path, 0o640)
    utils.atomic_write(str(path), "new")
    assert path.read_text() == "new" and os.stat(path).st_mode & 0o777 == 0o640


# ---- 10. missing evaluation data found before training ---------------------------------------------------------

def test_training_warns_when_the_evaluation_split_is_missing(model, tmp_path):
    root = tmp_path / "data"
    (root / "CB").mkdir(parents=True)
    shutil.copy(os.path.join(SAMPLE, "CB", "train.jsonl"), root / "CB" / "train.jsonl")
    p = run(TRAIN, *training(model, str(root), str(tmp_path / "out"), "--max_steps", "1"), "--dry_run")
    warnings = [line for line in p.stdout.splitlines() if line.startswith("warning: CB")]
    assert len(warnings) == 1 and "validation" in warnings[0] and str(root / "CB") in warnings[0]
    p = run(TRAIN, *training(model, SAMPLE, str(tmp_path / "out"), "--max_steps", "1"), "--dry_run")
    assert "warning:" not in p.stdout


def test_a_run_whose_loss_is_not_finite_stops_in_one_line(model, data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    broken = str(tmp_path / "broken")
    m.save_pretrained(broken)
    AutoTokenizer.from_pretrained(model).save_pretrained(broken)
    p = run(TRAIN, *training(broken, data, str(tmp_path / "out"), "--max_steps", "3"), check=False)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "the training loss is nan before the first checkpoint" in errors[0] and "--dtype fp32" in errors[0]


def _agree(rank, port, asked, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        control = callbacks.RunControl()
        control.stop_requested = asked[rank]
        args = type("Args", (), {"device": torch.device("cpu")})()
        results[rank] = (control.agreed(args), control.stop_requested)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("asked", [("SIGUSR1", None), (None, "SIGINT"), (None, None)])
def test_ranks_agree_on_a_stop_that_reached_one_of_them(asked):
    """The stop flag is all-reduced at each step's end: when the signal reached one rank only (or one step before
    the other), both stop at that step, under the signal's name, and with no signal neither stops."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_agree, args=(free_port(), asked, results), nprocs=2, join=True)
    name = next((a for a in asked if a), None)
    assert dict(results) == {0: (name is not None, name), 1: (name is not None, name)}
