"""RunPlan: everything one training run is, decided before any weight loads, from the flags (TrainingConfig), the
model's config and the machine: each task's rows and where they came from, the resolved checkpoint, the modules
to adapt with their roles, the precision, the placement, the processes, the run's identity and its folder. The
training script, its --dry_run, the study's plan and the run's record all read this one object."""

import dataclasses
import os
from dataclasses import dataclass

import prompts
from keys_values import data, environment, identity, models, packing, precision, roles
from keys_values.config import TrainingConfig
from keys_values.environment import Machine
from keys_values.experiment import layout
from utils import UserError


@dataclass
class RunPlan:
    config: TrainingConfig  # the flags, the defaults that follow --bnb filled in
    tasks: list  # prompts.Task, in the order given
    examples: dict  # {task name: [prompts.Example]} the rows trained on
    sources: dict  # {task name: where the rows came from, with their counts (data.load)}
    checkpoint: str  # the base model as from_pretrained loads it (a folder or a hub id)
    model_config: object  # its transformers config
    model: object  # its modules on the meta device (names and shapes, no weights)
    targets: roles.Targets  # the modules (and expert parameters) LoRA adapts, with their roles
    machine: Machine  # this one, or the one a --dry_run plans for
    precision: precision.Precision
    placement: precision.Placement
    identity: dict  # identity.training: every setting that changes the adapter
    folder: str  # the experiment folder (layout.experiment_dir of the identity)

    @property
    def processes(self):
        """Data-parallel (or FSDP) processes that train the adapter together."""
        return self.machine.processes

    @property
    def fsdp(self):
        return self.machine.fsdp

    @property
    def adapted_names(self):
        """The names the folder and the record give the adapted modules and parameters (None: peft's default)."""
        names = list(self.targets.target_modules or []) + list(self.targets.target_parameters or [])
        return names or None

    def blocks(self, tokenizer):
        """The training blocks (packing.training_blocks) of the plan's rows."""
        return packing.training_blocks(self.examples, tokenizer, self.config)

    def optimizer_steps(self, n_blocks):
        return packing.optimizer_steps(n_blocks, self.config, self.processes)

    def say_downloads(self):
        """One line naming the rows downloaded from the hub, if any (said again at the end of a run)."""
        hub = [f"{name} from {data.describe(s)}" for name, s in self.sources.items() if s["source"] == "hub"]
        if hub:
            print("data downloaded from the hub: " + "; ".join(hub))

    def started(self):
        """identity.json, written when the training starts: what an interrupted run is resumed with."""
        return {"identity": self.identity, "args": dataclasses.asdict(self.config)}

    def record(self, *, n_blocks, trainable, total, target_modules, logging_steps, seconds):
        """experiment.json's contents but the results (save.save_experiment adds the loss, the steps, the
        epochs trained and the library versions): every resolved flag, the identity and what stands for it in
        the folder's name, the roles, precision, placement, processes and the data."""
        return {
            "kind": "lora", "args": {**dataclasses.asdict(self.config), "logging_steps": logging_steps},
            "identity": self.identity, "identity_suffix": identity.hashed_part(self.identity)[0],
            "base_checkpoint": self.checkpoint, "target_modules": self.adapted_names or target_modules,
            "module_roles": dict(self.targets.roles), "adapted": [list(p) for p in self.targets.paths],
            "trainable_params": trainable, "total_params": total, "precision": dataclasses.asdict(self.precision),
            "placement": self.placement.what, "processes": self.processes, "data": self.sources,
            "train_examples": {k: len(v) for k, v in self.examples.items()}, "train_blocks": n_blocks,
            "steps_per_epoch": packing.steps_per_epoch(n_blocks, self.config, self.processes), "seconds": seconds,
            "paths": layout.recorded_paths(self.folder, pretrained_ckpt=self.config.pretrained_ckpt,
                                           data_root=self.config.data_root)}


def training_examples(tasks, cfg, quiet=False):
    """({task: examples}, {task: source}): each task's cleaned training rows (the first --max_samples, then the
    stratified sample below --train_sample_fraction 0.99) and where they came from, one line a task."""
    per_task, sources = {}, {}
    for task in tasks:
        examples, source = data.load(task, cfg.data_root, "train", cfg.max_samples)
        if cfg.sampled:
            examples = prompts.stratified_sample(examples, cfg.train_sample_fraction, cfg.seed)
        per_task[task.name], sources[task.name] = examples, {**source, "used": len(examples)}
        dropped = "".join(f", {n} dropped: {why}" for why, n in source.get("dropped", {}).items())
        if not quiet:
            print(f"{task.name}: {len(examples)} training examples from {data.describe(source)} "
                  f"({source['rows']} rows, {source['clean']} after cleaning{dropped})")
            for line in training_warnings(task, examples, cfg.data_root):
                print(line)
    return per_task, sources


def training_warnings(task, examples, data_root):
    """Lines about training rows that would make a result mean less than it seems: evaluation rows that are also
    training rows (the evaluation then measures memory), and one row that holds most of the training text."""
    out = []
    texts = [prompts.training_text(task, e.fields, e.label) for e in examples]
    total = sum(map(len, texts))
    if len(texts) > 1 and total:
        longest = max(range(len(texts)), key=lambda i: len(texts[i]))
        if len(texts[longest]) > total / 2:
            out.append(f"warning: {task.name}: one training row (the {longest + 1}. of {len(texts)}) holds "
                       f"{100 * len(texts[longest]) / total:.0f}% of the training text's characters: the training is "
                       "mostly that row")
    if data.find_source(task, data_root, task.eval_split) is not None:
        try:
            evaluation, _ = data.load(task, data_root, task.eval_split)
        except UserError:
            return out  # its own error comes when it is evaluated
        seen = {(tuple(sorted(e.fields.items())), e.label) for e in examples}
        shared = sum((tuple(sorted(e.fields.items())), e.label) in seen for e in evaluation)
        if shared:
            out.append(f"warning: {task.name}: {shared} of its {len(evaluation)} {task.eval_split!r} rows are also "
                       f"training rows{' (all of them)' if shared == len(evaluation) else ''}: their accuracy "
                       "measures what was memorised, not what was learned")
    return out


def warn_missing_evaluation_data(tasks, data_root):
    """One line per task whose evaluation split cannot be found, before the training time is spent."""
    for task in tasks:
        if data.find_source(task, data_root, task.eval_split) is None:
            print(f"warning: {task.name} has no {task.eval_split!r} split for evaluation here (looked for "
                  f"{data.expected_files(task, data_root, task.eval_split)}); evaluation will fail until it exists")


def examples_key(cfg):
    """What decides a run's training rows: runs with the same key train on the same rows (a study loads them
    once per key)."""
    return cfg.data_root, tuple(cfg.tasks), cfg.max_samples, cfg.train_sample_fraction, \
        cfg.seed if cfg.sampled else None


def plan_run(cfg, machine=None, examples=None, model=None, quiet=False):
    """The RunPlan of a TrainingConfig (checked: a bad value is one line before anything loads). `machine`:
    the one planned for, or what --dry_run names ('here', 'gpu', 'fsdp:N'; this one when None); `examples`: (per task, sources) already loaded for these flags
    (a study's other runs); `model`: (checkpoint, config, meta model) already read. `quiet` prints nothing (a
    study plans many runs). Reads the rows and the model's config; loads no weights."""
    tasks = cfg.check()
    layout.check_output_root(cfg.output_root)
    per_task, sources = examples or training_examples(tasks, cfg, quiet)
    if model is None:
        ckpt = models.resolve_checkpoint(cfg.pretrained_ckpt)
        model_config = models.load_config(ckpt, cfg.trust_remote_code)
        model = (ckpt, model_config, models.meta_model(model_config, cfg.trust_remote_code))
    ckpt, model_config, meta = model
    models.check_block_length(cfg.max_seq_length, model_config, cfg.pretrained_ckpt,
                              say=(lambda line: None) if quiet else print)
    targets = roles.resolve(cfg.target_modules, meta, dropout=cfg.dropout)
    if targets.derivation and not quiet:
        print(targets.derivation)
    if not isinstance(machine, Machine):
        machine = environment.planned_machine(machine)
    prec = precision.precision(cfg.dtype, cfg.bnb, "train", device="gpu" if machine.planned else None,
                               shape=precision.probe_shape(model_config))
    names = list(targets.target_modules or []) + list(targets.target_parameters or [])
    content = models.content_fingerprint(ckpt)[:12] if os.path.isdir(ckpt) else None  # a local base: its content
    ident = identity.training(cfg, names or None, prec.dtype, machine.processes, identity.data_fingerprint(per_task),
                              content)
    return RunPlan(cfg, tasks, per_task, sources, ckpt, model_config, meta, targets, machine, prec,
                   precision.this_placement(machine), ident, layout.experiment_dir(cfg.output_root, ident))
