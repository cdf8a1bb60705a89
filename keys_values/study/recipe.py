"""The training flags of a study's runs: every flag not the study's own goes to the training script as it is
(a flag it does not know is an error); with no base model given, or the embedded one, the small study's recipe
(SMALL_STUDY) fills the training flags not given, so that it fits a laptop CPU; any other base model gets the
training script's own defaults, the original's. And the settings, as lists of words checked on the model."""

import os

from keys_values import arms, config, roles
from keys_values.config import StudyConfig
from keys_values.experiment import layout
from utils import UserError

# the small study's training recipe, for the embedded model only: the loss on the answer, a higher learning
# rate and short blocks give a real learning signal in minutes on a CPU
SMALL_STUDY = {"pretrained_ckpt": config.EMBEDDED_MODEL, "data_root": "sample_data", "tasks": ["boolq", "COPA", "CB"],
               "epochs": 3, "loss_on": "completion", "learning_rate": "2e-3", "max_seq_length": 256,
               "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}
SET_BY_THE_STUDY = {"target_modules": "--settings", "seed": "--seeds", "resume": "nothing (the study resumes by "
                    "itself)", "overwrite": "nothing (delete a run's folder to train it again)",
                    "dry_run": "the study's own --dry_run"}
NOT_FOR_THE_STUDY = {"plan_json": "study.py has no --plan_json: its --dry_run prints a table of every run"}


def is_embedded(ckpt):
    return os.path.normpath(ckpt) == os.path.normpath(config.EMBEDDED_MODEL) or \
        os.path.normpath(os.path.abspath(ckpt)) == os.path.normpath(os.path.abspath(config.EMBEDDED_MODEL))


def parse(parser, argv=None):
    """(the study's own flags as a StudyConfig, the training script's arguments, the recipe in words)."""
    own, rest = parser.parse_known_args(argv)
    own = StudyConfig(**vars(own))
    given = config.given_training_flags(rest)
    for dest, instead in SET_BY_THE_STUDY.items():
        if dest in given:
            raise UserError(f"study.py sets --{dest} itself: use {instead}")
    for dest, why in NOT_FOR_THE_STUDY.items():
        if dest in given:
            raise UserError(why)
    small = "pretrained_ckpt" not in given or is_embedded(given["pretrained_ckpt"])
    recipe = config.to_argv({k: v for k, v in SMALL_STUDY.items() if k not in given}) if small else []
    argv = recipe + rest
    cfg = config.training_config(argv)
    cfg.check()  # a bad training flag fails here, before any run
    layout.check_output_root(cfg.output_root)
    why = ("the small study's recipe (SMALL_STUDY in keys_values/study/recipe.py) for the embedded model, where not "
           "given" if small else "the training script's defaults (the original's), where not given")
    return own, argv, why


def settings_of(own, model):
    """The settings as lists of words, checked against the model (roles.resolve); an unquoted list (every
    setting one module name) is caught. The default: arms.study_arms of the architecture."""
    if own.settings is None:
        found = arms.study_arms(model)
        for arm, note in found:
            if note:
                print(f"settings: {note}")
        return [arm.split() for arm, _ in found if arm]
    for s in own.settings:  # the training script's spelling, space-separated, and no other
        if "," in s:
            raise UserError(f"--settings {s!r}: module names are space-separated, as --target_modules takes them: "
                            f"--settings '{' '.join(x for x in s.replace(',', ' ').split())}'")
    words = [s.split() for s in own.settings]
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
