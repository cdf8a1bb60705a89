"""The metrics of knowledge editing, as the literature defines them, from the scores of the probe sequences (a
prompt, a space, a target) before and after an edit. Pure Python: the numbers in, the metrics out.

ROME's (Meng et al. 2022, CounterFact; experiments/summarize.py): for a prompt and a target, the target's NLL is
the mean over its tokens of -log p(token | prompt, the tokens before it).
- efficacy_success: the new target more likely than the true one after the rewrite prompt (NLL new < NLL true);
  paraphrase_success the same, the mean over the paraphrases; neighborhood_success: on each neighbour prompt its
  own true answer more likely than the new target (the mean over the neighbours). Each is a fraction per edit,
  then the mean over edits.
- *_magnitude: exp(-NLL new) - exp(-NLL true) (neighbours: exp(-NLL answer) - exp(-NLL new)), per-token
  probabilities, the mean likewise.
- score: the harmonic mean of efficacy, paraphrase and neighbourhood success (the means over edits).
EasyEdit's (Wang et al. 2024, its evaluate_utils.test_prediction_acc), teacher-forced:
- rewrite_acc: the share of the new target's tokens that are the argmax after the prompt and the tokens before
  them; rephrase_acc the same after the paraphrases;
- locality: on the neighbour prompts followed by their answers, the share of positions whose argmax token is the
  same after the edit as before it.
zsRE's (MEND, ROME): rewrite_acc as above (the question then the new answer), and neighborhood_acc: the share of
the neighbour's answer tokens that are the argmax after the edit.
known: the true target was more likely than the new one after the rewrite prompt before the edit (the model "knew"
the fact that is changed).
fluency (optional): ROME's n-gram entropy of a generation, 2/3 of the 2-gram entropy and 4/3 of the 3-gram
entropy (bits), its words found by a regular expression (no tokenizer to download)."""

import math
import re
from collections import Counter

from keys_values.statistics import harmonic_mean

SUCCESS = ("efficacy_success", "paraphrase_success", "neighborhood_success")
MAGNITUDE = ("efficacy_magnitude", "paraphrase_magnitude", "neighborhood_magnitude")
EASYEDIT = ("rewrite_acc", "rephrase_acc", "locality")
ZSRE = ("neighborhood_acc",)
PER_EDIT = SUCCESS + MAGNITUDE + EASYEDIT + ZSRE


def probes(edit):
    """The sequences an edit is measured on, as (group, index, prompt, target, role): for the rewrite prompt and
    every paraphrase the new and the true target, for every neighbour the new target and its own answer."""
    out = []
    for group, prompts in (("rewrite", [edit.prompt]), ("paraphrase", list(edit.paraphrases))):
        for i, p in enumerate(prompts):
            out += [(group, i, p, edit.target_new, "new"), (group, i, p, edit.target_true, "true")]
    for i, (p, answer) in enumerate(edit.neighbours):
        out += [("neighbour", i, p, edit.target_new, "new"), ("neighbour", i, p, answer, "true")]
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def per_edit(probe_list, pre, post):
    """The metrics of one edit. `probe_list` is probes(edit); `pre` and `post` are, per probe, the scores before
    and after the edit: {"nll": mean NLL of the target, "correct": [argmax == target per target token],
    "argmax": [argmax token per target position]}."""
    by = {}
    for k, (group, i, _, _, role) in enumerate(probe_list):
        by.setdefault((group, i), {})[role] = k

    def pairs(group):
        return [v for (g, _), v in sorted(by.items()) if g == group]

    out = {"pre": {}, "post": {}}
    for when, s in (("pre", pre), ("post", post)):
        r = out[when]
        for group, name in (("rewrite", "efficacy"), ("paraphrase", "paraphrase")):
            ps = pairs(group)
            r[f"{name}_success"] = _mean([float(s[p["new"]]["nll"] < s[p["true"]]["nll"]) for p in ps])
            r[f"{name}_magnitude"] = _mean([math.exp(-s[p["new"]]["nll"]) - math.exp(-s[p["true"]]["nll"]) for p in ps])
        ns = pairs("neighbour")
        r["neighborhood_success"] = _mean([float(s[p["true"]]["nll"] < s[p["new"]]["nll"]) for p in ns])
        r["neighborhood_magnitude"] = _mean([math.exp(-s[p["true"]]["nll"]) - math.exp(-s[p["new"]]["nll"])
                                             for p in ns])
        r["rewrite_acc"] = _mean([_mean(s[p["new"]]["correct"]) for p in pairs("rewrite")])
        r["rephrase_acc"] = _mean([_mean(s[p["new"]]["correct"]) for p in pairs("paraphrase")])
        r["neighborhood_acc"] = _mean([_mean(s[p["true"]]["correct"]) for p in ns])
        r["locality"] = _mean([_mean([float(a == b) for a, b in zip(pre[p["true"]]["argmax"], s[p["true"]]["argmax"])])
                               for p in ns])
        r["nll_new"] = s[pairs("rewrite")[0]["new"]]["nll"]
        r["nll_true"] = s[pairs("rewrite")[0]["true"]]["nll"]
    out["known"] = out["pre"]["nll_true"] < out["pre"]["nll_new"]
    return out


def aggregate(records, when="post"):
    """The metrics file's numbers of a set of per-edit records (their `when` metrics): the mean of each metric over
    the edits that have it, ROME's score, and n (the edits)."""
    out = {"n": len(records)}
    for key in PER_EDIT + ("fluency",):
        values = [r[when].get(key) for r in records if r[when].get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    means = [out[k] for k in SUCCESS if out[k] is not None]
    out["score"] = harmonic_mean(means) if means else None
    return out


WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text, ns=(2, 3), weights=(2 / 3, 4 / 3)):
    """ROME's n-gram entropy of one text (compute_n_gram_entropy): the weighted mean over n of the entropy (bits)
    of its n-grams' frequencies; words and punctuation marks found by a regular expression."""
    words = WORD.findall(text)
    parts = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        parts.append(entropy * w)
    return sum(parts) / len(parts)
