"""keys_values/identity.py and the folder names of experiment/layout.py: the original's name for the original's
settings, a stable suffix for every other recipe setting, every training flag in the identity."""


import pytest

from keys_values import config, identity
from keys_values.experiment import layout


def ident(**changes):
    """The identity of the original's paper run (4-bit, q,v,up on two tasks) with `changes`."""
    args = config.training_config(["--tasks", "20_Newsgroups_Fixed", "boolq", "--bnb"])
    base = identity.training(args, ["q_proj", "v_proj", "up_proj"], "bf16", 1, "d" * 12)
    return {**base, **changes}


def test_the_originals_settings_keep_the_originals_folder_name():
    assert layout.experiment_dir("experiments", ident()) == (
        "experiments/20_Newsgroups_Fixed,boolq/classification-sampleFraction-0.99_epochs-5_rank-8_dropout-0.1-"
        "q_proj,v_proj,up_proj-4bit")
    standard = ident(bnb=False, per_device_train_batch_size=4, gradient_accumulation_steps=16, target_modules=None,
                     tasks=["CB"], train_sample_fraction=0.5, epochs=1, lora_r=4, dropout=0.0)
    assert layout.experiment_dir("e", standard) == "e/CB/classification-sampleFraction-0.5_epochs-1_rank-4_dropout-0.0-standard"
    named = layout.experiment_dir("e", ident(loss_on="completion", shorten_to_block=True, max_steps=3, seed=43))
    assert named.endswith("-q_proj,v_proj,up_proj-loss-completion-shortened-steps3-seed43-4bit")


# every setting that changes the trained adapter, and a value other than the original's
RECIPE_CHANGES = {"model": "SmolLM2-135M-Instruct", "max_samples": 100, "per_device_train_batch_size": 8,
                  "gradient_accumulation_steps": 1, "processes": 2, "learning_rate": 2e-3, "lora_alpha": 32,
                  "max_seq_length": 256, "dtype": "fp32"}


@pytest.mark.parametrize("key,value", RECIPE_CHANGES.items())
def test_every_recipe_setting_changes_the_folder_by_a_stable_suffix(key, value):
    base = layout.folder_name(ident())
    changed = layout.folder_name(ident(**{key: value}))
    assert changed != base and changed.startswith(base[: -len("-4bit")]) and changed.endswith("-4bit")
    assert changed == layout.folder_name(ident(**{key: value}))  # stable
    suffix = changed[len(base) - len("-4bit"): -len("-4bit")]
    assert len(suffix) == len("-h12345678") and identity.hashed_part(ident(**{key: value}))[0] == {key: value}


def test_every_training_setting_is_in_the_identity_and_compared():
    """A reuse check that ignores a recipe setting would reuse a run made another way: each differs."""
    a = ident()
    for key, value in {**RECIPE_CHANGES, "epochs": 3, "lora_r": 4, "dropout": 0.05, "train_sample_fraction": 0.5,
                       "target_modules": ["q_proj"], "bnb": False, "loss_on": "completion", "shorten_to_block": True,
                       "max_steps": 5, "seed": 7, "tasks": ["CB"], "data": "e" * 12}.items():
        assert key in identity.TRAINING
        differ = identity.differences(a, {**a, key: value})
        assert len(differ) == 1 and (key in differ[0] or key == "data"), (key, differ)
    assert identity.differences(a, dict(a)) == []


def test_tasks_of_either_folder_name():
    assert layout.tasks_of_folder("boolq,CB") == ["boolq", "CB"]
    assert layout.tasks_of_folder("['boolq', 'CB']") == ["boolq", "CB"]  # the original's list repr
    assert layout.tasks_of_folder("['broken") == []


def test_the_identity_takes_every_recipe_flag_from_the_command_line():
    """Each flag that changes the trained adapter, given on the command line, is in the identity with its value
    (a flag left out of it would let a run made another way be reused)."""
    given = {"--max_samples": ("max_samples", 100), "--per_device_train_batch_size": ("per_device_train_batch_size", 8),
             "--gradient_accumulation_steps": ("gradient_accumulation_steps", 3), "--learning_rate": ("learning_rate", 1e-3),
             "--lora_alpha": ("lora_alpha", 32), "--max_seq_length": ("max_seq_length", 128), "--epochs": ("epochs", 2),
             "--lora_r": ("lora_r", 4), "--dropout": ("dropout", 0.05), "--train_sample_fraction": ("train_sample_fraction", 0.5),
             "--max_steps": ("max_steps", 7), "--seed": ("seed", 3), "--loss_on": ("loss_on", "completion")}
    argv = ["--tasks", "CB", "--pretrained_ckpt", "some/Model-X", "--shorten_to_block", "--bnb"]
    for flag, (_, value) in given.items():
        argv += [flag, str(value)]
    ident = identity.training(config.training_config(argv), ["q_proj"], "fp32", 2, "f" * 12)
    for flag, (key, value) in given.items():
        assert ident[key] == value, flag
    assert (ident["model"], ident["shorten_to_block"], ident["bnb"], ident["processes"], ident["dtype"], ident["data"],
            ident["target_modules"], ident["tasks"]) == ("Model-X", True, True, 2, "fp32", "f" * 12, ["q_proj"], ["CB"])
    assert set(ident) == set(identity.TRAINING)
