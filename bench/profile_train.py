"""Where one LoRA training step's time goes (torch.profiler, CPU): the profile behind BENCHMARKS.md.

    python bench/profile_train.py [--dtype bf16|fp32] [--steps 2]
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--rows", type=int, default=25)
    a = p.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    import llama2_classification_multi_tasks as train
    import utils
    from bench import MODEL

    args = train.parse_args(["--pretrained_ckpt", MODEL, "--target_modules", "q_proj", "v_proj", "up_proj",
                             "--dtype", a.dtype, "--tasks", "CB"])
    model, tok = utils.load_base(MODEL, False, a.dtype)
    model = train.add_lora(model, args)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    x = torch.randint(0, 49152, (4, 512))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"one step: {time.perf_counter() - t:.2f} s (profiled)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
