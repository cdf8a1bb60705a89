"""EvaluationPlan: everything one evaluation is, decided before any weight loads: the experiment's record (its
tasks, base model, 4-bit setting and data root are the defaults; a flag on the command line wins; a folder
written by the original code is read from its names), each task's rows, the precision, the prompt budget, the
metrics folder (metrics/ for the default evaluation, metrics-<parts>/ beside it for another) and each task's
evaluation identity. The evaluation script and the study (which tasks are left to do) read this one object."""

import dataclasses
import os
from dataclasses import dataclass

import prompts
from keys_values import data, identity, models, precision
from keys_values.config import EvaluationConfig
from keys_values.experiment import layout, records
from utils import UserError, read_json


@dataclass
class EvaluationPlan:
    config: EvaluationConfig  # the flags, filled from the experiment's record where not given
    given: dict  # of --bnb, --dtype and --data_root, those the command line set apart from the record (they
    # name the metrics folder)
    folder: str  # the experiment folder, or the base model's evaluation folder
    record: dict  # the experiment's record; None for the base model alone
    tasks: list  # prompts.Task
    data: dict  # {task: (examples, source)}
    checkpoint: str  # the base model as from_pretrained loads it
    precision: precision.Precision
    budget: int  # prompt tokens at most
    metrics_folder: str  # metrics or metrics-<parts>
    identities: dict  # {task: identity.evaluation}

    def metrics_path(self, task):
        return layout.metrics_path(self.folder, task, self.metrics_folder)

    def predictions_path(self, task):
        return layout.predictions_path(self.folder, task, self.metrics_folder)

    @property
    def norms_path(self):
        """Where the adapter's norms go (None for the base model alone)."""
        return layout.norms_path(self.folder, self.metrics_folder) if self.record is not None else None

    def pending(self, say=print):
        """The tasks to evaluate: those without metrics in the metrics folder, or whose metrics were made with
        another evaluation identity (which are then redone); one line for each task left as it is."""
        todo, skipped = [], []
        for t in self.tasks:
            path = self.metrics_path(t.name)
            if os.path.isfile(path) and not self.config.overwrite:
                old = read_json(path, "metrics file")
                same, differ = identity.comparable(old.get("identity", {}), self.identities[t.name])
                if same:
                    skipped.append(t.name)
                    continue
                say(f"{t.name}: the metrics in {path} were made with another {', '.join(differ)}; evaluating again")
            todo.append(t)
        if skipped:  # one line, however many tasks
            folder = os.path.join(self.folder, self.metrics_folder)
            say(f"{', '.join(skipped)}: metrics exist in {folder}; skipped (--overwrite redoes them)")
        return todo

    def base_record(self):
        """experiment.json of a base model's evaluation folder."""
        return {"kind": "base", "args": dataclasses.asdict(self.config), "base_checkpoint": self.checkpoint,
                "target_modules": [], "trainable_params": 0, "precision": dataclasses.asdict(self.precision),
                "versions": models.library_versions()}


def resolve_run(cfg):
    """Fill the flags not given from the experiment's record; return (config, given, output folder, record)."""
    given = {k: getattr(cfg, k) for k in ("bnb", "dtype", "data_root") if getattr(cfg, k) is not None}
    if cfg.experiment_dir:
        exp = records.read_experiment(cfg.experiment_dir)
        trained = exp["args"]
        check_base(cfg, exp, given)
        fill = {key: layout.resolve_recorded(cfg.experiment_dir, exp, key) if key in ("pretrained_ckpt", "data_root")
                else trained.get(key) for key in ("tasks", "bnb", "pretrained_ckpt", "data_root", "trust_remote_code")
                if getattr(cfg, key) is None}
        cfg = dataclasses.replace(cfg, **fill)
        given = {k: v for k, v in given.items() if (k in ("dtype", "base") or v != trained.get(k))
                 and not (k == "data_root" and exp.get("layout") == "original")}  # its data root is not known
        if not cfg.tasks:
            raise UserError(f"{cfg.experiment_dir}: its tasks cannot be read from the folder's name; pass --tasks")
        if not cfg.pretrained_ckpt:
            raise UserError(f"{cfg.experiment_dir}: no base model recorded; pass --pretrained_ckpt")
        return cfg, given, cfg.experiment_dir, exp
    if cfg.allow_other_base:
        raise UserError("--allow_other_base is for an adapter (--experiment_dir) evaluated on another base")
    if not cfg.pretrained_ckpt:
        raise UserError("give --experiment_dir (a trained adapter) or --pretrained_ckpt (the base model alone)")
    if not cfg.tasks:
        raise UserError(f"--tasks is needed without --experiment_dir; choose from: {' '.join(prompts.TASKS)}")
    # the base model has no training to be "as": 4-bit and a dtype name its metrics folder, its data does not
    given = {k: v for k, v in given.items() if k != "data_root" and v not in (False, "auto")}
    cfg = dataclasses.replace(cfg, bnb=bool(cfg.bnb), dtype=cfg.dtype or "auto",
                              trust_remote_code=bool(cfg.trust_remote_code))
    return cfg, given, layout.base_dir(cfg.output_root, cfg.tasks, cfg.pretrained_ckpt), None


def check_base(cfg, exp, given):
    """An adapter is evaluated on the base it was trained on (`exp`: its record): another --pretrained_ckpt is one
    line naming both, unless --allow_other_base, which puts that base's label in `given` (its metrics folder and
    identity)."""
    recorded = layout.resolve_recorded(cfg.experiment_dir, exp, "pretrained_ckpt")
    if cfg.pretrained_ckpt is None or recorded is None:
        return
    models.resolve_checkpoint(cfg.pretrained_ckpt)  # a base that is not there is its own line
    if models.same_base(cfg.pretrained_ckpt, recorded):
        return
    if not cfg.allow_other_base:
        raise UserError(f"{cfg.experiment_dir}: its adapter was trained on {recorded}, not on --pretrained_ckpt "
                        f"{cfg.pretrained_ckpt}: leave --pretrained_ckpt out to evaluate it on its own base, or pass "
                        f"--allow_other_base to evaluate it on {cfg.pretrained_ckpt} (into a metrics folder of its own)")
    given["base"] = models.base_label(cfg.pretrained_ckpt)


def prompt_budget(cfg, model_config):
    """Prompt tokens at most: the model's context minus the new tokens, or --max_input_length."""
    budget = models.context_length(model_config) - cfg.max_new_tokens
    return min(budget, cfg.max_input_length or budget)


def plan_evaluation(cfg):
    """The EvaluationPlan of an EvaluationConfig. Reads the record, the data and the model's config; loads no
    weights. Every bad value is one line here."""
    cfg, given, out, exp = resolve_run(cfg)
    tasks = cfg.check()
    cfg = dataclasses.replace(cfg, data_root=cfg.data_root or "", bnb=bool(cfg.bnb), dtype=cfg.dtype or "auto")
    loaded = {t.name: data.load(t, cfg.data_root, t.eval_split, cfg.max_test_samples) for t in tasks}
    ckpt = models.resolve_checkpoint(cfg.pretrained_ckpt)
    model_config = models.load_config(ckpt, cfg.trust_remote_code)
    prec = precision.precision(cfg.dtype, cfg.bnb, cfg.scoring)
    budget = prompt_budget(cfg, model_config)
    ids = {t.name: identity.evaluation(t.scoring(cfg.scoring), cfg.max_test_samples, cfg.max_new_tokens, budget,
                                       prec.bnb, prec.dtype, identity.data_fingerprint({t.name: loaded[t.name][0]}),
                                       given.get("base"))
           for t in tasks}
    return EvaluationPlan(cfg, given, out, exp, tasks, loaded, ckpt, prec, budget, metrics_folder(cfg, given), ids)


def metrics_folder(cfg, given):
    """metrics/ for the default evaluation, metrics-<parts>/ for another (layout.metrics_folder): --bnb, --dtype
    and --data_root count only where `given` holds them (set on the command line apart from the record)."""
    return layout.metrics_folder(cfg.scoring, cfg.max_test_samples, cfg.max_new_tokens, cfg.max_input_length,
                                 given.get("bnb"), given.get("dtype"), given.get("data_root"), given.get("base"))


def pending_tasks(cfg):
    """The tasks an evaluation with these flags would (re)do, decided without loading a model: what the study
    asks before it starts an evaluation."""
    return [t.name for t in plan_evaluation(cfg).pending()]
