"""Benchmark: training and evaluation speed against this machine's measured limits, and against the
original's way of evaluating. Every number comes from one run on one machine; each measurement runs in
its own child process (for a clean peak memory), one after another. Prints a table and writes
BENCHMARKS.md.

    python bench/bench.py            # make bench
    python bench/bench.py --quick    # fewer steps and prompts (a smoke test)

Model FLOPs per trained token (LoRA: frozen weights need input gradients but no weight gradients):
    4 * N_linear + 12 * n_layers * seq_len * d_model
N_linear counts the weights of every Linear layer the tokens pass through (lm_head included, the embedding
lookup excluded); the second term is attention's two products (forward 4*L*s*d, backward 8*L*s*d). LoRA's
own matrices are under 1% and left out. Utilisation = measured FLOP/s over the bf16 (or fp32) matmul ceiling.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct")
EVAL_TASKS = ["boolq", "COPA", "CB", "RTE", "QNLI"]  # 40 evaluation rows each: 200 prompts


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _matmul_rate(m, k, n, dtype, device, repeats):
    import torch

    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times)


def part_matmul(quick, device="cpu"):
    """Square-matmul ceilings, and (on the CPU) the rate of the model's own largest shapes: 2,048 tokens
    times 576 x 1,536 (an MLP projection) and 576 x 49,152 (the output layer)."""
    import torch

    out = {"threads": torch.get_num_threads()}
    n = 2048 if device == "cpu" else 8192
    repeats = 3 if quick else 10
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out[name] = _matmul_rate(n, n, n, dtype, device, repeats)
        if device == "cpu":
            out[name + "_mlp"] = _matmul_rate(2048, 576, 1536, dtype, device, repeats)
            out[name + "_head"] = _matmul_rate(2048, 576, 49152, dtype, device, max(2, repeats // 3))
    return out


def linear_params(config):
    """Weights of every Linear layer (lm_head included), counted on the meta device: the same for a 4-bit model."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def part_train(mode, quick, model_path=MODEL, batch=4):
    """Trained tokens per second through the training script's own functions (add_lora, training_blocks, fit)."""
    import tempfile

    import torch
    from transformers import TrainerCallback

    import llama2_classification_multi_tasks as train
    import utils

    seq, steps, warm = 512, (3 if quick else 6), 2
    if mode == "bnb" and not torch.cuda.is_available():  # 4-bit on a CPU is slow (bitsandbytes dequantises per call)
        steps, warm = 2, 1
    argv = ["--pretrained_ckpt", model_path, "--data_root", os.path.join(ROOT, "sample_data"), "--tasks", "boolq", "COPA",
            "CB", "RTE", "--target_modules", "q_proj", "v_proj", "up_proj", "--max_seq_length", str(seq),
            "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", "1",
            "--max_steps", str(steps + warm), "--logging_steps", "1000", "--save_steps", "100000",
            "--dtype", "bf16" if mode == "bf16" else "fp32", *(["--bnb"] if mode == "bnb" else [])]
    args = train.parse_args(argv)
    tasks = train.check_args(args)
    per_task = train.load_training_examples(tasks, args)
    model, tok = utils.load_base(model_path, args.bnb, args.dtype)
    cfg = model.config
    n_linear = linear_params(cfg)
    model = train.add_lora(model, args)
    blocks = train.training_blocks(per_task, tok, args)

    class Clock(TrainerCallback):
        stamps = []

        def on_step_end(self, *a, **k):
            self.stamps.append(time.perf_counter())

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        train.fit(model, tok, blocks, args, out, None, callbacks=[clock])
    dt = (clock.stamps[-1] - clock.stamps[warm - 1]) / steps
    flops_per_token = 4 * n_linear + 12 * cfg.num_hidden_layers * seq * cfg.hidden_size
    tokens = batch * seq
    return {"mode": mode, "seconds_per_step": dt, "tokens_per_second": tokens / dt,
            "flops_per_token": flops_per_token, "model_flops_per_second": tokens * flops_per_token / dt,
            "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None}


def part_gpu(quick):
    """On a GPU: a Llama-2-7B-shaped model with random weights (built from its configuration, no download),
    trained with --bnb through the same code, against a bf16 matmul measured on the same card."""
    import tempfile

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if not torch.cuda.is_available():
        return {"skipped": "no GPU"}
    ceiling = part_matmul(quick, "cuda")
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=49152, max_position_embeddings=4096)
    with tempfile.TemporaryDirectory() as folder:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        AutoTokenizer.from_pretrained(MODEL).save_pretrained(folder)  # the embedded tokenizer: no download
        res = part_train("bnb", quick, folder, batch=8)
    res.update(device=torch.cuda.get_device_name(), bf16_ceiling=ceiling["bf16"],
               utilisation=res["model_flops_per_second"] / ceiling["bf16"])
    return res


def part_eval(quick, bf16_eval=False, batch_size=64):
    """200 prompts: the original's way (one at a time, sampling, adapter unmerged, as the original loaded it)
    against this project's: adapter merged, batched greedy and rank scoring."""
    import torch
    from peft import LoraConfig, get_peft_model

    import llama2_classification_multi_tasks_inference as inference
    import prompts
    import utils

    model, tok = utils.load_base(MODEL)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                             task_type="CAUSAL_LM")).eval()
    per_task = 10 if quick else 40
    items = []
    for name in EVAL_TASKS:
        task = prompts.TASKS[name]
        for fields, _ in prompts.load(task, os.path.join(ROOT, "sample_data"), task.eval_split, per_task):
            items.append((task, utils.encode_prompt(tok, task, fields, 2048 - 20)))
    n = len(items)
    res = {"prompts": n}

    t = time.perf_counter()  # (a) the original's way
    for task, ids in items:
        with torch.no_grad():
            model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           do_sample=True, top_p=0.95, temperature=1e-3, max_new_tokens=20,
                           pad_token_id=tok.pad_token_id)
    res["original_examples_per_second"] = n / (time.perf_counter() - t)

    model = model.merge_and_unload()  # as the evaluation script does for a non-4-bit base
    by_task = {}
    for task, ids in items:
        by_task.setdefault(task.name, (task, []))[1].append(ids)

    def run_all(m, scoring, bs):
        args = argparse.Namespace(scoring=scoring, batch_size=bs, max_new_tokens=20)
        t = time.perf_counter()
        outs = {name: inference.predict(m, tok, task, ids, prompts.label_space(task), args)
                for name, (task, ids) in by_task.items()}
        return n / (time.perf_counter() - t), outs

    def one_at_a_time(m):
        """Greedy decoding of each prompt alone: the reference batched generation must equal."""
        return {name: [inference.generate(m, tok, [one], 20)[0] for one in ids] for name, (task, ids) in by_task.items()}

    def agreement(outs, ref):
        return f"{sum(o[0] == r for name in ref for o, r in zip(outs[name], ref[name]))}/{n}"

    res["generate_examples_per_second"], outs = run_all(model, "generate", batch_size)
    res["generate32_examples_per_second"], outs32 = run_all(model, "generate", 32)
    res["rank_examples_per_second"], _ = run_all(model, "rank", batch_size)
    t = time.perf_counter()
    ref = one_at_a_time(model)
    res["greedy_one_at_a_time_examples_per_second"] = n / (time.perf_counter() - t)
    res["batched_equals_one_at_a_time"] = agreement(outs, ref)
    res["batched32_equals_one_at_a_time"] = agreement(outs32, ref)
    if bf16_eval:  # about 3 more minutes, most of it the one-at-a-time bf16 reference
        del ref, outs, outs32
        bf16 = model.to(torch.bfloat16)
        res["bf16_generate64_examples_per_second"], outs_bf16 = run_all(bf16, "generate", 64)
        res["bf16_batched64_equals_one_at_a_time"] = agreement(outs_bf16, one_at_a_time(bf16))
    res["peak_rss_mib"] = peak_rss_mib()
    return res


def child(part, *extra):
    cmd = [sys.executable, os.path.abspath(__file__), "--part", part, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def report(r, quick, flags=""):
    import platform

    import torch

    mm = r["matmul"]
    lines = ["# Benchmarks", "",
             f"Measured by `python bench/bench.py{flags}` on {time.strftime('%Y-%m-%d')}: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{mm['threads']} threads; model SmolLM2-135M-Instruct (the embedded default).", "",
             "## Ceilings (matmul, median of repeats)", "",
             "| dtype | square 2048 GFLOP/s (the ceiling) | 2048x576 @ 576x1536 (MLP shape) | 2048x576 @ 576x49152 (output layer) |",
             "|---|---|---|---|",
             *[f"| {d} | {mm[d] / 1e9:.1f} | {mm[d + '_mlp'] / 1e9:.1f} | {mm[d + '_head'] / 1e9:.1f} |" for d in ("fp32", "bf16")],
             "",
             "## Training (LoRA r=8 on q_proj v_proj up_proj, batch 4 x 512 tokens, the training script's own code)", "",
             "FLOPs per token = 4 * N_linear + 12 * layers * seq * d_model (see bench/bench.py).", "",
             "| mode | tokens/s | s/step | model GFLOP/s | utilisation of bf16 ceiling | of fp32 ceiling | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for mode in ("fp32", "bf16", "bnb"):
        t = r["train"][mode]
        if "error" in t:
            lines.append(f"| {mode} | failed: {t['error']} | | | | | |")
            continue
        lines.append(f"| {mode} | {t['tokens_per_second']:.0f} | {t['seconds_per_step']:.2f} | "
                     f"{t['model_flops_per_second'] / 1e9:.1f} | {100 * t['model_flops_per_second'] / mm['bf16']:.1f}% | "
                     f"{100 * t['model_flops_per_second'] / mm['fp32']:.1f}% | {t['peak_rss_mib']:.0f} |")
    e = r["eval"]
    lines += ["", f"## Evaluation ({e.get('prompts', '?')} sample-data prompts of {', '.join(EVAL_TASKS)}; fp32; "
                  "untrained LoRA on q,v,up; up to 20 new tokens)", ""]
    if "error" in e:
        lines.append(f"failed: {e['error']}")
    else:
        a = e["original_examples_per_second"]
        rows = [("(a) original: one at a time, do_sample, top_p 0.95, temperature 1e-3, adapter unmerged",
                 a, "–"),
                ("(b) batched greedy, merged adapter, batch 64 (the script's default)", e["generate_examples_per_second"],
                 e["batched_equals_one_at_a_time"]),
                ("(b) the same, batch 32", e["generate32_examples_per_second"], e["batched32_equals_one_at_a_time"]),
                ("(c) rank scoring (`--scoring rank`), batch 64", e["rank_examples_per_second"], "–"),
                ("one-at-a-time greedy (the reference for the last column)",
                 e["greedy_one_at_a_time_examples_per_second"], "–")]
        if "bf16_generate64_examples_per_second" in e:
            rows.append(("(b) batched greedy in bf16 (`--dtype bf16`), batch 64", e["bf16_generate64_examples_per_second"],
                         e["bf16_batched64_equals_one_at_a_time"] + " (against one-at-a-time bf16)"))
        lines += ["| way | examples/s | ratio to (a) | equal to one-at-a-time greedy |", "|---|---|---|---|"]
        lines += [f"| {w} | {x:.2f} | {x / a:.1f} | {same} |" for w, x, same in rows]
        lines += ["", f"Peak RSS {e['peak_rss_mib']:.0f} MiB. The batches are per task (40 prompts a task here), so a "
                      "batch of 64 is one batch a task."]
    lines += ["", "## GPU", "", r["gpu"]]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--bf16_eval", action="store_true", help="also time bf16 batched evaluation and its agreement")
    p.add_argument("--part", choices=["matmul", "train", "eval", "gpu"], help=argparse.SUPPRESS)
    p.add_argument("--mode", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    a = p.parse_args()
    if a.part:
        res = {"matmul": lambda: part_matmul(a.quick), "train": lambda: part_train(a.mode, a.quick),
               "eval": lambda: part_eval(a.quick, a.bf16_eval), "gpu": lambda: part_gpu(a.quick)}[a.part]()
        print(json.dumps(res))
        return
    import torch

    q = ["--quick"] if a.quick else []
    r = {"matmul": child("matmul", *q)}
    print(f"matmul: {r['matmul']}", flush=True)
    r["train"] = {}
    for mode in ("fp32", "bf16", "bnb"):
        r["train"][mode] = child("train", "--mode", mode, *q)
        print(f"train {mode}: {r['train'][mode]}", flush=True)
    r["eval"] = child("eval", *q, *(["--bf16_eval"] if a.bf16_eval else []))
    print(f"eval: {r['eval']}", flush=True)
    if torch.cuda.is_available():
        g = child("gpu", *q)
        print(f"gpu: {g}", flush=True)
        r["gpu"] = (f"failed: {g['error']}" if "error" in g else
                    f"{g['device']}: Llama-2-7B-shaped model (random weights; vocabulary 49,152 to fit the embedded tokenizer), --bnb, LoRA q,v,up, batch 8 x 512: "
                    f"{g['tokens_per_second']:.0f} tokens/s, {g['model_flops_per_second'] / 1e12:.1f} model TFLOP/s = "
                    f"{100 * g['utilisation']:.1f}% of a bf16 matmul measured there ({g['bf16_ceiling'] / 1e12:.0f} "
                    f"TFLOP/s); peak GPU memory {g['peak_gpu_mib'] / 1024:.1f} GiB.")
    else:
        r["gpu"] = ("No GPU on this machine: the Llama-2-7B-shaped 4-bit measurement (`part_gpu` in bench/bench.py) "
                    "runs by itself when `make bench` finds one, and waits until then.")
    text = report(r, a.quick, "".join(f" --{f}" for f in ("quick", "bf16_eval") if getattr(a, f)))
    from utils import atomic_write

    atomic_write(a.out, text)
    print("\n" + text)


if __name__ == "__main__":
    main()
