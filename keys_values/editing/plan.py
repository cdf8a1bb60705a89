"""EditPlan: everything a knowledge-editing run is, decided before any weight loads: the edit requests (each
seed's sample), the layers, the arms (role words or module names, resolved for the architecture through roles.py,
in each layer), and for every (seed, layer, arm) its identity, folder, state, the weights it changes and how many
numbers those are, and the peak memory it needs."""

import os
from dataclasses import dataclass

from keys_values import identity, memory, models, roles, structure
from keys_values.editing import records
from keys_values.editing.config import OBJECTIVE_NAMES
from keys_values.experiment import layout
from utils import UserError, read_json

GATED_KEYS = ("keys_up", "keys_gate")


@dataclass
class EditRun:
    """One run: one arm edited in one layer on one seed's edits."""
    arm: str  # its name: the role words or module names, '+'-joined
    words: list  # as given to --target_modules
    layer: int
    seed: int
    edits: list  # EditRequest
    paths: list  # the full paths of the weights it changes
    roles: dict  # {path: role}
    updated: int  # numbers an edit may change: the weights' (ft) or the adapter's (lora)
    identity: dict
    folder: str
    state: str  # new, partial, finished, or 'other settings'
    memory_bytes: int

    @property
    def name(self):
        return f"{self.arm} layer {self.layer} seed {self.seed}"


def default_layer(n_layers):
    """The layer the editing literature edits, about two-thirds down: int(2/3 x layers)."""
    return min(n_layers - 1, int(n_layers * 2 / 3))


def default_arms(model):
    """Every key role of the architecture and the values: keys_up, keys_gate and values where the feed-forward is
    gated with separate gate and up layers, else keys and values."""
    kinds, _ = roles.kinds_of(model)
    model_type = getattr(model.config, "model_type", None)
    gated = not roles.half_problem("keys_up", model_type, kinds) and not roles.half_problem("keys_gate", model_type,
                                                                                             kinds)
    return [[w] for w in (*GATED_KEYS, "values")] if gated else [["keys"], ["values"]]


def arm_name(words):
    return "+".join(w.replace(".", "_") for w in words)


def resolve_arm(words, model, layer, dropout=None):
    """([path], {path: role}) of an arm's weights in one layer (roles.resolve, the paths of that layer)."""
    res = roles.resolve(words, model, dropout=dropout)
    paths = [(p, r) for p, r in res.paths if structure.layer_of(p) == layer]
    if not paths:
        raise UserError(f"--target_modules {' '.join(words)}: nothing of it in layer {layer}")
    return [p for p, _ in paths], dict(paths)


def numel(model, path):
    try:
        return model.get_submodule(path).weight.numel()
    except AttributeError:
        parent, _, leaf = path.rpartition(".")
        return getattr(model.get_submodule(parent), leaf).numel()


def lora_numbers(part, r):
    """The numbers of a rank-r LoRA adapter on one module: r x (in + out)."""
    if part.parameter:
        raise UserError(f"--method lora: {part.path} is an expert parameter, LoRA here edits modules only: use "
                        "--method ft")
    return r * (part.size[0] + part.size[1])


def edit_memory(weights, updated, dtype, lora):
    """Peak bytes of one editing run, from the config alone: the model's weights in their dtype, and for each
    number an edit may change its fp32 gradient and Adam's two moments, plus (ft) the copy of the weights before
    the edit; the activations of a dozen short prompts are small beside these, covered by 10% more. On a GPU,
    CUDA's own runtime adds about 1 GiB."""
    size = 2 if dtype == "bf16" else 4
    total = (weights[0] + weights[1]) * size + updated * (3 * 4 + (0 if lora else size))
    return int(total * 1.1)


class EditPlan:
    """Every run of an editing command. `cfg` is the EditingConfig (checked here)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.sbatch = cfg.check()
        layout.check_output_root(cfg.output_root)
        self.edits, self.format, self.where = records.load(cfg.data)
        if len(cfg.seeds) > 1 and (not cfg.max_edits or cfg.max_edits >= len(self.edits)):
            raise UserError(f"--seeds {' '.join(map(str, cfg.seeds))}: each seed draws its own sample of --max_edits "
                            f"edits, but every seed would take all {len(self.edits)} records: give --max_edits below "
                            f"{len(self.edits)}")
        self.checkpoint = models.resolve_checkpoint(cfg.pretrained_ckpt)
        self.model_config = models.load_config(self.checkpoint, cfg.trust_remote_code)
        self.model = models.meta_model(self.model_config, cfg.trust_remote_code)
        blocks = structure.blocks_of(self.model)
        n_layers = len(self.model.get_submodule(blocks)) if blocks else 0
        self.layers = cfg.layers if cfg.layers is not None else [default_layer(n_layers)]
        for layer in self.layers:
            if not 0 <= layer < n_layers:
                raise UserError(f"--layers {layer}: the model has layers 0 to {n_layers - 1}")
        self.arms = cfg.arms or default_arms(self.model)
        self.model_name = identity.model_name(cfg.pretrained_ckpt)
        name = os.path.splitext(os.path.basename(cfg.data.rstrip("/")))[0] if os.path.exists(cfg.data) else \
            cfg.data.replace("/", "_")
        self.edits_name = f"{name}-{identity.fingerprint([e.to_json() for e in self.edits], 6)}"
        self.folder = layout.edits_dir(cfg.output_root, self.model_name, self.edits_name)
        weights = memory.weight_counts(self.model)
        parts = {p.path: p for p in structure.parts(self.model)}
        self.runs = []
        for seed in cfg.seeds:
            sample = records.sample(self.edits, cfg.max_edits, seed)
            data = identity.fingerprint([e.to_json() for e in sample], 12)
            for layer in self.layers:
                for words in self.arms:
                    paths, path_roles = resolve_arm(words, self.model, layer)
                    updated = sum(lora_numbers(parts[p], cfg.lora_r) if cfg.method == "lora" else
                                  numel(self.model, p) for p in paths)
                    ident = identity.editing(cfg, self.model_name, self.edits_name, layer, arm_name(words),
                                             [p.split(".")[-1] for p in paths], seed, data)
                    folder = os.path.join(self.folder, layout.edit_run_name(ident))
                    self.runs.append(EditRun(arm_name(words), words, layer, seed, sample, paths, path_roles, updated,
                                             ident, folder, run_state(folder, ident),
                                             edit_memory(weights, updated, cfg.dtype, cfg.method == "lora")))

    def print(self):
        cfg = self.cfg
        print(f"edits: {len(self.edits)} records of {records.FORMAT_NAMES[self.format]} from {self.where}; "
              f"{'all' if not cfg.max_edits or cfg.max_edits >= len(self.edits) else cfg.max_edits} a seed, seeds "
              f"{' '.join(map(str, cfg.seeds))}")
        print(f"model: {self.checkpoint} ({len(self.model.get_submodule(structure.blocks_of(self.model)))} layers); "
              f"layers edited: {' '.join(map(str, self.layers))}"
              + ("" if cfg.layers is not None else " (about two-thirds down, the editing literature's)"))
        print(f"method {cfg.method}, objective {cfg.objective} ({OBJECTIVE_NAMES[cfg.objective]}), {cfg.steps} steps "
              f"at most, learning rate {cfg.learning_rate:g}, stop below loss {cfg.early_stop_loss:g}"
              + (f", L-inf bound {cfg.norm_constraint:g} x rms(W0)" if cfg.norm_constraint else "")
              + (", sequential" if cfg.sequential else ", each edit from the unedited model"))
        print(f"{'arm':<20}{'layer':>6}{'seed':>6}  {'state':<15}{'updated':>12}{'memory':>11}  weights")
        for r in self.runs:
            names = ", ".join(f"{p} ({r.roles[p]})" for p in r.paths)
            print(f"{r.arm:<20}{r.layer:>6}{r.seed:>6}  {r.state:<15}{r.updated:>12,}{r.memory_bytes / memory.GIB:>7.2f} "
                  f"GiB  {names}")
        print(f"runs: {len(self.runs)} in {self.folder}")


def run_state(folder, ident):
    """new, partial (started, not finished), finished, or 'other settings' (a run of another identity there)."""
    if not os.path.isdir(folder):
        return "new"
    started = layout.identity_path(folder)
    if os.path.isfile(started):
        recorded = read_json(started, "run identity").get("identity", {})
        if recorded != ident:
            return "other settings"
    if os.path.isfile(os.path.join(folder, layout.EDIT_METRICS)):
        return "finished"
    return "partial" if os.listdir(folder) else "new"
