"""What a finished run leaves, each file written whole or not at all: the original's files (the adapter and
the tokenizer in assets/, the parameter-count file, results.pkl) plus results.json and experiment.json, written
last: it marks the run finished."""

import math
import os
import pickle
import shutil

from keys_values import models
from keys_values.experiment import layout
from utils import UserError, atomic_write, follow_umask, write_json


def save_experiment(trainer, tokenizer, args, out, record, loss, adapter=None):
    """The original's files (adapter and tokenizer in assets/, the parameter-count file, results.pkl)
    plus results.json and experiment.json (written last: it marks the run finished), each written whole or not
    at all. `loss` is the train loss: the mean over all of the run's steps, a resumed run's included
    (train_loss_of)."""
    step = trainer.state.global_step
    trainable, total = record["trainable_params"], record["total_params"]
    atomic_write(layout.counts_file(out, trainable, total), f"{trainable}\n{total}\n{trainable / total}\n")
    tmp_assets = os.path.join(out, ".assets-tmp")
    shutil.rmtree(tmp_assets, ignore_errors=True)
    trainer.model.save_pretrained(tmp_assets, state_dict=adapter)  # adapter: gathered from FSDP's shards, or None
    tokenizer.save_pretrained(tmp_assets)
    follow_umask(tmp_assets)
    check_saved_adapter(tmp_assets, record["trainable_params"])
    shutil.rmtree(layout.assets(out), ignore_errors=True)
    os.replace(tmp_assets, layout.assets(out))
    epochs = round(step / record["steps_per_epoch"], 4)
    atomic_write(os.path.join(out, layout.RESULTS_PKL), pickle.dumps([args.epochs, args.lora_r, args.dropout, loss]))
    write_json(os.path.join(out, layout.RESULTS_JSON), {"epochs": args.epochs, "epochs_trained": epochs,
                                                         "lora_r": args.lora_r, "dropout": args.dropout,
                                                         "train_loss": loss, "global_step": step})
    write_json(layout.record_path(out), {**record, "train_loss": loss, "global_step": step, "epochs_trained": epochs,
                                         "versions": models.library_versions()})


def check_saved_adapter(assets, trainable):
    """The adapter written is whole: its tensors hold as many values as the run trained (an empty adapter is
    what some sharded set-ups save without a word)."""
    from safetensors import safe_open

    path = os.path.join(assets, layout.ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        raise UserError(f"saving the adapter failed: {path} was not written")
    with safe_open(path, "pt") as f:
        values = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    if values != trainable:
        raise UserError(f"the saved adapter holds {values:,} values, not the {trainable:,} trained: not saved as "
                        "finished; the checkpoints are kept (--resume)")


