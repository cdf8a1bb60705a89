"""LoRA on the resolved modules: peft's LoraConfig with the original's fixed settings (bias none, causal LM), and the
base model prepared as the original prepared it (prepare_model_for_kbit_training with --bnb)."""

from keys_values import models


def lora_config(args, res=None):
    """peft's LoraConfig of a run: the original's fixed settings (bias none, causal LM) with the run's rank,
    scale and dropout, on the resolved modules (and experts' parameters) or, without `res`, on the names in
    --target_modules as they are."""
    from peft import LoraConfig

    modules = res.target_modules if res is not None else args.target_modules
    parameters = list(res.target_parameters) if res is not None and res.target_parameters else None
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules=modules, target_parameters=parameters)


def add_lora(model, args, prec, res=None):
    """LoRA on the target modules; with --bnb the base is prepared as the original did
    (prepare_model_for_kbit_training) and its CPU 4-bit layers kept trainable; checkpointing as
    --gradient_checkpointing says."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from peft.tuners.tuners_utils import BaseTunerLayer

    if args.bnb:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        models.keep_4bit_layers_trainable(model)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model = get_peft_model(model, lora_config(args, res))
    model.config.use_cache = False
    if prec.autocast:  # autocast runs LoRA's matmuls in bf16 anyway: skip peft's copies of every input to
        for module in model.modules():  # the fp32 adapter's dtype (part of aten::copy_ in bench/profile_train.py)
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    return model
