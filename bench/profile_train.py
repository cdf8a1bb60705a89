"""Where one LoRA training step's time goes (torch.profiler, CPU): the profile behind BENCHMARKS.md.

The step is the training script's: its blocks, its precision, LoRA as add_lora sets it up, and its loss
(the output layer applied in chunks where the loss counts); --impl previous profiles the model's own output
layer and loss instead.

    python bench/profile_train.py [--dtype auto|bf16|fp32] [--loss_on all|completion] [--impl ours|previous]
"""

import argparse
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--loss_on", default="all", choices=["all", "completion"])
    p.add_argument("--impl", default="ours", choices=["ours", "previous"])
    p.add_argument("--rows", type=int, default=25)
    a = p.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import default_data_collator

    from bench import training_setup
    from keys_values.loss import OutputLayerInTheLoss

    plan, tok, blocks, model = training_setup(a.dtype, a.loss_on)
    prec = plan.precision
    model.train()
    batch = default_data_collator(blocks[:4])
    loss_fn = OutputLayerInTheLoss(model).__enter__() if a.impl == "ours" else None
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec.autocast):
            if loss_fn is None:
                loss = model(**batch).loss
            else:
                loss = loss_fn(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]),
                               batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    if loss_fn is not None:
        loss_fn.__exit__(None, None, None)
    print(f"one step ({prec.why}, loss on {a.loss_on}, {a.impl}): {time.perf_counter() - t:.2f} s (profiled)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
