"""The keys-vs-values study in one command: evaluate the base model, train and evaluate LoRA on the attention's
query and value projections alone and with the feed-forward keys (up_proj, gate_proj) or values (down_proj)
added, once per seed, then write the report.

Its own flags are what a study adds (the settings, the seeds, the evaluation, where the runs go); every other
flag goes to the training script as it is (a flag it does not know is an error). A finished run is skipped, an
interrupted one resumed, a failed one does not stop the others; re-running after it finished retrains nothing
and rewrites the same report. The settings are role words, resolved for the model's architecture (on Llama:
q_proj v_proj, + up_proj, + gate_proj, + down_proj).

With no arguments, or with the embedded model, a small study that fits a laptop CPU: its recipe (SMALL_STUDY
below) fills every training flag not given. With any other model the training script's own defaults apply,
which are the original's; the paper's setting on Llama-2-7B, over three seeds, on 8 GPUs:

    python study.py --pretrained_ckpt NousResearch/Llama-2-7b-hf --bnb --data_root data --seeds 42 43 44 \\
        --tasks 20_Newsgroups_Fixed boolq COPA CB race_high QNLI --launcher local

`--dry_run` prints every run's plan (folder, state, steps, tokens, memory per device) and writes nothing.
"""

import argparse
import os
import sys
import time

import experiment
import get_eval_tasks
import identity
import launch
import llama2_classification_multi_tasks as train
import llama2_classification_multi_tasks_inference as inference
import memory
import roles
import utils
from common import ArgumentParser, UserError, run_main

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, "llama2_classification_multi_tasks.py")
EVALUATE = os.path.join(HERE, "llama2_classification_multi_tasks_inference.py")
# the small study's training recipe, for the embedded model only: the loss on the answer, a higher learning
# rate and short blocks give a real learning signal in minutes on a CPU
SMALL_STUDY = ["--pretrained_ckpt", utils.EMBEDDED_MODEL, "--data_root", "sample_data", "--tasks", "boolq", "COPA",
               "CB", "--epochs", "3", "--loss_on", "completion", "--learning_rate", "2e-3", "--max_seq_length", "256",
               "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1"]
SET_BY_THE_STUDY = {"target_modules": "--settings", "seed": "--seeds", "resume": "nothing (the study resumes by "
                    "itself)", "overwrite": "nothing (delete a run's folder to train it again)",
                    "dry_run": "the study's own --dry_run"}


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                       epilog=__doc__.split("\n\n", 1)[1] + "\nAny other flag is the training script's: see "
                       "`python llama2_classification_multi_tasks.py --help`.")
    p.add_argument("--settings", nargs="+", default=None, metavar="SETTING",
                   help="target-module settings, each one quoted string of module names or role words "
                        f"({' '.join(roles.ROLE_WORDS)}) (default: the four arms 'attention_qv', 'attention_qv keys_up',"
                        " 'attention_qv keys_gate', 'attention_qv values', as the architecture has them)")
    p.add_argument("--seeds", nargs="+", type=int, default=[utils.DEFAULT_SEED], metavar="SEED",
                   help="train and evaluate every setting once per seed (the base model once)")
    p.add_argument("--dry_run", action="store_true",
                   help="print every run's plan (folder, state, steps, tokens, memory per device, GPUs) and the "
                        "totals; load no weights, write nothing")
    p.add_argument("--report_only", action="store_true",
                   help="run nothing: write the report from whatever exists and list what is missing")
    e = p.add_argument_group("evaluation")
    e.add_argument("--scoring", choices=["generate", "rank"], default="generate",
                   help="generate: greedy decoding; rank: the label with the highest likelihood")
    e.add_argument("--max_test_samples", type=int, default=1000, help="the first N cleaned evaluation rows of each task")
    e.add_argument("--batch_size", type=int, default=64, help="evaluation batch size (halved on out-of-memory)")
    r = p.add_argument_group("where the runs go")
    r.add_argument("--launcher", choices=launch.LAUNCHERS, default="serial",
                   help="serial: one after another here; local: in parallel here, one run per --gpus_per_run GPUs "
                        "(or --parallel processes on a CPU); slurm: one job array, a task per run")
    r.add_argument("--gpus_per_run", type=int, default=1,
                   help="GPUs each run gets (local and slurm; 0 on a cluster without GPUs)")
    r.add_argument("--parallel", type=int, default=None,
                   help="local without GPUs: runs at once, each with its share of the cores (default: 1)")
    r.add_argument("--accelerate_config", default=None,
                   help="train each run under `accelerate launch --config_file FILE` with --gpus_per_run processes "
                        "(e.g. accelerate_configs/fsdp2.yaml: FSDP for a model too big for one GPU)")
    s = p.add_argument_group("slurm (with --launcher slurm)")
    s.add_argument("--partition", default=None, help="sbatch --partition")
    s.add_argument("--time", type=int, default=240, help="minutes per run before it is stopped, requeued and resumed")
    s.add_argument("--cpus_per_task", type=int, default=None, help="sbatch --cpus-per-task")
    s.add_argument("--mem", default=None, help="memory per run: GB, or sbatch's own string such as 64G")
    s.add_argument("--account", default=None, help="sbatch --account")
    s.add_argument("--array_parallelism", type=int, default=None, help="at most this many runs at once")
    s.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch parameter, e.g. --sbatch qos=high --sbatch constraint=a100 (repeatable)")
    return p


def given_training_flags(rest):
    """{dest: value} of the training flags given in `rest` (abbreviations resolved as the training script
    resolves them), nothing filled in."""
    p = train.build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return vars(p.parse_args(rest))


def is_embedded(ckpt):
    return os.path.normpath(ckpt) == os.path.normpath(utils.EMBEDDED_MODEL) or \
        os.path.normpath(os.path.abspath(ckpt)) == os.path.normpath(os.path.abspath(utils.EMBEDDED_MODEL))


def parse_args(argv=None):
    """(the study's own flags, the training script's arguments, the recipe in words). The small study's recipe
    fills the training flags not given when the base model is the embedded one (or not given); any other
    base model gets the training script's defaults (the original's)."""
    own, rest = build_parser().parse_known_args(argv)
    given = given_training_flags(rest)
    for dest, instead in SET_BY_THE_STUDY.items():
        if dest in given:
            raise UserError(f"study.py sets --{dest} itself: use {instead}")
    small = "pretrained_ckpt" not in given or is_embedded(given["pretrained_ckpt"])
    recipe = []
    if small:
        dest_of = {a.option_strings[0]: a.dest for a in train.build_parser()._actions if a.option_strings}
        recipe = [arg for flag, values in flags(SMALL_STUDY) if dest_of[flag] not in given
                  for arg in (flag, *values)]
    argv = recipe + rest
    train.check_args(train.parse_args(argv))  # a bad training flag fails here, before any run
    why = ("the small study's recipe (study.SMALL_STUDY) for the embedded model, where not given" if small else
           "the training script's defaults (the original's), where not given")
    return own, argv, why


def flags(argv):
    """[(flag, [its values])] of an argument list made of --flag value... groups."""
    groups = []
    for arg in argv:
        if arg.startswith("--"):
            groups.append((arg, []))
        else:
            groups[-1][1].append(arg)
    return groups


def settings_of(own, model):
    """The settings as lists of words, checked against the model (roles.resolve); an unquoted list (every
    setting one module name) is caught. The default: roles.study_arms of the architecture."""
    if own.settings is None:
        arms = roles.study_arms(model)
        for arm, note in arms:
            if note:
                print(f"settings: {note}")
        return [arm.split() for arm, _ in arms if arm]
    words = [s.replace(",", " ").split() for s in own.settings]
    if len(words) > 1 and all(len(w) == 1 and w[0] not in roles.ROLE_WORDS for w in words):
        raise UserError(f"--settings got {len(words)} settings of one module each ({', '.join(w[0] for w in words)}): "
                        "quote each setting, e.g. --settings 'q_proj v_proj up_proj' 'q_proj v_proj down_proj'")
    for w in words:
        if not w:
            raise UserError("--settings: an empty setting")
        roles.resolve(w, model)  # a name the model lacks, or a role it cannot have, is a one-line error here
    seen = set()
    for w in words:
        if tuple(w) in seen:
            raise UserError(f"--settings names {' '.join(w)!r} twice")
        seen.add(tuple(w))
    return words


def evaluation_flags(own):
    """The flags every evaluation of the study gets, the base model's included: one precision rule (auto) for
    all, whatever precision each adapter was trained in, so that the rows are evaluated alike."""
    return ["--scoring", own.scoring, "--max_test_samples", str(own.max_test_samples), "--batch_size",
            str(own.batch_size), "--dtype", "auto"]


class Plan:
    """Every run of the study, decided before any starts: the base model's evaluation, then each (setting,
    seed) with its folder, identity, state and commands."""

    def __init__(self, own, argv):
        self.own, self.argv = own, argv
        self.t = train.parse_args(argv)
        self.tasks = train.check_args(self.t)
        self.ckpt = utils.resolve_checkpoint(self.t.pretrained_ckpt)
        self.config = utils.load_config(self.ckpt, self.t.trust_remote_code)
        self.model = utils.meta_model(self.config, self.t.trust_remote_code)
        self.settings = settings_of(own, self.model)
        self.gpus = own.gpus_per_run if (own.launcher == "slurm" or launch.visible_gpus()) else 0
        device = "gpu" if self.gpus else None
        self.prec = utils.precision(self.t.dtype, self.t.bnb, "train", device=device, shape=train.probe_shape(self.config))
        self.processes = own.gpus_per_run if own.accelerate_config else 1
        self.data = {}
        self.runs = [self.run(setting, seed) for seed in own.seeds for setting in self.settings]

    def examples(self, args):
        """The training rows of a run (loaded once per distinct sampling)."""
        key = (args.data_root, args.max_samples, args.train_sample_fraction, args.seed if args.train_sample_fraction
               < 0.99 else None)
        if key not in self.data:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                self.data[key] = train.load_training_examples(self.tasks, args)
        return self.data[key]

    def run(self, setting, seed):
        # on Slurm the runs resolve --dtype auto on other machines: give them the precision planned here, so that
        # each run's folder is the planned one (here, the same machine's probe gives the same answer)
        pinned = ["--dtype", self.prec.dtype] if self.own.launcher == "slurm" else []
        argv = self.argv + ["--target_modules", *setting, "--seed", str(seed), *pinned]
        args = train.parse_args(argv)
        res = roles.resolve(args.target_modules, self.model, dropout=args.dropout)
        per_task, sources = self.examples(args)
        ident = train.run_identity(args, res, self.prec, self.processes, per_task)
        folder = train.experiment_folder(args, ident)
        return {"setting": " ".join(setting), "seed": seed, "argv": argv, "args": args, "res": res, "ident": ident,
                "folder": folder, "state": self.state(folder, ident), "per_task": per_task, "sources": sources}

    @staticmethod
    def state(folder, ident):
        """new, partial, finished, or 'other settings' (a finished run of another identity in the folder)."""
        st = experiment.state(folder)
        if st == "finished":
            record = utils.read_json(os.path.join(folder, experiment.RECORD), "experiment record")
            if identity.differences(train.recorded_identity(record), ident):
                return "other settings"
        return st

    def train_command(self, r):
        if self.own.accelerate_config:  # each run its own rendezvous port: several may run at once on one machine
            port = 29501 + self.runs.index(r) % 500
            return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", self.own.accelerate_config,
                    "--num_processes", str(self.own.gpus_per_run), "--main_process_port", str(port), TRAIN,
                    *r["argv"], "--resume"]
        return [sys.executable, TRAIN, *r["argv"], "--resume"]

    def base_evaluation(self):
        return ["--pretrained_ckpt", self.t.pretrained_ckpt, "--tasks", *self.t.tasks, "--data_root", self.t.data_root,
                "--output_root", self.t.output_root, *(["--bnb"] if self.t.bnb else []),
                *(["--trust_remote_code"] if self.t.trust_remote_code else []), *evaluation_flags(self.own)]

    def launch_runs(self):
        """launch.Run for every run with something left to do: the base evaluation, and each (setting, seed)'s
        training (unless finished) then evaluation (unless its metrics exist for these settings)."""
        logs = os.path.join(self.t.output_root, ",".join(self.t.tasks), "study-logs")
        out = []
        base = self.base_evaluation()
        if inference.pending_tasks(base):
            out.append(launch.Run("base model", [[sys.executable, EVALUATE, *base]], os.path.join(logs, "base.log")))
        for r in self.runs:
            if r["state"] == "other settings":
                raise UserError(f"{r['folder']} holds a finished run made with other settings (other training rows): "
                                "delete it or choose another --output_root")
            evaluate = [sys.executable, EVALUATE, "--experiment_dir", r["folder"], *evaluation_flags(self.own)]
            commands = [] if r["state"] == "finished" else [self.train_command(r)]
            if commands or inference.pending_tasks(evaluate[2:]):
                name = f"{r['setting']} seed {r['seed']}"
                log = os.path.join(logs, f"{os.path.basename(r['folder'])}.log")
                out.append(launch.Run(name, commands + [evaluate], log))
        return out

    def resolved_flags(self):
        """The training flags every run gets, as the training script resolves them."""
        skip = {"target_modules", "seed", "resume", "overwrite", "dry_run"}
        words = []
        for k, v in vars(self.t).items():
            if k in skip or v is None or (v is False and k != "gradient_checkpointing"):
                continue
            words.append(f"--{k}" if v is True else "--no-gradient_checkpointing" if v is False else
                         f"--{k} {identity.fmt(v) if identity.fmt(v) else repr(v)}")
        return " ".join(words)


def print_dry_run(plan):
    """One line per run: folder, state, optimizer steps, tokens, peak memory per device (the training script's
    own estimate), GPUs; then the totals."""
    tokenizer = utils.load_tokenizer(plan.ckpt, plan.t.trust_remote_code)
    cuda = bool(plan.gpus)
    place = utils.placement(1, False) if cuda else utils.placement(0, False)
    blocks_of = {}
    rows = []
    for r in plan.runs:
        args = r["args"]
        key = id(r["per_task"]), args.seed
        if key not in blocks_of:
            blocks_of[key] = train.training_blocks(r["per_task"], tokenizer, args)
        p = train.plan(args, r["folder"], plan.config, r["sources"], blocks_of[key], plan.prec, place, cuda, r["res"],
                       r["ident"], plan.processes)
        rows.append((r, p))
    print(f"\n{len(rows)} runs ({len(plan.settings)} settings x {len(plan.own.seeds)} seeds), {plan.prec.why}, "
          f"planned for {'a GPU' if cuda else 'this machine'}:")
    print(f"{'setting':<34}{'seed':>5}  {'state':<9}{'steps':>7}{'tokens':>14}{'memory/device':>15}{'GPUs':>6}  folder")
    total_steps = total_tokens = 0
    peak = 0
    for r, p in rows:
        gib = p["memory_estimate_bytes"]["total"] / memory.GIB
        peak = max(peak, gib)
        total_steps += p["optimizer_steps"]
        total_tokens += p["tokens"]
        print(f"{r['setting']:<34}{r['seed']:>5}  {r['state']:<9}{p['optimizer_steps']:>7}{p['tokens']:>14,}"
              f"{gib:>11.1f} GiB{plan.gpus * plan.processes if plan.own.accelerate_config else plan.gpus:>6}  "
              f"{r['folder']}")
    todo = [r for r, _ in rows if r["state"] != "finished"]
    print(f"total: {total_steps:,} optimizer steps, {total_tokens:,} training tokens; {len(todo)} of {len(rows)} runs "
          f"to train; peak memory per device {peak:.1f} GiB")


def report(plan, outcomes=()):
    """Write the report from whatever exists and list what is missing."""
    root = plan.t.output_root
    missing = [f"{r['setting']} seed {r['seed']} ({experiment.state(r['folder'])})" for r in plan.runs
               if experiment.state(r["folder"]) != "finished"]
    if os.path.isdir(root):
        try:
            get_eval_tasks.main(["--root", root])
        except UserError as e:
            print(f"no report yet: {e}")
    if missing:
        print(f"missing from the report: {'; '.join(missing)}")
    print(f"\nreport: {os.path.join(root, ','.join(plan.t.tasks), 'summary.md')} and summary.png")


def main(argv=None):
    t0 = time.time()
    own, train_argv, why = parse_args(argv)
    for flag in ("time", "max_test_samples", "batch_size"):
        if getattr(own, flag) <= 0:
            raise UserError(f"--{flag} must be positive, got {getattr(own, flag)}")
    if own.gpus_per_run < 0 or (own.accelerate_config and own.gpus_per_run < 2):
        raise UserError(f"--gpus_per_run must be 0 or more (2 or more with --accelerate_config), got {own.gpus_per_run}")
    for seed in own.seeds:
        if not 0 <= seed < 2**32:
            raise UserError(f"--seeds: {seed} is outside [0, 2**32 - 1] (torch's and numpy's seed range)")
    twice = sorted({s for s in own.seeds if own.seeds.count(s) > 1})
    if twice:
        raise UserError(f"--seeds names {' '.join(map(str, twice))} twice: each seed is one run of every setting")
    if own.parallel is not None and own.parallel <= 0:
        raise UserError(f"--parallel must be positive, got {own.parallel}")
    if own.accelerate_config and not os.path.isfile(own.accelerate_config):
        raise UserError(f"--accelerate_config {own.accelerate_config}: no such file")
    sbatch = {}
    for kv in own.sbatch:
        if "=" not in kv:
            raise UserError(f"--sbatch {kv}: give KEY=VALUE, e.g. --sbatch qos=high")
        k, v = kv.split("=", 1)
        sbatch[k.strip().lstrip("-").replace("-", "_")] = v
    plan = Plan(own, train_argv)
    print(f"training flags ({why}): {plan.resolved_flags()}")
    print(f"settings: {'; '.join(' '.join(s) for s in plan.settings)}; seeds {' '.join(map(str, own.seeds))}")
    if own.dry_run:
        print_dry_run(plan)
        return
    if own.report_only:
        report(plan)
        return
    runs = plan.launch_runs()
    print(f"{len(runs)} run{'s' if len(runs) != 1 else ''} to do ({len(plan.runs) + 1 - len(runs)} done already), "
          f"launcher {own.launcher}")
    slurm = launch.SlurmOptions(partition=own.partition, time=own.time, gpus_per_task=own.gpus_per_run,
                                cpus_per_task=own.cpus_per_task, mem=own.mem, account=own.account,
                                array_parallelism=own.array_parallelism, additional=sbatch)
    folder = os.path.join(plan.t.output_root, ",".join(plan.t.tasks), "study-logs")
    outcomes = launch.run_all(runs, own.launcher, parallel=own.parallel, gpus_per_run=own.gpus_per_run, slurm=slurm,
                              folder=folder)
    report(plan, outcomes)
    print(f"study: {time.time() - t0:.0f} s")
    failed = launch.failures_message(outcomes)
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
