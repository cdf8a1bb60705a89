"""The golden regression: a fixed small run on the embedded model in fp32 (CB, 5 steps of LoRA on q, v and up,
the loss on the answer, then 8 rows evaluated by generation and by ranking), its numbers pinned. They were
computed by this project's code before it moved into the keys_values package, and every change since must
compute the same: the loss at each step, the mean training loss, what the adapter changed and the predictions.
In-process (the scripts' main), about half a minute on 2 cores."""

import json
import os

import pytest

import llama2_classification_multi_tasks as train
import llama2_classification_multi_tasks_inference as evaluate
from conftest import MODEL, SAMPLE, only_dir

STEP_LOSSES = [6.54865026473999, 4.832757949829102, 2.1715900897979736, 3.4994072914123535, 1.0973315238952637]
TRAIN_LOSS = 3.6299474239349365
DELTA_FRO_SUM = 52.06642164551223  # the sum over the 90 adapted modules of ||dW||_F
# the hash covers the local base's content (model_content), not its folder's name, since it is known by it
FOLDER = "classification-sampleFraction-0.99_epochs-5_rank-8_dropout-0.1-q_proj,v_proj,up_proj-loss-completion-steps5-" \
         "hd6b8c198-standard"
PREDICTIONS = ["neutral"] * 8
LABELS = ["contradiction", "contradiction", "entailment", "entailment", "entailment", "contradiction", "neutral",
          "neutral"]


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("golden"))
    train.main(["--pretrained_ckpt", MODEL, "--data_root", SAMPLE, "--tasks", "CB", "--target_modules", "q_proj",
                "v_proj", "up_proj", "--max_steps", "5", "--per_device_train_batch_size", "2",
                "--gradient_accumulation_steps", "1", "--max_seq_length", "64", "--loss_on", "completion",
                "--learning_rate", "2e-3", "--max_samples", "40", "--dtype", "fp32", "--logging_steps", "1",
                "--output_root", out])
    exp = only_dir(out)
    evaluate.main(["--experiment_dir", exp, "--max_test_samples", "8", "--max_new_tokens", "4"])
    evaluate.main(["--experiment_dir", exp, "--max_test_samples", "8", "--scoring", "rank"])
    return exp


def rows(exp, folder):
    with open(os.path.join(exp, folder, "CB_predictions.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_the_training_computes_the_pinned_losses(golden):
    assert os.path.basename(golden) == FOLDER
    state = json.load(open(os.path.join(golden, "checkpoint-5", "trainer_state.json")))
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses == pytest.approx(STEP_LOSSES, abs=2e-3)
    assert json.load(open(os.path.join(golden, "experiment.json")))["train_loss"] == pytest.approx(TRAIN_LOSS, abs=1e-3)


def test_the_adapter_changed_the_pinned_amount(golden):
    norms = json.load(open(os.path.join(golden, "metrics-n8-new4", "adapter_norms.json")))["modules"]
    assert len(norms) == 90 and sum(m["delta_fro"] for m in norms) == pytest.approx(DELTA_FRO_SUM, rel=1e-3)


def test_the_evaluations_predict_the_pinned_answers(golden):
    for folder in ("metrics-n8-new4", "metrics-rank-n8"):
        got = rows(golden, folder)
        assert [r["label"] for r in got] == LABELS
        assert [r["prediction"] for r in got] == PREDICTIONS, folder
