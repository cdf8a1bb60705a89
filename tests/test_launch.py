"""launch.py: where the study's runs go. The commands are tiny python one-liners, not training; Slurm is played by
the stand-ins in tests/slurm_standin/ (put first on PATH), which run the array tasks on this machine."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import submitit

from keys_values import environment, launch
from keys_values.launch import Outcome, Run, SlurmOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORES = len(os.sched_getaffinity(0))

# a command appending "<label> OMP_NUM_THREADS=<n>" to a file: which commands ran, in which order, with what
MARK = "import os, sys; open(sys.argv[1], 'a').write(f\"{sys.argv[2]} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}\\n\")"

# two of these meet only when they run at once: each marks its arrival and waits (up to 5 s) for the other's
MEET = """
import json, os, sys, time
me, other, out = sys.argv[1:4]
start = time.time()
open(me, "w").close()
for _ in range(100):
    if os.path.exists(other):
        break
    time.sleep(0.05)
with open(out, "w") as f:
    json.dump({"start": start, "end": time.time(), "omp": os.environ["OMP_NUM_THREADS"],
               "cores": sorted(os.sched_getaffinity(0)), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
"""

# a training stand-in: on its first start, stopped by SIGUSR1 it writes a checkpoint and exits 75 (resumable);
# on its second start it finishes
RESUMABLE = """
import os, signal, sys, time
from keys_values import environment
starts, ready, checkpoint = sys.argv[1:4]
with open(starts, "a") as f:
    f.write("start\\n")
if open(starts).read().count("start") == 1:
    def stop(*_):
        with open(checkpoint, "a") as f:
            f.write("checkpoint\\n")
        sys.exit(75)
    signal.signal(signal.SIGUSR1, stop)
    open(ready, "w").close()  # the stand-in scheduler's cue for the time-limit signal
    time.sleep(20)
    sys.exit(1)
print("resumed from", open(checkpoint).read().strip())
"""


def py(code, *args):
    return (sys.executable, "-c", textwrap.dedent(code), *map(str, args))


def lines(path):
    with open(path) as f:
        return f.read().splitlines()


def test_local_runs_go_at_once_each_with_its_share_of_the_cores_or_its_gpus(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    runs = [Run("a", [py(MEET, f"{a}.here", f"{b}.here", f"{a}.json")], tmp_path / "a.log"),
            Run("b", [py(MEET, f"{b}.here", f"{a}.here", f"{b}.json")], tmp_path / "b.log")]
    outcomes = launch.run_all(runs, "local", parallel=2, gpus=0, progress=lambda line: None)
    assert [o.ok for o in outcomes] == [True, True]
    ra, rb = (json.load(open(f"{x}.json")) for x in (a, b))
    assert ra["start"] < rb["end"] and rb["start"] < ra["end"]  # their lives overlap
    assert ra["omp"] == rb["omp"] == str(max(1, CORES // 2))
    assert len(ra["cores"]) == len(rb["cores"]) == max(1, CORES // 2)
    if CORES >= 2:
        assert not set(ra["cores"]) & set(rb["cores"])
    assert ra["gpus"] is None

    runs = [Run(x, [py(MEET, f"{tmp_path}/g{x}.here", f"{tmp_path}/g{y}.here", f"{tmp_path}/g{x}.json")],
                tmp_path / f"g{x}.log") for x, y in (("a", "b"), ("b", "a"))]
    outcomes = launch.run_all(runs, "local", gpus=4, gpus_per_run=2, progress=lambda line: None)
    assert all(o.ok for o in outcomes)
    seen = [json.load(open(f"{tmp_path}/g{x}.json")) for x in "ab"]
    assert sorted(s["gpus"] for s in seen) == ["0,1", "2,3"]
    assert seen[0]["start"] < seen[1]["end"] and seen[1]["start"] < seen[0]["end"]


def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,-1,7")
    assert environment.visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert environment.visible_gpus() == []


@pytest.mark.parametrize("launcher", ["serial", "local"])
def test_a_failed_run_stops_its_own_commands_only_and_75_is_resumable(tmp_path, capsys, launcher):
    marks = tmp_path / "marks"
    runs = [Run("fails", [py(MARK, marks, "fails-1"), py("raise SystemExit(3)"), py(MARK, marks, "never")],
                tmp_path / "fails" / "run.log"),
            Run("stopped", [py("raise SystemExit(75)"), py(MARK, marks, "never")], tmp_path / "stopped" / "run.log"),
            Run("fine", [py("print('hello from', 'fine')"), py(MARK, marks, "fine-2")], tmp_path / "fine" / "run.log")]
    outcomes = launch.run_all(runs, launcher, parallel=2, gpus=0)
    assert [(o.ok, o.returncode) for o in outcomes] == [(False, 3), (False, 75), (True, 0)]
    assert outcomes[0].note == "command 2/3 exited with code 3"
    assert outcomes[1].note == "interrupted (resumable)" and outcomes[1].resumable
    assert [m.split()[0] for m in lines(marks) if "never" in m] == []
    assert sorted(m.split()[0] for m in lines(marks)) == ["fails-1", "fine-2"]
    assert "hello from fine" in open(outcomes[2].log).read()
    out = capsys.readouterr().out
    assert ("hello from fine" in out) == (launcher == "serial")  # serial shows the commands' output
    assert "[3/3 finished, 2 failed, all done]" in out
    for o in outcomes:
        status = json.load(open(launch.status_path(o.run)))
        assert status["started"] == o.started <= o.ended == status["ended"] and status["returncode"] == o.returncode


def submitted(slurm_dir):
    """(job id, #SBATCH flags, events) of the one job submitted."""
    [job] = [d for d in os.listdir(slurm_dir) if d != "next_id"]
    with open(slurm_dir / job / "sbatch.json") as f:
        flags = json.load(f)["flags"]
    return job, flags, [json.loads(line) for line in lines(slurm_dir / job / "events.jsonl")]


def test_slurm_one_array_with_the_settings_asked_and_a_failure_that_stops_nothing_else(tmp_path, slurm):
    marks = tmp_path / "marks"
    runs = [Run(name, [py(MARK, marks, f"{name}-train"), py(code), py(MARK, marks, f"{name}-eval")],
                tmp_path / name / "run.log")
            for name, code in (("a", "pass"), ("b", "raise SystemExit(3)"), ("c", "print('c is fine')"))]
    options = SlurmOptions(partition="debug", time=30, cpus_per_task=4, mem=8, account="lab", array_parallelism=2,
                           additional={"qos": "high"}, signal_delay_s=35)
    progress = []
    outcomes = launch.run_all(runs, "slurm", gpus_per_run=2, slurm=options, folder=tmp_path / "study",
                              progress=progress.append)

    job, flags, events = submitted(slurm)
    assert {k: flags[k] for k in ("array", "gpus-per-node", "time", "partition", "account", "cpus-per-task", "mem",
                                  "qos", "signal")} == {
        "array": "0-2%2", "gpus-per-node": "2", "time": "30", "partition": "debug", "account": "lab",
        "cpus-per-task": "4", "mem": "8G", "qos": "high", "signal": "USR2@35"}
    assert flags["output"] == str(tmp_path / "study" / "submitit" / "%A_%a_0_log.out")
    assert sorted(e["task"] for e in events if e["event"] == "start") == [0, 1, 2]

    assert [(o.run.name, o.ok, o.returncode) for o in outcomes] == [("a", True, 0), ("b", False, 3), ("c", True, 0)]
    assert sorted(lines(marks)) == ["a-eval OMP_NUM_THREADS=4", "a-train OMP_NUM_THREADS=4",
                                    "b-train OMP_NUM_THREADS=4", "c-eval OMP_NUM_THREADS=4",
                                    "c-train OMP_NUM_THREADS=4"]
    assert "c is fine" in open(tmp_path / "c" / "run.log").read()
    message = launch.failures_message(outcomes)
    assert message == f"1 of 3 runs did not finish: b (command 2/3 exited with code 3; log {tmp_path}/b/run.log)"
    assert progress[0].startswith(f"Slurm job {job}: 3 run(s) submitted")
    assert progress[-1].startswith("[3/3 finished, 1 failed, all done]")
    for o in outcomes:  # times from the task's side
        status = json.load(open(launch.status_path(o.run)))
        assert status["started"] == o.started <= o.ended == status["ended"] and status["job"] == f"{job}_{'abc'.index(o.run.name)}"


def test_slurm_time_limit_stops_the_command_requeues_the_task_and_the_run_resumes(tmp_path, slurm, monkeypatch):
    starts, ready, checkpoint, marks = (tmp_path / n for n in ("starts", "ready", "checkpoint", "marks"))
    monkeypatch.setenv("SLURM_STANDIN_TIME_LIMIT", f"0:{ready}")  # SIGUSR2 to task 0's step once it is ready
    runs = [Run("long", [py(RESUMABLE, starts, ready, checkpoint), py(MARK, marks, "long-eval")],
                tmp_path / "long" / "run.log"),
            Run("short", [py(MARK, marks, "short")], tmp_path / "short" / "run.log")]
    outcomes = launch.run_all(runs, "slurm", gpus_per_run=0, slurm=SlurmOptions(time=5, signal_delay_s=35),
                              folder=tmp_path / "study", progress=lambda line: None)

    job, flags, events = submitted(slurm)
    assert [(o.ok, o.returncode) for o in outcomes] == [(True, 0), (True, 0)]
    assert lines(starts) == ["start", "start"] and lines(checkpoint) == ["checkpoint"]
    assert sorted(m.split()[0] for m in lines(marks)) == ["long-eval", "short"]
    log = open(outcomes[0].log).read()
    assert "the command was asked to stop (SIGUSR1); the task is requeued" in log and "resumed from checkpoint" in log
    assert [(e["event"], e["task"]) for e in events if e["event"] != "end" and e["task"] == 0] == [
        ("start", 0), ("signal", 0), ("requeue request", 0), ("requeue", 0), ("start", 0)]
    assert [e["signal"] for e in events if e["event"] == "signal"] == ["SIGUSR2"]
    status = json.load(open(launch.status_path(runs[0])))
    second_start = [e["time"] for e in events if e["event"] == "start" and e["task"] == 0][1]
    assert status["starts"] == 2 and outcomes[0].started == status["started"] < second_start < outcomes[0].ended
    assert "gpus-per-node" not in flags


def test_slurm_task_killed_without_a_result_fails_with_its_state_and_submitits_log(tmp_path, slurm, monkeypatch):
    monkeypatch.setattr(submitit.SlurmJob, "_results_timeout_s", 0)  # no result will come: do not wait for one
    kill_my_task = "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"  # as the OOM killer would
    runs = [Run("fine", [py("pass")], tmp_path / "fine.log"), Run("killed", [py(kill_my_task)], tmp_path / "killed.log")]
    outcomes = launch.run_all(runs, "slurm", slurm=SlurmOptions(), folder=tmp_path / "study", progress=lambda line: None)
    job, _, _ = submitted(slurm)
    assert [(o.ok, o.returncode) for o in outcomes] == [(True, 0), (False, None)]
    assert outcomes[1].note == (f"Slurm job {job}_1 ended FAILED without a result "
                                f"(see {tmp_path}/study/submitit/{job}_1_0_log.err)")
    assert outcomes[1].started is not None and outcomes[1].ended is None  # it started; its end was not its own


def test_slurm_one_run_is_a_plain_job(tmp_path, slurm):
    marks = tmp_path / "marks"
    [outcome] = launch.run_all([Run("only", [py(MARK, marks, "only")], tmp_path / "only.log")], "slurm",
                               slurm=SlurmOptions(), folder=tmp_path / "study", progress=lambda line: None)
    job, flags, _ = submitted(slurm)
    assert outcome.ok and "array" not in flags and flags["gpus-per-node"] == "1" and flags["time"] == "240"
    assert lines(marks) == ["only OMP_NUM_THREADS=None"]


def test_failures_message_names_each_failed_run_and_its_log():
    def outcome(name, ok, rc, note=""):
        return Outcome(Run(name, [], f"/study/{name}/run.log"), ok, rc, f"/study/{name}/run.log", 1.0, 2.0, note)

    outcomes = [outcome("q,v", True, 0), outcome("q,v+up", False, 1, "command 1/2 exited with code 1"),
                outcome("q,v+down", False, 75, "interrupted (resumable)")]
    assert launch.failures_message(outcomes) == (
        "2 of 3 runs did not finish: q,v+up (command 1/2 exited with code 1; log /study/q,v+up/run.log); "
        "q,v+down (interrupted (resumable); log /study/q,v+down/run.log)")
    assert launch.failures_message(outcomes[:1]) == ""


@pytest.mark.slow
def test_a_study_as_a_slurm_job_array(tmp_path, slurm):
    """study.py --launcher slurm on the stand-ins: one array of three tasks (the base model's evaluation, then
    two settings each trained and evaluated), the sbatch settings asked for, the report written at the end."""
    import study
    from conftest import SAMPLE, small_llama

    model = small_llama(tmp_path / "model", layers=2)
    out = str(tmp_path / "out")
    study.main(["--pretrained_ckpt", model, "--data_root", SAMPLE, "--tasks", "CB", "--settings", "q_proj v_proj up_proj",
                "q_proj v_proj down_proj", "--max_steps", "2", "--per_device_train_batch_size", "2",
                "--gradient_accumulation_steps", "1", "--max_seq_length", "64", "--max_test_samples", "8",
                "--scoring", "rank", "--output_root", out, "--launcher", "slurm", "--gpus_per_run", "0",
                "--time", "30", "--partition", "cpu", "--sbatch", "qos=low"])
    _, flags, events = submitted(slurm)
    assert flags["array"].startswith("0-2") and flags["time"] == "30" and flags["partition"] == "cpu"
    assert flags["qos"] == "low" and "gpus-per-node" not in flags
    md = open(os.path.join(out, "CB", "summary.md")).read()
    assert "| q,v+up (keys) vs q,v+down (values) |" in md and "base (no adapter)" in md
    logs = sorted(os.listdir(os.path.join(out, "CB", "study-logs")))
    assert "base.log" in logs and sum(name.endswith(".log") for name in logs) == 3


# a training stand-in under a launcher, in each shape a study meets: "plain" (the study's command is the training),
# "launcher" (the command is a launcher like `accelerate launch`: it starts 2 workers in sessions of their own, as
# torch's elastic agent does, and has no handler for the stop: it dies of it). Each worker, on its first start,
# saves a "checkpoint" when SIGUSR1 or SIGINT reaches it (taking a moment, as a save does) and exits 75 (130 after
# Ctrl-C); on its second start it finishes.
WORKER = """
import os, signal, sys, time
starts, ready, checkpoint, rank = sys.argv[1:5]
with open(starts, "a") as f:
    f.write(f"start {rank}\\n")
if open(starts).read().count(f"start {rank}") == 1:
    def stop(signum, frame):
        time.sleep(0.5)  # saving
        with open(checkpoint, "a") as f:
            f.write(f"checkpoint {rank} {signal.Signals(signum).name}\\n")
        sys.exit(130 if signum == signal.SIGINT else 75)
    signal.signal(signal.SIGUSR1, stop)
    signal.signal(signal.SIGINT, stop)
    open(f"{ready}.{rank}", "w").close()
    time.sleep(60)
    sys.exit(1)
# one write per line: the two workers share the log, and print's separate writes of its arguments interleave
sys.stdout.write(f"resumed from {open(checkpoint).read().count(f'checkpoint {rank}')} checkpoint(s)\\n")
"""

LAUNCHER = """
import os, subprocess, sys, time
worker, starts, ready, checkpoint = sys.argv[1:5]
workers = [subprocess.Popen([sys.executable, "-c", worker, starts, ready, checkpoint, str(rank)],
                            start_new_session=True) for rank in range(2)]
while not all(os.path.exists(f"{ready}.{rank}") for rank in range(2)) and all(w.poll() is None for w in workers):
    time.sleep(0.05)
open(ready, "w").close()
sys.exit(max(w.wait() for w in workers))
"""


def training_under(shape, tmp_path):
    """(command, the files it writes) of the training stand-in in `shape`."""
    starts, ready, checkpoint = (tmp_path / n for n in ("starts", "ready", "checkpoint"))
    if shape == "plain":
        return py(WORKER, starts, ready, checkpoint, 0), (starts, f"{ready}.0", checkpoint, 1)
    # the launcher's own ready file: written once every worker has its handlers (a worker's own could come first)
    return py(LAUNCHER, textwrap.dedent(WORKER), starts, ready, checkpoint), (starts, ready, checkpoint, 2)


def wait_for_file(path, timeout=60):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def no_process_left(pattern):
    """Whether no process of this user still runs a command line holding `pattern`."""
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if pattern.encode() in f.read() and int(name) != os.getpid():
                    return False
        except (OSError, ValueError):
            continue
    return True


@pytest.mark.parametrize("shape", ["plain", "launcher"])
def test_slurm_time_limit_reaches_every_worker_below_a_launcher_and_the_requeue_resumes(tmp_path, slurm,
                                                                                       monkeypatch, shape):
    command, (starts, ready, checkpoint, workers) = training_under(shape, tmp_path)
    monkeypatch.setenv("SLURM_STANDIN_TIME_LIMIT", f"0:{ready}")  # SIGUSR2 to the task once the workers run
    [outcome] = launch.run_all([Run("long", [command], tmp_path / "long" / "run.log")], "slurm", gpus_per_run=0,
                               slurm=SlurmOptions(time=5, signal_delay_s=35), folder=tmp_path / "study",
                               progress=lambda line: None)
    assert (outcome.ok, outcome.returncode) == (True, 0)
    # every worker saved on the stop (none orphaned, training on), then resumed from it in the requeued task
    assert sorted(lines(checkpoint)) == [f"checkpoint {r} SIGUSR1" for r in range(workers)]
    assert sorted(lines(starts)) == sorted([f"start {r}" for r in range(workers)] * 2)
    log = open(outcome.log).read()
    assert log.count("resumed from 1 checkpoint(s)") == workers and "the task is requeued" in log
    assert no_process_left(str(starts))


DRIVER = """
import sys
from keys_values import launch
from keys_values.launch import Run
command, log, launcher = eval(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    launch.run_all([Run("long", [command], log)], launcher, gpus=0)
except KeyboardInterrupt:
    print("driver: interrupted")
    sys.exit(130)
"""


@pytest.mark.parametrize("launcher", ["serial", "local"])
@pytest.mark.parametrize("shape", ["plain", "launcher"])
def test_ctrl_c_to_the_study_reaches_every_worker_and_the_status_is_written(tmp_path, launcher, shape):
    """A terminal's Ctrl-C goes to the study's process group; the commands run in sessions of their own, so the
    study forwards it to each one and every process below it, waits for them to save, writes the status and
    ends in one line (no traceback from the output copier or the worker threads)."""
    command, (starts, ready, checkpoint, workers) = training_under(shape, tmp_path)
    log = tmp_path / "long" / "run.log"
    p = subprocess.Popen([sys.executable, "-c", DRIVER, repr(command), str(log), launcher], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_file(ready)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "driver: interrupted" in out and "Traceback" not in err, err
    assert sorted(lines(checkpoint)) == [f"checkpoint {r} SIGINT" for r in range(workers)]
    status = json.load(open(launch.status_path(Run("long", [command], log))))
    assert status["ended"] is not None and status["returncode"] is not None
    assert no_process_left(str(starts))
