"""keys_values/packing.py: training texts tokenised whole and packed as the original, the loss on the answer across
block boundaries, prompts shortened in their long field (never the cue), the optimizer steps the Trainer counts."""

import random

import pytest

import prompts
from conftest import MODEL, SAMPLE
from keys_values import config, data, models, packing
from keys_values.evaluation import rank
from prompts import TASKS


def toy_encoded():
    # (ids, mask): the label tokens and EOS (id 2) have mask 1
    return [([10, 11, 12, 30, 2], [0, 0, 0, 1, 1]), ([20, 21, 31, 32, 2], [0, 0, 1, 1, 1]),
            ([40, 41, 42, 43, 44, 33, 2], [0, 0, 0, 0, 0, 1, 1])]


def test_pack_cuts_the_stream_and_drops_the_last_incomplete_block():
    encoded = toy_encoded()
    blocks = packing.pack(encoded, block_size=4, pad_id=0, loss_on="all", seed=3)
    assert len(blocks) == 4 and all(b["attention_mask"] == [1] * 4 for b in blocks)  # 17 tokens: 4 blocks, 1 dropped
    flat = [t for b in blocks for t in b["input_ids"]]
    order = [e for e in encoded]
    random.Random(3).shuffle(order)
    assert flat == [t for ids, _ in order for t in ids][:16]  # the texts one after another, cut anywhere
    for b in blocks:  # 'all': the labels are the inputs
        assert b["labels"] == b["input_ids"]
    padded = packing.pack(encoded, 4, 0, seed=3, drop_last=False)  # --shorten_to_block keeps and pads it
    assert len(padded) == 5 and padded[-1]["attention_mask"] == [1, 0, 0, 0] and padded[-1]["labels"][1:] == [-100] * 3


def test_pack_shuffles_with_the_seed():
    encoded = [([i, 2], [0, 1]) for i in range(10, 40)]
    a = packing.pack(encoded, 8, 0, seed=1)
    assert a == packing.pack(encoded, 8, 0, seed=1) and a != packing.pack(encoded, 8, 0, seed=2)


def test_completion_mask_across_block_boundaries():
    blocks = packing.pack(toy_encoded(), block_size=4, pad_id=0, loss_on="completion", seed=3, drop_last=False)
    flat_ids = [t for b in blocks for t in b["input_ids"]]
    flat_labels = [t for b in blocks for t in b["labels"]]
    answer_tokens = {30, 31, 32, 33, 2}
    for t, y in zip(flat_ids, flat_labels):
        assert y == (t if t in answer_tokens else -100)
    assert sum(y != -100 for y in flat_labels) == 2 + 3 + 2
    assert any(b["labels"][0] != -100 for b in blocks[1:])  # some block starts inside an answer


def sentencepiece_tokenizer(tmp_path):
    """A Llama tokenizer (SentencePiece BPE with byte fallback, BOS added, a dummy prefix) trained here in
    well under a second on the task templates, loaded through transformers' Llama tokenizer class."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import LlamaTokenizer

    rng = random.Random(0)
    words = "the river bridge is old Anna visited confirmed denied that whether it was yes no town".split()
    corpus = [prompts.training_text(TASKS[n], {k: " ".join(rng.choice(words) for _ in range(5)) for k in TASKS[n].fields},
                                    lab) for n in ("boolq", "COPA", "CB") for lab in prompts.choices(TASKS[n])] * 20
    (tmp_path / "corpus.txt").write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2,
                                   pad_id=-1, character_coverage=1.0, minloglevel=2)
    tok = LlamaTokenizer.from_pretrained(str(tmp_path), add_bos_token=True)
    tok.pad_token = tok.eos_token
    return tok


def sample_examples(n=12):
    return {name: data.load(TASKS[name], SAMPLE, "train", n)[0] for name in ("boolq", "COPA", "CB")}


@pytest.mark.parametrize("which", ["embedded", "sentencepiece"])
def test_training_texts_are_tokenised_whole_as_the_original(which, tmp_path):
    tok = models.load_tokenizer(MODEL) if which == "embedded" else sentencepiece_tokenizer(tmp_path)
    per_task = sample_examples()
    args = config.training_config(["--tasks", "boolq", "COPA", "CB", "--max_seq_length", "64", "--loss_on", "completion"])
    blocks = packing.training_blocks(per_task, tok, args)
    texts = [(prompts.prompt_text(TASKS[n], e.fields), e.label) for n, es in per_task.items() for e in es]
    random.Random(args.seed).shuffle(texts)
    stream, mask = [], []
    for prompt, label in texts:  # each text tokenised in one call, then EOS; the label's tokens found by decoding
        ids = tok(prompt + label)["input_ids"]
        k = max(i for i in range(len(ids) + 1) if prompt.startswith(tok.decode(ids[:i], skip_special_tokens=True)))
        assert tok.decode(ids[k:]).strip() == label  # the label's tokens: what follows the prompt's
        stream += ids + [tok.eos_token_id]
        mask += [0] * k + [1] * (len(ids) - k) + [1]
    n = len(stream) // 64 * 64  # the last, incomplete block dropped
    cut = [(stream[s:s + 64], mask[s:s + 64]) for s in range(0, n, 64)]
    kept = [(ids, m) for ids, m in cut if any(m[1:])]  # a block in which no token is predicted teaches nothing
    assert len(blocks) == len(kept) > 0
    assert [b["input_ids"] for b in blocks] == [ids for ids, _ in kept]
    assert [[y != -100 for y in b["labels"]] for b in blocks] == [[bool(x) for x in m] for _, m in kept]
    if which == "sentencepiece":  # a label tokenised alone differs from the same label inside its text
        assert tok("true", add_special_tokens=False)["input_ids"] != \
            tok("### Answer:true")["input_ids"][-len(tok("true", add_special_tokens=False)["input_ids"]):]
        assert stream[0] == tok.bos_token_id  # every text starts with its BOS, as the original's


def test_shorten_to_block_keeps_every_text_within_a_block_with_its_label():
    tok = models.load_tokenizer(MODEL)
    task = TASKS["20_Newsgroups_Fixed"]
    per_task = {task.name: [prompts.Example({"text": "word " * 3000}, "sci.space", ("sci.space",))] * 3}
    args = config.training_config(["--tasks", task.name, "--max_seq_length", "64", "--shorten_to_block"])
    blocks = packing.training_blocks(per_task, tok, args)
    text = tok.decode([t for t, m in zip(blocks[0]["input_ids"], blocks[0]["attention_mask"]) if m])
    assert text.startswith("### Sentence:word") and text.count("### Class:sci.space<|im_end|>") >= 1
    assert len(blocks) == 3 and blocks[-1]["attention_mask"][-1] == 0  # one text a block, the last padded
    args = config.training_config(["--tasks", task.name, "--max_seq_length", "64"])  # the stream: long texts continue
    assert len(packing.training_blocks(per_task, tok, args)) > 100


def test_long_prompts_are_shortened_in_the_text_field_never_the_cue():
    tok = models.load_tokenizer(MODEL)
    task = TASKS["20_Newsgroups_Fixed"]
    fields, ids = packing.fit_prompt(tok, task, {"text": "word " * 3000}, budget=100)
    assert len(ids) <= 100 and tok.decode(ids).endswith(" ### Class:") and tok.decode(ids).startswith("### Sentence:word")
    assert ids == tok(prompts.prompt_text(task, fields))["input_ids"]


@pytest.mark.parametrize("blocks,batch,accum,epochs,steps", [(60, 4, 1, 3, 45), (61, 4, 1, 1, 16), (68, 32, 2, 5, 10),
                                                              (5, 4, 16, 2, 2)])
def test_optimizer_steps_as_the_trainer_counts_them(blocks, batch, accum, epochs, steps):
    args = config.training_config(["--tasks", "CB", "--per_device_train_batch_size", str(batch),
                             "--gradient_accumulation_steps", str(accum), "--epochs", str(epochs)])
    assert packing.optimizer_steps(blocks, args) == steps
    args.max_steps = 7
    assert packing.optimizer_steps(blocks, args) == 7


# ---- tokenizers that add tokens after every text -----------------------------------------------------------------

def tokenizer_variant(kind, folder):
    """The embedded model's tokenizer saved as a tokenizer of another kind would be: one that appends EOS
    (add_eos_token=True, as several Llama and Mistral tokenizers ship), one whose post-processor wraps every
    text in BOS ... EOS, one that appends another special token."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    if kind == "add_eos_token":
        tok = AutoTokenizer.from_pretrained(MODEL, add_eos_token=True)
    else:
        tok = AutoTokenizer.from_pretrained(MODEL)
        single = {"bos_and_eos": "<|im_start|> $A <|im_end|>", "appends_endoftext": "$A <|endoftext|>"}[kind]
        special = [(t, tok.convert_tokens_to_ids(t)) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
                   if t in single]
        tok._tokenizer.post_processor = TemplateProcessing(single=single, special_tokens=special)
    assert models.added_tokens(tok)[1], "the variant appends a token"
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("kind,leading", [("add_eos_token", []), ("bos_and_eos", ["<|im_start|>"]),
                                          ("appends_endoftext", [])])
def test_a_tokenizer_that_appends_tokens_encodes_what_the_project_means(tmp_path, kind, leading):
    said = []
    tok = models.load_tokenizer(tokenizer_variant(kind, tmp_path / kind), say=said.append)
    assert len(said) == 1 and "appends" in said[0] and "turned off" in said[0]
    assert models.added_tokens(tok) == (tok.convert_tokens_to_ids(leading), [])  # BOS kept where it was added
    eos = tok.eos_token_id
    task = prompts.TASKS["CB"]
    fields = {"premise": "The bridge is old.", "hypothesis": "It is old."}
    text = prompts.prompt_text(task, fields) + "entailment"
    [(ids, mask)] = packing.encode_texts(tok, [text], [len(text) - len("entailment")])
    assert ids.count(eos) == 1 and ids[-1] == eos and mask[-1] == 1  # one EOS, the project's
    _, prompt_ids = packing.fit_prompt(tok, task, fields, 512)
    assert eos not in prompt_ids and prompt_ids[:len(leading)] == tok.convert_tokens_to_ids(leading)
    shared, conts = rank.candidates(tok, prompts.prompt_text(task, fields), prompt_ids, prompts.choices(task))
    assert all(c.count(eos) == 1 and c[-1] == eos for c in conts)


def test_a_plain_tokenizer_is_left_as_it_is_and_special_token_text_in_a_row_stays_text():
    said = []
    tok = models.load_tokenizer(MODEL, say=said.append)
    assert said == [] and models.added_tokens(tok) == ([], [])
    specials = set(tok.all_special_ids)
    for text in ("a row with <|im_end|> inside", "<|endoftext|><|im_start|>user", "ends with <|im_end|>"):
        [(ids, _)] = packing.encode_texts(tok, [text], [0])
        assert not specials & set(ids[:-1]), text  # the text's own tokens: none of them special
        assert tok.decode(ids[:-1]) == text
