"""The flags of every script, each defined once: a dataclass field with its default and its help text, from which
the command line is built (`parser`), the original's defaults are read (the identity's "original value") and a
study passes flags on (`to_argv`). The values a user can get wrong are checked here, before anything loads.

TrainingConfig: llama2_classification_multi_tasks.py. EvaluationConfig: its _inference.py. StudyConfig: study.py
(its evaluation flags are EvaluationConfig's fields). ReportConfig: get_eval_tasks.py. EditingConfig:
edit_knowledge.py (keys_values/editing/config.py).
"""

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field

import prompts
from keys_values import roles
from utils import ArgumentParser, UserError

ORIGINAL_MODEL = "NousResearch/Llama-2-7b-hf"  # the original's base model
EMBEDDED_MODEL = "models/SmolLM2-135M-Instruct"  # the laptop's, made by `make model`
DEFAULT_SEED = 42  # the original's runs; another seed adds -seed<N> to the experiment folder's name
SEED_RANGE = 2**32  # torch's and numpy's seeds: [0, 2**32 - 1]
SAMPLE_EVERYTHING = 0.99  # --train_sample_fraction at or above this keeps every row (the original's rule)
ORIGINAL_DTYPE = "bf16"  # the original trained under bf16 (its 4-bit layers computed in bf16)
ORIGINAL_PROCESSES = 1  # the original ran one process (device_map="auto")
# defaults that follow --bnb, as in the original: (with --bnb, without)
FOLLOW_BNB = {"per_device_train_batch_size": (32, 4), "gradient_accumulation_steps": (2, 16),
              "gradient_checkpointing": (True, False)}
CARDS_GIB = (24, 40, 48, 80)  # the common GPU sizes a --dry_run checks the estimate against


def flag(default, help, group=None, **argparse_kwargs):
    """A dataclass field that is one command-line flag: its default, its help text, the group it is shown in
    and any argparse keyword (choices, type, nargs, action, metavar, const)."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d),
                     metadata={"help": help, "group": group, "argparse": argparse_kwargs})
    return field(default=default, metadata={"help": help, "group": group, "argparse": argparse_kwargs})


def default_of(cls, name):
    """A field's default as the command line gives it."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_flags(target, cls, names=None, suppress=False):
    """Add the flags of `cls`'s fields (all, or `names`) to a parser or argument group; `suppress` leaves a flag
    not given out of the result (what a study asks to know which training flags the user gave)."""
    for f in dataclasses.fields(cls):
        if (names is not None and f.name not in names) or "help" not in f.metadata:
            continue
        kwargs = dict(f.metadata["argparse"])
        default = default_of(cls, f.name)
        if "action" not in kwargs and "nargs" not in kwargs:
            if f.type in (bool, "bool"):
                kwargs["action"] = "store_true"
            elif isinstance(default, list) or f.type in ("list", list):
                kwargs["nargs"] = "+"
            elif "type" not in kwargs and default is not None and not isinstance(default, str):
                kwargs["type"] = type(default)
        target.add_argument(f"--{f.name}", default=argparse.SUPPRESS if suppress else default,
                            help=f.metadata["help"], **kwargs)


def parser(cls, description, epilog=None, allow_abbrev=True, groups=None, suppress=False):
    """The ArgumentParser of a config class; `groups` is [(title, names)], else the fields' own groups."""
    p = ArgumentParser(description=description, epilog=epilog, allow_abbrev=allow_abbrev)
    if groups is None:
        titles = list(dict.fromkeys(f.metadata.get("group") for f in dataclasses.fields(cls) if "help" in f.metadata))
        groups = [(t, [f.name for f in dataclasses.fields(cls) if f.metadata.get("group") == t]) for t in titles]
    for title, names in groups:
        add_flags(p.add_argument_group(title) if title else p, cls, names, suppress)
    return p


def to_argv(values):
    """{flag: value} as command-line words: lists space-separated, True as the bare flag, False and None left
    out (BooleanOptional flags: '--no-<flag>' for False)."""
    argv = []
    for name, value in values.items():
        if value is None:
            continue
        if value is True:
            argv.append(f"--{name}")
        elif value is False:
            if name in FOLLOW_BNB:
                argv.append(f"--no-{name}")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{name}", *map(str, value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def dry_run_target(value):
    """--dry_run's value: 'here', 'gpu' or 'fsdp:N' (N processes, one GPU each)."""
    if value in ("here", "gpu") or (value.startswith("fsdp:") and value[5:].isdigit() and int(value[5:]) > 1):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: give nothing (this machine), gpu, or fsdp:N with N >= 2 GPUs")


def check_seed(seed, flag_name="--seed"):
    """A seed torch and numpy accept: in [0, 2**32 - 1]."""
    if not 0 <= seed < SEED_RANGE:
        if flag_name == "--seeds":
            raise UserError(f"--seeds: {seed} is outside [0, 2**32 - 1] (torch's and numpy's seed range)")
        raise UserError(f"{flag_name} must be in [0, 2**32 - 1] (torch's and numpy's seed range), got {seed}")


def samples_everything(fraction):
    """Whether --train_sample_fraction keeps every row (at or above 0.99, as the original)."""
    return fraction >= SAMPLE_EVERYTHING


def check_positive(cfg, names):
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")


# ----------------------------------------------------------------------------------------------------
# Training


ORIGINAL = "the original's flags"
PROJECT = "this project's flags"


@dataclass
class TrainingConfig:
    """The training script's flags (the original's first, with its defaults)."""
    pretrained_ckpt: str = flag(ORIGINAL_MODEL, f"base model: a hub id, a local folder or a .gguf file (default: "
                                f"{ORIGINAL_MODEL}, as the original; on a laptop: {EMBEDDED_MODEL}, made by `make "
                                "model`)", ORIGINAL)
    lora_r: int = flag(8, "LoRA rank r", ORIGINAL)
    epochs: int = flag(5, "passes over the training blocks (unless --max_steps)", ORIGINAL)
    dropout: float = flag(0.1, "LoRA dropout", ORIGINAL)
    bnb: bool = flag(False, "load the base in 4-bit (nf4, double quantisation, bf16 compute), QLoRA as the original",
                     ORIGINAL)
    train_sample_fraction: float = flag(0.99, f"below {SAMPLE_EVERYTHING}: a stratified sample of this fraction of "
                                        "each task's training rows", ORIGINAL)
    max_samples: int = flag(5000, "keep at most the first N cleaned rows of each task", ORIGINAL)
    target_modules: list = flag(None, "modules to adapt: names (q_proj v_proj up_proj) or role words resolved for "
                                f"the model's architecture ({' '.join(roles.ROLE_WORDS)}; architectures: "
                                f"{' '.join(roles.ARCHITECTURES)}, others derived from their structure); default: "
                                "peft's choice for the architecture", ORIGINAL, nargs="+", metavar="MODULE")
    tasks: list = flag(["20_Newsgroups_Fixed"], f"one or more of: {' '.join(prompts.TASKS)}", ORIGINAL,
                       metavar="TASK")
    data_root: str = flag("", "folder with disk_datasets/<name> or <task>/<split>.jsonl (also .json .csv .parquet); "
                          "default: the current folder, then the original's /disk_datasets; the hub last", PROJECT)
    output_root: str = flag("experiments", "where experiment folders are written", PROJECT)
    seed: int = flag(DEFAULT_SEED, "seeds sampling, shuffling, LoRA init and training; another than "
                     f"{DEFAULT_SEED} adds -seed<N> to the folder", PROJECT)
    max_steps: int = flag(-1, "optimizer steps to run instead of --epochs (-1: --epochs decide); adds -steps<N> to "
                          "the folder", PROJECT)
    per_device_train_batch_size: int = flag(None, "blocks per device and step (default: 32 with --bnb, else 4, as "
                                            "the original)", PROJECT, type=int)
    gradient_accumulation_steps: int = flag(None, "batches per optimizer step (default: 2 with --bnb, else 16: an "
                                            "effective batch of 64)", PROJECT, type=int)
    learning_rate: float = flag(2e-4, "AdamW learning rate, constant schedule", PROJECT)
    lora_alpha: int = flag(16, "LoRA scale alpha (the update is alpha / r * B A)", PROJECT)
    max_seq_length: int = flag(512, "packing block length in tokens", PROJECT)
    loss_on: str = flag("all", "loss over every token (the original) or only each text's label and EOS", PROJECT,
                        choices=["all", "completion"])
    shorten_to_block: bool = flag(False, "shorten each text in its long field to fit one block (cue and label kept) "
                                  "and pad the last block, instead of the original's stream where a long text "
                                  "continues into the next block", PROJECT)
    dtype: str = flag("auto", "what training computes in; auto: bf16 on GPUs that support it and on CPUs where bf16 "
                      "is measured faster, else fp32 (the frozen base stays fp32 without --bnb, as the original)",
                      PROJECT, choices=["auto", "bf16", "fp32"])
    gradient_checkpointing: bool = flag(None, "recompute each layer's activations in the backward pass (default: on "
                                        "with --bnb, as the original's prepare_model_for_kbit_training; off without)",
                                        PROJECT, action=argparse.BooleanOptionalAction)
    dry_run: str = flag(None, "print the plan and the peak-memory estimate, load no weights, write nothing: for this "
                        "machine (no value), one bf16-capable GPU (`gpu`) or FSDP over N such GPUs (`fsdp:N`)",
                        PROJECT, nargs="?", const="here", type=dry_run_target, metavar="WHERE")
    plan_json: bool = flag(False, "with --dry_run: end the printed plan with the whole plan as one line of JSON, for "
                           "scripts", PROJECT)
    logging_steps: int = flag(None, "log the training loss every N optimizer steps (default: enough for 20 points "
                              "per run)", PROJECT, type=int)
    save_steps: int = flag(2000, "checkpoint every N optimizer steps", PROJECT)
    resume: bool = flag(False, "continue an interrupted run from its newest whole checkpoint (a finished run is left "
                        "as is)", PROJECT)
    overwrite: bool = flag(False, "delete an earlier run in the same folder first", PROJECT)
    trust_remote_code: bool = flag(False, "allow a hub model's own code to run", PROJECT)

    def __post_init__(self):
        """The defaults that follow other flags: the original's batch shape and checkpointing follow --bnb."""
        for name, (with_bnb, without) in FOLLOW_BNB.items():
            if getattr(self, name) is None:
                setattr(self, name, with_bnb if self.bnb else without)

    def check(self):
        """Every value a user can get wrong, checked before anything loads or is written; returns the Tasks."""
        tasks = prompts.check_tasks(self.tasks)
        if self.lora_r <= 0:
            raise UserError(f"--lora_r must be a positive integer, got {self.lora_r}")
        if not 0 < self.train_sample_fraction <= 1:
            raise UserError(f"--train_sample_fraction must be in (0, 1], got {self.train_sample_fraction}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        check_positive(self, ("epochs", "max_samples", "per_device_train_batch_size", "gradient_accumulation_steps",
                              "max_seq_length", "logging_steps", "save_steps", "lora_alpha"))
        if self.max_seq_length == 1:
            raise UserError("--max_seq_length must be at least 2, got 1: in a block of one token nothing is predicted")
        check_seed(self.seed)
        if self.max_steps == 0 or self.max_steps < -1:
            raise UserError(f"--max_steps must be positive or -1, got {self.max_steps}")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.plan_json and not self.dry_run:
            raise UserError("--plan_json goes with --dry_run: it prints the plan, it does not train")
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other: choose one")
        for m in self.target_modules or []:
            if "," in m:
                raise UserError(f"--target_modules {m}: module names are space-separated: --target_modules "
                                f"{' '.join(x for x in m.split(',') if x)}")
        return tasks

    @property
    def sampled(self):
        """Whether each task's rows are a stratified sample (--train_sample_fraction below 0.99)."""
        return not samples_everything(self.train_sample_fraction)


def original_default(name, bnb):
    """The original's value of a training setting (the batch shape follows --bnb): what the identity compares
    with to decide whether a setting shows in the folder's name."""
    if name in FOLLOW_BNB:
        return FOLLOW_BNB[name][0 if bnb else 1]
    return default_of(TrainingConfig, name)


TRAINING_DESCRIPTION = "Train one LoRA adapter on several tasks at once (Qiu et al., arXiv 2402.12233)."
TRAINING_EPILOG = ("Lists are space-separated (--target_modules q_proj v_proj up_proj). Flags may be shortened while "
                   "they stay unambiguous (--epoch 3 --task boolq), as in the original.")


def training_parser(suppress=False):
    return parser(TrainingConfig, TRAINING_DESCRIPTION, TRAINING_EPILOG, suppress=suppress)


def training_config(argv=None):
    """The training flags of `argv` (sys.argv when None), as a TrainingConfig."""
    return TrainingConfig(**vars(training_parser().parse_args(argv)))


def given_training_flags(argv):
    """{flag: value} of the training flags given in `argv` (abbreviations resolved as the training script
    resolves them), nothing filled in."""
    return vars(training_parser(suppress=True).parse_args(argv))


# ----------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvaluationConfig:
    """The evaluation script's flags; None: as the experiment was trained."""
    experiment_dir: str = flag(None, "a training run's folder (it holds assets/); without it, the base model alone "
                               "is evaluated")
    tasks: list = flag(None, "default: the experiment's tasks", nargs="+", metavar="TASK")
    bnb: bool = flag(None, "load the base in 4-bit (default: as trained; --no-bnb: a 16-bit base, the adapter merged)",
                     action=argparse.BooleanOptionalAction)
    pretrained_ckpt: str = flag(None, "base model (default: the experiment's); without --experiment_dir the base "
                                "model alone is evaluated")
    allow_other_base: bool = flag(False, "evaluate the adapter on a --pretrained_ckpt other than the base it was "
                                  "trained on (its metrics go to a folder of their own, named for that base)")
    data_root: str = flag(None, "default: the experiment's (see the training script's --help)")
    output_root: str = flag("experiments", "where a base model's evaluation is written (experiments/<tasks>/base-"
                            "<model>)")
    scoring: str = flag("generate", "generate: greedy decoding, the answer read from the start of the text; rank: "
                        "the label with the highest likelihood (classification tasks)", choices=["generate", "rank"])
    max_test_samples: int = flag(1000, "the first N cleaned evaluation rows")
    batch_size: int = flag(64, "prompts per batch (halved automatically on out-of-memory)")
    max_new_tokens: int = flag(20, "tokens generated per prompt at most")
    max_input_length: int = flag(None, "prompt tokens at most (default: the model's context length minus "
                                 "--max_new_tokens); longer prompts are shortened in their long text field, never in "
                                 "the cue at the end", type=int)
    dtype: str = flag(None, "what the base computes in (default: auto: bf16 on GPUs that support it, fp32 on a CPU, "
                      "whatever the training computed in: every evaluation alike)",
                      choices=["auto", "bf16", "fp16", "fp32"])
    overwrite: bool = flag(False, "redo tasks whose metrics already exist")
    trust_remote_code: bool = flag(None, "allow a hub model's own code to run (default: as trained)",
                                   action="store_true")

    def check(self):
        tasks = prompts.check_tasks(self.tasks)
        check_positive(self, ("max_test_samples", "batch_size", "max_new_tokens", "max_input_length"))
        return tasks


EVALUATION_DESCRIPTION = "Evaluate a trained adapter (or the base model alone) on each task's evaluation split."
EVALUATION_EPILOG = ("Lists are space-separated (--tasks boolq CB). Flags may be shortened while they stay "
                     "unambiguous, as in the original.")
EVALUATION_IN_A_STUDY = ("scoring", "max_test_samples", "batch_size")  # the evaluation flags a study takes


def evaluation_parser():
    return parser(EvaluationConfig, EVALUATION_DESCRIPTION, EVALUATION_EPILOG)


def evaluation_config(argv=None):
    return EvaluationConfig(**vars(evaluation_parser().parse_args(argv)))


def evaluation_default(name):
    return default_of(EvaluationConfig, name)


# ----------------------------------------------------------------------------------------------------
# The study and the report


LAUNCHERS = ("serial", "local", "slurm")
WHERE = "where the runs go"
SLURM = "slurm (with --launcher slurm)"


@dataclass
class StudyConfig:
    """The study's own flags; every other flag is the training script's."""
    settings: list = flag(None, "target-module settings, each one quoted string of module names or role words "
                          f"({' '.join(roles.ROLE_WORDS)}) (default: the four arms 'attention_qv', 'attention_qv "
                          "keys_up', 'attention_qv keys_gate', 'attention_qv values', as the architecture has them)",
                          nargs="+", metavar="SETTING")
    seeds: list = flag([DEFAULT_SEED], "train and evaluate every setting once per seed (the base model once)",
                       type=int, nargs="+", metavar="SEED")
    dry_run: bool = flag(False, "print every run's plan (folder, state, steps, tokens, memory per device, GPUs) and "
                         "the totals; load no weights, write nothing")
    report_only: bool = flag(False, "run nothing: write the report from whatever exists and list what is missing")
    scoring: str = dataclasses.field(default=evaluation_default("scoring"))
    max_test_samples: int = dataclasses.field(default=evaluation_default("max_test_samples"))
    batch_size: int = dataclasses.field(default=evaluation_default("batch_size"))
    launcher: str = flag("serial", "serial: one after another here; local: in parallel here, one run per "
                         "--gpus_per_run GPUs (or --parallel processes on a CPU); slurm: one job array, a task per "
                         "run", WHERE, choices=list(LAUNCHERS))
    gpus_per_run: int = flag(1, "GPUs each run gets (local and slurm; 0 on a cluster without GPUs)", WHERE)
    parallel: int = flag(None, "local without GPUs: runs at once, each with its share of the cores (default: 1)",
                         WHERE, type=int)
    accelerate_config: str = flag(None, "train each run under `accelerate launch --config_file FILE` with "
                                  "--gpus_per_run processes (e.g. accelerate_configs/fsdp2.yaml: FSDP for a model too "
                                  "big for one GPU)", WHERE)
    partition: str = flag(None, "sbatch --partition", SLURM)
    time: int = flag(240, "minutes per run before it is stopped, requeued and resumed", SLURM)
    cpus_per_task: int = flag(None, "sbatch --cpus-per-task", SLURM, type=int)
    mem: str = flag(None, "memory per run: GB, or sbatch's own string such as 64G", SLURM)
    account: str = flag(None, "sbatch --account", SLURM)
    array_parallelism: int = flag(None, "at most this many runs at once", SLURM, type=int)
    sbatch: list = flag([], "any other sbatch parameter, e.g. --sbatch qos=high --sbatch constraint=a100 "
                        "(repeatable)", SLURM, action="append", metavar="KEY=VALUE")

    def check(self):
        """The study's own values, checked before anything is planned; returns the extra sbatch parameters."""
        check_positive(self, ("time", "max_test_samples", "batch_size", "parallel"))
        if self.gpus_per_run < 0 or (self.accelerate_config and self.gpus_per_run < 2):
            raise UserError(f"--gpus_per_run must be 0 or more (2 or more with --accelerate_config), got "
                            f"{self.gpus_per_run}")
        for seed in self.seeds:
            check_seed(seed, "--seeds")
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if self.accelerate_config and not os.path.isfile(self.accelerate_config):
            raise UserError(f"--accelerate_config {self.accelerate_config}: no such file")
        if twice:
            raise UserError(f"--seeds names {' '.join(map(str, twice))} twice: each seed is one run of every setting")
        sbatch = {}
        for kv in self.sbatch:
            if "=" not in kv:
                raise UserError(f"--sbatch {kv}: give KEY=VALUE, e.g. --sbatch qos=high")
            k, v = kv.split("=", 1)
            sbatch[k.strip().lstrip("-").replace("-", "_")] = v
        return sbatch


def study_parser(description, epilog):
    p = ArgumentParser(description=description, epilog=epilog, allow_abbrev=False)
    add_flags(p, StudyConfig, ("settings", "seeds", "dry_run", "report_only"))
    add_flags(p.add_argument_group("evaluation"), EvaluationConfig, EVALUATION_IN_A_STUDY)
    add_flags(p.add_argument_group(WHERE), StudyConfig, [f.name for f in dataclasses.fields(StudyConfig)
                                                         if f.metadata.get("group") == WHERE])
    add_flags(p.add_argument_group(SLURM), StudyConfig, [f.name for f in dataclasses.fields(StudyConfig)
                                                         if f.metadata.get("group") == SLURM])
    return p


@dataclass
class ReportConfig:
    root: str = flag("experiments", "the experiments folder to read (its tasks folders)")
    no_plot: bool = flag(False, "write summary.md only, not summary.png")
