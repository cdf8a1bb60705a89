"""StudyPlan: every run of a study decided before any starts: the base model's evaluation, then each (setting,
seed) as a training.RunPlan (its folder, identity, rows) with its state, and the commands that train and
evaluate it. The model's config and meta model are read once, each distinct set of training rows loaded once."""

import os
import sys
from dataclasses import dataclass

from keys_values import config, environment, identity, launch, models
from keys_values.environment import Machine
from keys_values.evaluation.plan import pending_tasks
from keys_values.experiment import layout, records
from keys_values.experiment.state import state as folder_state
from keys_values.study.recipe import evaluation_flags, settings_of
from keys_values.training.plan import examples_key, plan_run, training_examples
from utils import UserError


@dataclass
class StudyRun:
    setting: str  # the setting's words, space-joined
    seed: int
    argv: list  # the training script's arguments
    plan: object  # its training.plan.RunPlan
    state: str  # new, partial, finished, or 'other settings' (a finished run of another identity in the folder)

    @property
    def folder(self):
        return self.plan.folder

    @property
    def name(self):
        return f"{self.setting} seed {self.seed}"


class StudyPlan:
    """`own`: the study's StudyConfig; `argv`: the training flags every run gets; `scripts`: the paths of the
    training and evaluation scripts the runs' commands call."""

    def __init__(self, own, argv, scripts):
        self.own, self.argv, self.scripts = own, argv, scripts
        self.t = config.training_config(argv)
        self.tasks = self.t.check()
        ckpt = models.resolve_checkpoint(self.t.pretrained_ckpt)
        model_config = models.load_config(ckpt, self.t.trust_remote_code)
        self.model = (ckpt, model_config, models.meta_model(model_config, self.t.trust_remote_code))
        self.settings = settings_of(own, self.model[2])
        self.gpus = own.gpus_per_run if (own.launcher == "slurm" or environment.visible_gpus()) else 0
        self.processes = own.gpus_per_run if own.accelerate_config else 1
        self.machine = Machine(1 if self.gpus else 0, self.processes, planned=bool(self.gpus))
        self.data = {}
        self.runs = [self.run(setting, seed) for seed in own.seeds for setting in self.settings]

    @property
    def precision(self):
        return self.runs[0].plan.precision if self.runs else None

    def run(self, setting, seed):
        argv = self.argv + ["--target_modules", *setting, "--seed", str(seed)]
        cfg = config.training_config(argv)
        key = examples_key(cfg)
        if key not in self.data:
            self.data[key] = training_examples(self.tasks, cfg, quiet=True)
        plan = plan_run(cfg, self.machine, examples=self.data[key], model=self.model, quiet=True)
        if self.own.launcher == "slurm":
            # on Slurm the runs resolve --dtype auto on other machines: give them the precision planned here, so
            # that each run's folder is the planned one
            argv = argv + ["--dtype", plan.precision.dtype]
        return StudyRun(" ".join(setting), seed, argv, plan, self.state(plan))

    @staticmethod
    def state(plan):
        st = folder_state(plan.folder)
        if st == "finished" and identity.differences(records.finished_identity(plan.folder), plan.identity):
            return "other settings"
        return st

    def train_command(self, r):
        train = self.scripts["train"]
        if self.own.accelerate_config:  # each run its own rendezvous port: several may run at once on one machine
            port = 29501 + self.runs.index(r) % 500
            return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", self.own.accelerate_config,
                    "--num_processes", str(self.own.gpus_per_run), "--main_process_port", str(port), train,
                    *r.argv, "--resume"]
        return [sys.executable, train, *r.argv, "--resume"]

    def base_evaluation(self):
        t = self.t
        return ["--pretrained_ckpt", t.pretrained_ckpt, "--tasks", *t.tasks, "--data_root", t.data_root,
                "--output_root", t.output_root, *(["--bnb"] if t.bnb else []),
                *(["--trust_remote_code"] if t.trust_remote_code else []), *evaluation_flags(self.own)]

    def run_evaluation(self, r):
        return ["--experiment_dir", r.folder, *evaluation_flags(self.own)]

    @property
    def logs(self):
        return layout.study_logs(self.t.output_root, self.t.tasks)

    def launch_runs(self):
        """launch.Run for every run with something left to do: the base evaluation, and each (setting, seed)'s
        training (unless finished) then evaluation (unless its metrics exist for these settings)."""
        evaluate = self.scripts["evaluate"]
        out = []
        base = self.base_evaluation()
        if pending_tasks(config.evaluation_config(base)):
            out.append(launch.Run("base model", [[sys.executable, evaluate, *base]], os.path.join(self.logs, "base.log")))
        for r in self.runs:
            if r.state == "other settings":
                raise UserError(f"{r.folder} holds a finished run made with other settings (other training rows): "
                                "delete it or choose another --output_root")
            commands = [] if r.state == "finished" else [self.train_command(r)]
            if commands or pending_tasks(config.evaluation_config(self.run_evaluation(r))):
                log = os.path.join(self.logs, f"{os.path.basename(r.folder)}.log")
                out.append(launch.Run(r.name, commands + [[sys.executable, evaluate, *self.run_evaluation(r)]], log))
        return out

    def resolved_flags(self):
        """The training flags every run gets, as the training script resolves them."""
        skip = {"target_modules", "seed", "resume", "overwrite", "dry_run", "plan_json"}
        words = []
        for k, v in vars(self.t).items():
            if k in skip or v is None or (v is False and k != "gradient_checkpointing"):
                continue
            words.append(f"--{k}" if v is True else "--no-gradient_checkpointing" if v is False else
                         f"--{k} {identity.fmt(v) if identity.fmt(v) else repr(v)}")
        return " ".join(words)

    def missing(self):
        """The runs not finished, in words ('q_proj v_proj seed 42 (partial)')."""
        return [f"{r.name} ({folder_state(r.folder)})" for r in self.runs if folder_state(r.folder) != "finished"]
