"""Evaluation's pieces on small stand-ins: ranking with a shared prefix against scoring every candidate alone,
candidate tokens, batches across tasks, halving the batch on out-of-memory, and when metrics are redone."""

import argparse
import os

import pytest
import torch

import prompts
import utils
from conftest import MODEL, small_llama
from keys_values import config, data, models, precision
from keys_values.evaluation import generate, rank, score
from keys_values.evaluation.plan import EvaluationPlan, metrics_folder, resolve_run
from keys_values.experiment import layout


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = small_llama(tmp_path_factory.mktemp("m"), layers=2)
    model = models.load_base(folder, precision.precision("fp32", False, "rank"), precision.placement(0, False)).eval()
    return model, models.load_tokenizer(folder)


def alone(model, shared, cont):
    """Log-probability of `cont` after `shared`, from a plain forward pass of the whole sequence."""
    ids = torch.tensor([shared + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logp[len(shared) - 1 + j, t].item() for j, t in enumerate(cont))


def test_rank_with_a_shared_prefix_equals_scoring_each_candidate_alone(small):
    model, tok = small
    task = prompts.TASKS["CB"]
    options = prompts.choices(task)
    fields = [{"premise": "Anna confirmed that the bridge is old" + " really" * k, "hypothesis": "It is old."}
              for k in range(5)]
    items = [rank.candidates(tok, prompts.prompt_text(task, f), tok(prompts.prompt_text(task, f))["input_ids"],
                                  options) for f in fields]
    assert all(len(conts) == 3 and len({len(c) for c in conts}) > 1 for _, conts in items)  # uneven candidates
    scores = rank.rank(model, items, tok.pad_token_id)  # one batch: prompts of five lengths, padded
    for (shared, conts), s in zip(items, scores):
        expected = [alone(model, shared, c) for c in conts]
        assert s == pytest.approx(expected, abs=1e-4)


def test_candidates_are_the_tokens_of_prompt_and_label_together():
    tok = models.load_tokenizer(MODEL)
    prompt = "### Sentence:I like rockets ### Class:"
    ids = tok(prompt)["input_ids"]
    shared, conts = rank.candidates(tok, prompt, ids, ["sci.space", "rec.autos"])
    for label, cont in zip(["sci.space", "rec.autos"], conts):
        assert shared + cont == tok(prompt + label)["input_ids"] + [tok.eos_token_id]
    assert shared == ids  # this tokenizer splits at the colon: the whole prompt is shared
    prompt = "### Word:the"  # 'the' + 'ir' is one token 'their': the shared prefix stops before 'the'
    ids = tok(prompt)["input_ids"]
    shared, conts = rank.candidates(tok, prompt, ids, ["ir", "re"])
    for label, cont in zip(["ir", "re"], conts):
        assert shared + cont == tok(prompt + label)["input_ids"] + [tok.eos_token_id]
    assert shared == ids[:-1]


def test_ranked_tasks_share_batches(small, monkeypatch):
    model, tok = small
    seen = []
    real = rank.rank
    monkeypatch.setattr(rank, "rank", lambda m, items, pad: seen.append(len(items)) or real(m, items, pad))
    jobs = {}
    for name in ("CB", "RTE"):
        task = prompts.TASKS[name]
        options = prompts.choices(task)
        fields = [{"premise": f"P {i}.", "hypothesis": "H."} for i in range(5)]
        jobs[name] = {"options": options, "items": [
            rank.candidates(tok, prompts.prompt_text(task, f), tok(prompts.prompt_text(task, f))["input_ids"],
                                 options) for f in fields]}
    out = rank.rank_tasks(model, tok, jobs, argparse.Namespace(batch_size=64))
    assert seen == [10]  # both tasks' prompts in one batch
    assert [len(out[n]) for n in jobs] == [5, 5] and all(p in jobs["CB"]["options"] for _, p, _ in out["CB"])


class RecordingBar:
    """A stand-in for tqdm that records what the bar shows each time it is drawn: (units done, postfix)."""

    def __init__(self, total, **kwargs):
        self.total, self.n, self.postfix, self.moves = total, 0, "", []
        RecordingBar.last = self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text
        if refresh:
            self.moves.append((self.n, self.postfix))

    def update(self, units):
        self.n += units
        self.moves.append((self.n, self.postfix))


def test_progress_counts_work_and_moves_within_a_long_batch(monkeypatch):
    """The bar's total is the items' work (tokens), its postfix the examples done; a batch's ticks move it while
    the batch runs, never past the batch's share; a batch halved after running out of memory takes back what it
    had ticked."""
    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    items = [40, 10, 10]  # work per item; batch size 2: [40, 10] then [10]
    tried = []

    def fn(chunk, tick):
        tried.append(list(chunk))
        for _ in range(3):
            tick(15)  # 45 ticked of a 50-unit batch; the last 15 of [10] cut to its 10
        if len(tried) == 1:
            raise torch.OutOfMemoryError("stand-in")
        return chunk

    out = generate.batched(fn, items, 2, "CB", work=lambda x: x)
    bar = RecordingBar.last
    assert out == items and tried == [[40, 10], [40], [10], [10]] and bar.total == 60
    assert bar.moves == [(0, "0/3 ex"), (15, "0/3 ex"), (30, "0/3 ex"), (45, "0/3 ex"), (0, "0/3 ex"),
                         (15, "0/3 ex"), (30, "0/3 ex"), (40, "0/3 ex"), (40, "1/3 ex"),  # [40] done, drawn at once
                         (50, "1/3 ex"), (50, "2/3 ex"), (60, "2/3 ex"), (60, "3/3 ex")]


def test_generation_reports_each_step_to_the_bar(tmp_path):
    """The generation's stopping criterion ticks the prompts' tokens after the prefill, then one token per prompt
    per step: a batch of two prompts (5 and 3 tokens) over 4 new tokens ticks 8 + 2, then 2, 2, 2."""
    from tiny_models import tiny_model

    tok = models.load_tokenizer(MODEL)
    ticks = []
    out = generate.generate(tiny_model("llama"), tok, [[5] * 5, [6] * 3], 4, ticks.append)
    assert len(out) == 2 and ticks[:4] == [10, 2, 2, 2] and len(ticks) == 4


class OutOfMemoryAbove:
    """A stand-in model whose generate raises torch.OutOfMemoryError for a batch above `limit` prompts (and
    for the prompt of `fails_alone` tokens whatever the batch), else answers 'true'."""

    def __init__(self, tok, limit, fails_alone=None):
        self.tok, self.limit, self.fails_alone, self.batches = tok, limit, fails_alone, []
        self.device = torch.device("cpu")

    def generate(self, input_ids, attention_mask, generation_config, **kwargs):
        self.batches.append(len(input_ids))
        lengths = attention_mask.sum(1).tolist()
        if len(input_ids) > self.limit or self.fails_alone in lengths:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        answer = torch.tensor(self.tok("true", add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id])
        return torch.cat([input_ids, answer.expand(len(input_ids), -1)], dim=1)


@pytest.mark.timeout(60)  # a batch that never shrinks would retry forever
def test_out_of_memory_halves_the_batch_and_books_what_fails_alone():
    tok = models.load_tokenizer(MODEL)
    prompt_ids = [[5] * n for n in range(13, 23)]  # 10 prompts of 13..22 tokens: of like lengths, one batch
    model = OutOfMemoryAbove(tok, limit=3, fails_alone=17)
    args = argparse.Namespace(batch_size=8, max_new_tokens=4)
    out = generate.generate_task(model, tok, prompts.TASKS["boolq"], prompt_ids, ["true", "false"], args)
    assert model.batches[:3] == [8, 4, 2]  # halved until it fits, then kept at that size
    assert max(model.batches[3:]) <= 2
    assert [o is None for o in out] == [n == 17 for n in range(13, 23)]  # only the prompt that fails alone is lost
    assert all(o[:2] == ("true", "true") for o in out if o is not None)


def test_metrics_made_with_other_settings_are_redone(tmp_path, capsys):
    """A task's metrics are reused only for the same evaluation identity: scoring, generation length, rows,
    examples (their fingerprint), prompt budget and precision."""
    from keys_values import identity

    task = prompts.TASKS["CB"]
    out = str(tmp_path / "base")
    ident = identity.evaluation("generate", 1000, 20, 8172, False, "fp32", "abc")

    def pending(ids, folder="metrics", overwrite=False):
        return EvaluationPlan(config.EvaluationConfig(overwrite=overwrite), {}, out, None, [task], {}, MODEL, None,
                              8172, folder, {"CB": ids}).pending()

    assert pending(ident) == [task]
    utils.write_json(layout.metrics_path(out, "CB"), {"accuracy": 0.5, "identity": ident})
    assert pending(ident) == []
    assert "CB: metrics exist" in capsys.readouterr().out
    for change in ({"scoring": "rank"}, {"max_new_tokens": 5}, {"data": "other"}, {"max_test_samples": 10},
                   {"prompt_budget": 64}, {"dtype": "bf16"}, {"bnb": True}, {"base": "other-base-1a2b3c"}):
        assert pending({**ident, **change}) == [task], change
    assert pending(ident, overwrite=True) == [task]
    assert pending(ident, "metrics-rank") == [task]  # another folder: its own
    assert os.path.isfile(layout.metrics_path(out, "CB"))


def test_each_evaluation_has_its_own_metrics_folder():
    """Metrics of different evaluation settings live side by side: the default in metrics/, others beside it."""
    def folder(*argv):
        cfg, given, _, _ = resolve_run(config.evaluation_config(["--pretrained_ckpt", MODEL, "--tasks", "CB", *argv]))
        cfg.check()
        return metrics_folder(cfg, given)

    assert folder() == "metrics"
    assert folder("--scoring", "rank") == "metrics-rank"
    assert folder("--max_test_samples", "40", "--max_new_tokens", "5") == "metrics-n40-new5"
    assert folder("--scoring", "rank", "--max_new_tokens", "5") == "metrics-rank"  # rank generates nothing
    assert folder("--dtype", "fp16") == "metrics-fp16"
    assert folder("--bnb") == "metrics-4bit"
    assert folder("--max_input_length", "64") == "metrics-len64"
    assert folder("--data_root", "elsewhere") == "metrics"  # the base model's data: its fingerprint decides


def test_accuracy_strict_is_the_originals_exact_match_on_its_slice():
    """The original decoded prompt and answer together, cut the text at the prompt's length and compared it,
    unstripped, with the label: ' true' (a leading space) and 'true.' are wrong there, right in `accuracy`."""
    task = prompts.TASKS["boolq"]
    examples = [prompts.Example({"question": "q", "passage": "p"}, "true", ("true",))] * 3
    prompt = prompts.prompt_text(task, examples[0].fields)
    predicted = {0: ("true", "true", prompt + "true"), 1: (" true", "true", prompt + " true"),
                 2: ("true.", "true", prompt + "true.")}
    args = argparse.Namespace(scoring="generate", max_test_samples=3, max_new_tokens=20, data_root="d")
    prec = precision.precision("fp32", False, "generate")
    m, rows = score.score(task, examples, {}, [prompt] * 3, [[1]] * 3, predicted, ["true", "false"], args, prec,
                              0.0, {}, {})
    assert m["accuracy"] == 1.0 and m["accuracy_strict"] == pytest.approx(1 / 3)
    assert [r["prediction"] for r in rows] == ["true"] * 3 and rows[1]["generation"] == " true"


def test_a_hub_download_is_said_again_at_the_end(monkeypatch, capsys, tmp_path):

    utils.write_json(layout.metrics_path(str(tmp_path / "x"), "CB"), {"accuracy": 0.5, "accuracy_ci95": [0.1, 0.9],
                                                                    "majority_baseline": 0.5, "invalid_rate": 0.0,
                                                                    "n": 4, "scoring": "rank"})
    source = {"source": "hub", "hub_id": "aps/super_glue", "config": "cb", "split": "validation"}
    score.report(str(tmp_path / "x"), "metrics", [prompts.TASKS["CB"]], {"CB": ([], source)})
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2] == f"data downloaded from the hub: CB from {data.describe(source)}"
    assert out[-1].startswith("1 task; metrics in") and "50.0" in out[-3]  # percentages, one task


def test_tasks_whose_metrics_exist_are_one_line_however_many(tmp_path, capsys):
    from keys_values import identity

    tasks = [prompts.TASKS[t] for t in ("CB", "boolq", "COPA", "RTE")]
    out = str(tmp_path / "base")
    ident = identity.evaluation("generate", 1000, 20, 8172, False, "fp32", "abc")
    for t in tasks:
        utils.write_json(layout.metrics_path(out, t.name), {"accuracy": 0.5, "identity": ident})
    plan = EvaluationPlan(config.EvaluationConfig(), {}, out, None, tasks, {}, MODEL, None, 8172, "metrics",
                          {t.name: ident for t in tasks})
    capsys.readouterr()
    assert plan.pending() == []
    said = capsys.readouterr().out.splitlines()
    assert said == [f"CB, boolq, COPA, RTE: metrics exist in {out}/metrics; skipped (--overwrite redoes them)"]


def test_one_very_long_prompt_runs_alone_not_with_short_ones_padded_to_it(monkeypatch):
    """Batches hold prompts of like lengths (at least half the batch's longest) and at most BATCH_TOKENS tokens'
    worth: a row shortened to the 8,187-token budget runs alone, the 8 short rows together after it; each prompt
    still gets its own answer."""
    chunks = []

    def fake_generate(model, tok, chunk, max_new_tokens, tick=None):
        chunks.append([len(c) for c in chunk])
        return [(f"answer{len(c)}", "") for c in chunk]

    monkeypatch.setattr(generate, "generate", fake_generate)
    lengths = [12, 8187, 10, 14, 9, 11, 13, 10, 12]
    prompts_ids = [[1] * n for n in lengths]
    out = generate.generate_task(None, None, prompts.TASKS["boolq"], prompts_ids, None,
                                 argparse.Namespace(batch_size=64, max_new_tokens=5))
    assert chunks == [[8187], sorted([n for n in lengths if n != 8187], reverse=True)]
    assert [o[0] for o in out] == [f"answer{n}" for n in lengths]
    chunks.clear()
    generate.generate_task(None, None, prompts.TASKS["boolq"], [[1] * 2000] * 40, None,
                           argparse.Namespace(batch_size=64, max_new_tokens=5))
    assert chunks == [[2000] * 32, [2000] * 8]  # 64 x 1,024 prompt tokens a batch at most
