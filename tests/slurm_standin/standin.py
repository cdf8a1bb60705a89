"""A stand-in for Slurm on one machine, for the tests (the executables next to this file call it by their name).

sbatch    records the script and its #SBATCH flags, prints "Submitted batch job <id>" and hands the job to a
          scheduler process that runs its tasks here: the script under bash with the SLURM_* variables of a job
          (array) task, at most %N array tasks at once; a task asked to requeue runs again when it exits.
srun      runs a step: the command in a session (process group) of its own, output to --output / --error.
sacct     reports each task's state (-o JobID,State,NodeList,ExitCode --parsable2 -j <id>).
scontrol  `scontrol requeue <id>[_<task>]`: run that task again when it exits.
scancel   cancels a job (or one task), or with --signal sends a signal to the running steps.
squeue    lists the tasks not finished yet.

Everything lives under $SLURM_STANDIN_DIR, a folder per job:
  script.sh, sbatch.json  what was submitted: the script, its #SBATCH flags parsed
  tasks.json              each task's state, starts and exit code (written by the scheduler alone)
  events.jsonl            what happened (start, signal, requeue request, requeue, end): for the tests to read
  requeue/<task>          written by scontrol, read by the scheduler when the task exits
  steps/<task>.pid        written by srun: the running step's process group
SLURM_STANDIN_TIME_LIMIT="<task>:<file>": once <file> exists while that task runs, its step gets SIGUSR2 (once), as
Slurm's `--signal=USR2@N` signals a job's steps N seconds before its time limit.
"""

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

DEADLINE_S = 300  # a scheduler never outlives a broken test by more than this


def job_dir(job):
    return os.path.join(os.environ["SLURM_STANDIN_DIR"], str(job))


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def event(job, what, **details):
    with open(os.path.join(job_dir(job), "events.jsonl"), "a") as f:
        f.write(json.dumps({"event": what, "time": time.time(), **details}) + "\n")


def split_id(text):
    """'1000_2' -> ('1000', 2); '1000' -> ('1000', 0)."""
    job, _, task = text.partition("_")
    return job, int(task or 0)


# ----------------------------------------------------------------------------------------------------
# sbatch and the scheduler


def sbatch_flags(script):
    """{flag: value} of a script's #SBATCH lines ("--exclusive" alone -> True)."""
    flags = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            for arg in shlex.split(line[len("#SBATCH "):]):
                name, eq, value = arg.lstrip("-").partition("=")
                flags[name] = value if eq else True
    return flags


def array_tasks(flags):
    """(task ids, how many at once, is it an array) from --array=0-2,5%2."""
    if "array" not in flags:
        return [0], 1, False
    spec, _, limit = flags["array"].partition("%")
    tasks = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        tasks.extend(range(int(first), int(last or first) + 1))
    return tasks, int(limit or len(tasks)), True


def sbatch(argv):
    [path] = [a for a in argv if not a.startswith("-")]  # submitit passes the script alone
    with open(path) as f:
        script = f.read()
    flags = sbatch_flags(script)
    tasks, _, _ = array_tasks(flags)
    os.makedirs(os.environ["SLURM_STANDIN_DIR"], exist_ok=True)
    with open(os.path.join(os.environ["SLURM_STANDIN_DIR"], "next_id"), "a+") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)  # a task of job J is J + its index, as Slurm numbers them
        counter.seek(0)
        job = int(counter.read() or 1000)
        counter.seek(0)
        counter.truncate()
        counter.write(str(job + len(tasks)))
    folder = job_dir(job)
    os.makedirs(os.path.join(folder, "requeue"))
    os.makedirs(os.path.join(folder, "steps"))
    with open(os.path.join(folder, "script.sh"), "w") as f:
        f.write(script)
    write_json(os.path.join(folder, "sbatch.json"), {"flags": flags, "argv": argv, "cwd": os.getcwd()})
    write_json(os.path.join(folder, "tasks.json"), {str(t): {"state": "PENDING", "starts": 0, "exit": None}
                                                    for t in tasks})
    with open(os.path.join(folder, "scheduler.log"), "a") as log:
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "schedule", str(job)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True)
    print(f"Submitted batch job {job}")


def expand(pattern, env):
    """Slurm's filename patterns: %A array job, %a array task, %j job id, %t task rank."""
    subs = {"A": env.get("SLURM_ARRAY_JOB_ID", env["SLURM_JOB_ID"]), "a": env.get("SLURM_ARRAY_TASK_ID", "0"),
            "j": env["SLURM_JOB_ID"], "t": env.get("SLURM_PROCID", "0"), "%": "%"}
    return re.sub(r"%([Aajt%])", lambda m: subs[m.group(1)], pattern)


def schedule(job):
    folder = job_dir(job)
    submitted = read_json(os.path.join(folder, "sbatch.json"))
    flags, cwd = submitted["flags"], submitted["cwd"]
    tasks, at_once, is_array = array_tasks(flags)
    states = read_json(os.path.join(folder, "tasks.json"))
    limit_task, _, limit_file = os.environ.get("SLURM_STANDIN_TIME_LIMIT", "").partition(":")
    signalled = False
    waiting, running = list(tasks), {}

    def save():
        write_json(os.path.join(folder, "tasks.json"), states)

    def start(task):
        state = states[str(task)]
        env = dict(os.environ, SLURM_JOB_ID=str(int(job) + tasks.index(task)), SLURM_JOB_NAME=flags.get("job-name", ""),
                   SLURM_SUBMIT_DIR=cwd, SLURM_JOB_NODELIST="standin", SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1",
                   SLURM_NODEID="0", SLURM_RESTART_COUNT=str(state["starts"]))
        if is_array:
            env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(task),
                       SLURM_ARRAY_TASK_COUNT=str(len(tasks)), SLURM_ARRAY_TASK_MIN=str(min(tasks)),
                       SLURM_ARRAY_TASK_MAX=str(max(tasks)))
        for flag, var in (("cpus-per-task", "SLURM_CPUS_PER_TASK"), ("partition", "SLURM_JOB_PARTITION"),
                          ("account", "SLURM_JOB_ACCOUNT")):
            if flag in flags:
                env[var] = str(flags[flag])
        out = open(expand(flags.get("output", "slurm-%j.out"), env), "a")
        err = open(expand(flags["error"], env), "a") if "error" in flags else out
        running[task] = subprocess.Popen(["bash", os.path.join(folder, "script.sh")], cwd=cwd, env=env,
                                         stdout=out, stderr=err, start_new_session=True)
        state.update(state="RUNNING", starts=state["starts"] + 1)
        save()
        event(job, "start", task=task, starts=state["starts"])

    def signal_step(task, sig):
        pid = read_json(os.path.join(folder, "steps", f"{task}.pid"))
        if pid is None:
            return False
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return False
        event(job, "signal", task=task, signal=signal.Signals(sig).name)
        return True

    deadline = time.time() + DEADLINE_S
    while waiting or running:
        while waiting and len(running) < at_once:
            start(waiting.pop(0))
        if not signalled and limit_file and int(limit_task) in running and os.path.exists(limit_file):
            signalled = signal_step(int(limit_task), signal.SIGUSR2)
        cancel = os.path.exists(os.path.join(folder, "cancel")) or time.time() > deadline
        for task, proc in list(running.items()):
            if cancel:
                os.killpg(proc.pid, signal.SIGTERM)
                signal_step(task, signal.SIGTERM)
            rc = proc.poll()
            if rc is None:
                continue
            del running[task]
            state = states[str(task)]
            requeue = os.path.join(folder, "requeue", str(task))
            if os.path.exists(requeue) and not cancel:
                os.remove(requeue)
                state.update(state="REQUEUED", exit=rc)
                waiting.insert(0, task)
                event(job, "requeue", task=task, exit=rc)
            else:
                state.update(state="CANCELLED" if cancel else "COMPLETED" if rc == 0 else "FAILED", exit=rc)
                event(job, "end", task=task, exit=rc)
            save()
        if cancel:
            for task in waiting:
                states[str(task)]["state"] = "CANCELLED"
            waiting = []
            save()
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------------
# srun, sacct, scontrol, scancel, squeue


def srun(argv):
    """srun [--unbuffered] [--output X] [--error Y] [--opt[=v]] command...: the step runs in its own process
    group (as slurmstepd's tasks do), its pid recorded for the scheduler's signals."""
    takes_value = {"output", "error", "ntasks", "nodes", "cpus-per-task", "gres", "gpus", "job-name"}
    files, k = {}, 0
    while k < len(argv) and argv[k].startswith("-"):
        name, eq, value = argv[k].lstrip("-").partition("=")
        if not eq and name in takes_value:
            k, value = k + 1, argv[k + 1]
        files[name] = value
        k += 1
    command = argv[k:]
    if "SLURM_JOB_ID" not in os.environ:
        sys.exit("srun: error: this stand-in only runs steps inside a job")
    os.environ.update(SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NTASKS="1", SLURM_STEP_ID="0", SLURM_STEPID="0")
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    os.setsid()
    write_json(os.path.join(job_dir(job), "steps", f"{task}.pid"), os.getpid())
    for fd, name in ((1, "output"), (2, "error")):
        if name in files:
            target = os.open(expand(files[name], os.environ), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(target, fd)
            os.close(target)
    if "output" in files and "error" not in files:
        os.dup2(1, 2)
    os.execvp(command[0], command)


def sacct(argv):
    fields, jobs, k = ["JobID", "State"], [], 0
    while k < len(argv):
        if argv[k] in ("-o", "--format"):
            fields, k = argv[k + 1].split(","), k + 1
        elif argv[k] in ("-j", "--jobs"):
            jobs, k = jobs + argv[k + 1].split(","), k + 1
        k += 1
    print("|".join(fields))
    for job in jobs:
        job, _ = split_id(job)
        submitted = read_json(os.path.join(job_dir(job), "sbatch.json"))
        if submitted is None:
            continue  # unknown job: no line, as sacct
        is_array = "array" in submitted["flags"]
        for task, s in read_json(os.path.join(job_dir(job), "tasks.json")).items():
            exit_code = "" if s["exit"] is None else f"{max(s['exit'], 0)}:{max(-s['exit'], 0)}"
            values = {"JobID": f"{job}_{task}" if is_array else job, "State": s["state"], "NodeList": "standin",
                      "ExitCode": exit_code}
            print("|".join(values.get(f, "") for f in fields))


def scontrol(argv):
    if argv[:1] != ["requeue"]:
        sys.exit(f"scontrol: the stand-in knows `scontrol requeue <id>` only, not {shlex.join(argv)}")
    for text in argv[1:]:
        job, task = split_id(text)
        open(os.path.join(job_dir(job), "requeue", str(task)), "w").close()
        event(job, "requeue request", task=task)


def scancel(argv):
    sig, ids = None, []
    for k, arg in enumerate(argv):
        if arg.startswith("--signal=") or arg.startswith("-s="):
            sig = arg.split("=", 1)[1]
        elif arg in ("--signal", "-s"):
            sig = argv[k + 1]
        elif not arg.startswith("-") and (k == 0 or argv[k - 1] not in ("--signal", "-s")):
            ids.append(arg)
    for text in ids:
        job, task = split_id(text)
        if sig is None:
            open(os.path.join(job_dir(job), "cancel"), "w").close()
            continue
        pid = read_json(os.path.join(job_dir(job), "steps", f"{task}.pid"))
        if pid is not None:
            os.killpg(pid, getattr(signal, "SIG" + sig.upper().removeprefix("SIG")))


def squeue(argv):
    print("JOBID STATE")
    for job in sorted(os.listdir(os.environ["SLURM_STANDIN_DIR"])):
        for task, s in read_json(os.path.join(job_dir(job), "tasks.json"), {}).items():
            if s["state"] in ("PENDING", "RUNNING", "REQUEUED"):
                print(f"{job}_{task} {s['state']}")


def main(command):
    if command == "schedule":
        schedule(sys.argv[2])
    else:
        {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol, "scancel": scancel,
         "squeue": squeue}[command](sys.argv[1:])


if __name__ == "__main__":
    main(sys.argv[1])
