"""The editing script's flags, each defined once (a dataclass field with its default and help text), and the
checks of every value a user can get wrong, before anything loads.

The defaults are the fine-tuning baseline of the editing literature (ROME's FT and EasyEdit's FT: Adam, 25 steps,
learning rate 5e-4, a step skipped and the edit stopped once the loss is below 1e-2, one layer), on the layer about
two-thirds down the model (EasyEdit edits Llama-2-7B's layer 21 of 32), every key role of the architecture against
its values on the same edits."""

import argparse
import math
import os
from dataclasses import dataclass

from keys_values import config
from keys_values.config import LAUNCHERS, flag
from utils import UserError

BUNDLED_EDITS = os.path.join("sample_data", "edits", "counterfact.json")  # written by scripts/make_sample_data.py
METHODS = ("ft", "lora")
OBJECTIVES = ("last", "target")  # FT-L: the last prompt position predicts the target; FT-M: teacher forcing
OBJECTIVE_NAMES = {"last": "FT-L", "target": "FT-M"}
EDIT = "the edits"
HOW = "how each edit is made"
WHERE = "where the runs go"


def layer_list(value):
    """--layers' values: layer indices (0 = the first decoder layer)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a layer index (0, 1, ...)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: layer indices start at 0")
    return n


@dataclass
class EditingConfig:
    """The editing script's flags."""
    pretrained_ckpt: str = flag(config.EMBEDDED_MODEL, "base model: a hub id, a local folder or a .gguf file", EDIT)
    data: str = flag(BUNDLED_EDITS, "edit requests: a .json or .jsonl file in ROME's CounterFact format "
                     "(requested_rewrite ...), EasyEdit's flat CounterFact (prompt, subject, target_new, ground_truth, "
                     "rephrase_prompt, locality_prompt, locality_ground_truth) or MEND's zsRE (src, alt, answers, "
                     "rephrase, loc, loc_ans), told apart by their fields; or a hub dataset id in one of these formats "
                     "(default: the project's own edits, sample_data/edits/counterfact.json)", EDIT)
    max_edits: int = flag(None, "edits per seed: a sample of this many records, drawn with the seed (default: every "
                          "record)", EDIT, type=int)
    seeds: list = flag([config.DEFAULT_SEED], "one run of every arm per seed; each seed draws its own sample of "
                       "--max_edits edits (the pooled tests treat seeds as strata)", EDIT, type=int, nargs="+",
                       metavar="SEED")
    target_modules: list = flag(None, "the arms compared, one word or quoted group each: role words (keys keys_up "
                                "keys_gate values) resolved for the architecture, or module names (default: every key "
                                "role of the architecture and the values: keys_up keys_gate values where the "
                                "feed-forward is gated, keys values where it is not)", HOW, nargs="+", metavar="ARM")
    layers: list = flag(None, "decoder layers edited, one run each (default: the layer about two-thirds down, "
                        "int(2/3 x layers): 21 of Llama-2-7B's 32, 20 of the embedded model's 30)", HOW,
                        type=layer_list, nargs="+", metavar="LAYER")
    method: str = flag("ft", "ft: the chosen weights themselves (the editing literature's fine-tuning baseline); lora: a "
                       "LoRA adapter of rank --lora_r on them", HOW, choices=list(METHODS))
    objective: str = flag("last", "last (FT-L): the prompt's last position predicts every target token; target (FT-M): "
                          "teacher forcing of the target after the prompt", HOW, choices=list(OBJECTIVES))
    steps: int = flag(25, "optimizer steps per edit at most (Adam)", HOW)
    learning_rate: float = flag(5e-4, "Adam's learning rate", HOW)
    early_stop_loss: float = flag(1e-2, "an edit stops once its loss is below this (no step is taken then)", HOW)
    norm_constraint: float = flag(None, "keep each edited weight within w0 +- c * rms(W0) of its value before the edit "
                                  "(L-infinity, scaled per matrix by its root-mean-square entry, so keys and values get "
                                  "the same relative budget; ROME's absolute eps e on a matrix is c = e / rms(W0)); "
                                  "--method ft only (default: no constraint)", HOW, type=float)
    lora_r: int = flag(8, "LoRA rank (--method lora)", HOW)
    lora_alpha: int = flag(16, "LoRA scale alpha (--method lora)", HOW)
    sequential: bool = flag(False, "apply the edits one after another, without restoring the weights, and evaluate all "
                            "of them at the end (the lifelong setting, where edits interfere); default: each edit from "
                            "the unedited model", HOW)
    fluency: bool = flag(False, "also generate 50 tokens after each rewrite and paraphrase prompt and score their "
                         "n-gram entropy (ROME's fluency), before and after", HOW)
    dtype: str = flag("fp32", "what the model computes in", HOW, choices=["fp32", "bf16"])
    edits_at_once: int = flag(16, "edits made at once, each with its own change of the weights, its own loss, Adam "
                              "state and early stop, so that the numbers are those of one edit alone (faster, no other "
                              "effect; --sequential makes one at a time)", HOW)
    output_root: str = flag("experiments", "experiments/knowledge_editing/<model>/<edits>/<arm run>/ and the "
                            "comparison summary.md, summary.png beside the arms' folders", WHERE)
    launcher: str = flag("serial", "serial: one run after another in this process (the model loaded once); local: the "
                         "runs in parallel here, one per --gpus_per_run GPUs or --parallel CPU processes; slurm: one "
                         "job array, a task per run (arm, layer, seed)", WHERE, choices=list(LAUNCHERS))
    gpus_per_run: int = flag(1, "GPUs each run gets (local and slurm)", WHERE)
    parallel: int = flag(None, "local without GPUs: runs at once (default: 1)", WHERE, type=int)
    partition: str = flag(None, "sbatch --partition (slurm)", WHERE)
    time: int = flag(240, "minutes per run (slurm)", WHERE)
    cpus_per_task: int = flag(None, "sbatch --cpus-per-task (slurm)", WHERE, type=int)
    mem: str = flag(None, "memory per run (slurm): GB, or sbatch's own string such as 64G", WHERE)
    account: str = flag(None, "sbatch --account (slurm)", WHERE)
    sbatch: list = flag([], "any other sbatch parameter KEY=VALUE (repeatable)", WHERE, action="append",
                        metavar="KEY=VALUE")
    dry_run: bool = flag(False, "print the plan (edits, arms, layers, parameters updated, folders, state) and the peak "
                         "memory per run; load no weights, write nothing", WHERE)
    report_only: bool = flag(False, "run nothing: write the comparison from whatever exists", WHERE)
    overwrite: bool = flag(False, "delete finished or interrupted runs of these settings first", WHERE)
    trust_remote_code: bool = flag(False, "allow a hub model's own code to run", WHERE)

    def check(self):
        """Every value a user can get wrong, told in one line before anything loads; returns the sbatch extras."""
        config.check_positive(self, ("max_edits", "steps", "lora_r", "lora_alpha", "time", "parallel", "edits_at_once"))
        for name in ("learning_rate", "early_stop_loss"):
            value = getattr(self, name)
            if not value > 0 or not math.isfinite(value):
                raise UserError(f"--{name} must be positive, got {value}")
        if self.norm_constraint is not None:
            if not self.norm_constraint > 0 or not math.isfinite(self.norm_constraint):
                raise UserError(f"--norm_constraint must be positive, got {self.norm_constraint}")
            if self.method != "ft":
                raise UserError(f"--norm_constraint bounds the edited weights themselves: --method ft, not "
                                f"{self.method}")
        for seed in self.seeds:
            config.check_seed(seed, "--seeds")
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if twice:
            raise UserError(f"--seeds names {' '.join(map(str, twice))} twice: each seed is one sample of edits")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise UserError(f"--layers names a layer twice: {' '.join(map(str, self.layers))}")
        if self.target_modules is not None:
            arms = [" ".join(a.replace(",", " ").split()) for a in self.target_modules]
            if any(not a for a in arms):
                raise UserError("--target_modules: an empty arm")
            twice = sorted({a for a in arms if arms.count(a) > 1})
            if twice:
                raise UserError(f"--target_modules names the arm {twice[0]!r} twice")
        if self.gpus_per_run < 0:
            raise UserError(f"--gpus_per_run must be 0 or more, got {self.gpus_per_run}")
        extra = {}
        for kv in self.sbatch:
            if "=" not in kv:
                raise UserError(f"--sbatch {kv}: give KEY=VALUE, e.g. --sbatch qos=high")
            k, v = kv.split("=", 1)
            extra[k.strip().lstrip("-").replace("-", "_")] = v
        return extra

    @property
    def arms(self):
        """The arms as given: each a list of words (None: the default arms of the architecture)."""
        if self.target_modules is None:
            return None
        return [a.replace(",", " ").split() for a in self.target_modules]


DESCRIPTION = ("Edit facts in one layer's feed-forward keys or values and compare them on the same edits, as the "
               "editing literature measures (ROME's efficacy, paraphrase, neighbourhood and Score; EasyEdit's "
               "accuracies and locality).")
EPILOG = ("Each arm is one word or one quoted group of words: --target_modules keys_up keys_gate values, or "
          "--target_modules 'up_proj gate_proj' down_proj.")


def parser():
    return config.parser(EditingConfig, DESCRIPTION, EPILOG, allow_abbrev=False)


def editing_config(argv=None):
    return EditingConfig(**vars(parser().parse_args(argv)))


def single_run_argv(cfg, arm, layer, seed):
    """The editing script's arguments for one run (one arm, one layer, one seed) of these flags, with the serial
    launcher: what a launcher gives each run."""
    values = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__
              if f not in ("target_modules", "layers", "seeds", "launcher", "dry_run", "report_only", "sbatch",
                           "gpus_per_run", "parallel", "partition", "time", "cpus_per_task", "mem", "account")}
    argv = [a for a in config.to_argv(values) if a not in ("--overwrite",)]
    return argv + ["--target_modules", " ".join(arm), "--layers", str(layer), "--seeds", str(seed)]
