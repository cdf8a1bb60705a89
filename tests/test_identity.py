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


def test_the_data_fingerprint_sees_texts_labels_order_and_task():
    """Each thing the training rows are made of changes the fingerprint: a text, a label (relabelled rows are other
    data), the order (the rows are packed in order), the task a row belongs to."""
    import prompts

    def ex(text, label):
        return prompts.Example({"premise": text, "hypothesis": "h"}, label, (label,))

    rows = [ex("a", "entailment"), ex("b", "neutral"), ex("c", "contradiction")]
    base = identity.data_fingerprint({"CB": rows})
    assert identity.data_fingerprint({"CB": list(rows)}) == base  # the same rows: the same data
    changed = {
        "a text": {"CB": [ex("a!", "entailment"), *rows[1:]]},
        "a label": {"CB": [ex("a", "neutral"), *rows[1:]]},
        "the labels swapped": {"CB": [ex("a", "neutral"), ex("b", "entailment"), rows[2]]},
        "the order": {"CB": [rows[1], rows[0], rows[2]]},
        "the task": {"RTE": rows},
        "a row dropped": {"CB": rows[:2]},
    }
    two = identity.data_fingerprint({"CB": rows, "RTE": rows[:1]})
    assert identity.data_fingerprint({"RTE": rows[:1], "CB": rows}) != two, "the tasks' order"
    for what, per_task in changed.items():
        assert identity.data_fingerprint(per_task) != base, what


def test_a_local_base_is_known_by_its_content_in_the_run_identity(tmp_path):
    """Two different bases both saved as `model/` are two identities (and two folders); the same base renamed is one
    identity and one folder; a hub id is known by its name."""
    import shutil

    from conftest import small_llama
    from keys_values import models

    a = small_llama(tmp_path / "a", layers=1, name="model")
    b = small_llama(tmp_path / "b", layers=1, name="model", seed=1)
    renamed = str(tmp_path / "c" / "checkpoint-final")
    shutil.copytree(a, renamed)
    args = config.training_config(["--tasks", "CB"])

    def ident(ckpt):
        content = models.content_fingerprint(ckpt)[:12] if ckpt.startswith("/") else None
        return identity.training({**vars(args), "pretrained_ckpt": ckpt}, ["q_proj"], "fp32", 1, "d", content)

    ia, ib, ic = ident(a), ident(b), ident(renamed)
    assert layout.folder_name(ia) != layout.folder_name(ib)
    assert identity.differences(ia, ib) == [f"the base model's content (fingerprint {ia['model_content']} -> "
                                            f"{ib['model_content']})"]
    assert layout.folder_name(ia) == layout.folder_name(ic) and identity.differences(ia, ic) == []
    hub = ident("NousResearch/Llama-2-7b-hf")
    assert hub["model_content"] is None and hub["model"] == "Llama-2-7b-hf"


def test_a_local_copy_of_the_originals_model_keeps_the_originals_folder_name(tmp_path):
    args = config.training_config([])
    a = {**vars(args), "pretrained_ckpt": str(tmp_path / "Llama-2-7b-hf")}
    ident = identity.training(a, ["q_proj", "v_proj"], "bf16", 1, "d", "0123456789ab")
    assert "-h" not in layout.folder_name(ident)  # the original's name; its content still in the identity
    other = identity.training(a, ["q_proj", "v_proj"], "bf16", 1, "d", "ba9876543210")
    assert identity.differences(ident, other) == ["the base model's content (fingerprint 0123456789ab -> ba9876543210)"]
